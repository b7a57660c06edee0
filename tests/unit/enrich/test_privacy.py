"""A project's PII policy, the redactor built from it, pseudonyms and the per-project cache."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import re

import pytest

from closedloop.enrich.pii import ENTITY_TYPES
from closedloop.enrich.privacy import PiiPolicy, project_redactor, pseudonym
from closedloop.enrich.redact import ProjectRedactors
from closedloop.errors import ContractError
from closedloop.events import (
    Event,
    Feedback,
    FeedbackEvent,
    Interaction,
    InteractionEvent,
    Signal,
    SignalEvent,
)
from closedloop.types import Redactor

TS = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
EMAIL = "ana@example.org"
TOKEN = re.compile(r"<EMAIL:[0-9a-f]{8}>")


def interaction(text: str = f"mail {EMAIL}", **body: object) -> InteractionEvent:
    return InteractionEvent(
        id="i-1",
        timestamp=TS,
        body=Interaction(input=text, **body),  # type: ignore[arg-type]
    )


def feedback(**body: object) -> FeedbackEvent:
    return FeedbackEvent(
        id="f-1",
        timestamp=TS,
        body=Feedback(interaction_id="i-1", **body),  # type: ignore[arg-type]
    )


def signal(**body: object) -> SignalEvent:
    return SignalEvent(
        id="s-1",
        timestamp=TS,
        body=Signal(interaction_id="i-1", kind="copy", **body),  # type: ignore[arg-type]
    )


def text(event: Event) -> str:
    assert isinstance(event, InteractionEvent)
    assert isinstance(event.body.input, str)
    return event.body.input


def feedback_body(event: Event) -> Feedback:
    assert isinstance(event, FeedbackEvent)
    return event.body


def redactor(policy: str, secret: str | None = None) -> Redactor:
    step = project_redactor(PiiPolicy.from_json(policy), secret=secret)
    assert step is not None
    return step


# -- PiiPolicy.from_json ------------------------------------------------------------------


def test_an_empty_policy_has_the_defaults() -> None:
    policy = PiiPolicy.from_json(b"{}")
    assert policy == PiiPolicy()
    assert (policy.enabled, policy.entities, policy.modes) == (True, None, {})
    assert (policy.default_mode, policy.allowlist, policy.ids) == ("mask", [], "keep")
    assert policy.to_json() == {
        "enabled": True,
        "entities": list(ENTITY_TYPES),
        "modes": {},
        "default_mode": "mask",
        "allowlist": [],
        "ids": "keep",
    }


def test_a_full_policy_decodes_from_str_and_bytes() -> None:
    raw = (
        '{"enabled": true, "entities": ["email", "phone"], "modes": {"email": "hash"},'
        ' "default_mode": "drop", "allowlist": ["help@example.org"], "ids": "hash"}'
    )
    policy = PiiPolicy.from_json(raw)
    assert policy == PiiPolicy.from_json(raw.encode())
    assert policy.entities == ["email", "phone"]
    assert policy.modes == {"email": "hash"}
    assert (policy.default_mode, policy.allowlist, policy.ids) == (
        "drop",
        ["help@example.org"],
        "hash",
    )
    assert PiiPolicy.from_json(b'{"enabled": false}').enabled is False


@pytest.mark.parametrize(
    ("raw", "field", "fix"),
    [
        ('{"modes": {"email": "blur"}}', "modes.email", "mask"),
        ('{"modes": {"foo": "mask"}}', "modes.foo", "email"),
        ('{"entities": ["email", "emails"]}', "entities[1]", "email"),
        ('{"entities": ["emails"]}', "entities[0]", "phone"),
        ('{"default_mode": "blur"}', "default_mode", "mask"),
        ('{"allowlist": ["   "]}', "allowlist[0]", "non-blank"),
        ('{"allowlist": ["ok", ""]}', "allowlist[1]", "non-blank"),
        ('{"allowlist": ["' + "x" * 257 + '"]}', "allowlist[0]", "1-256"),
        ('{"allowlist": [' + ",".join(f'"v{i}"' for i in range(1001)) + "]}", "allowlist", "1000"),
        ('{"enabled": "yes"}', "enabled", "bool"),
        ("{", "body", "JSON"),
        ("", "body", "JSON"),
        ("not json", "body", "JSON"),
    ],
    ids=[
        "unknown-mode",
        "unknown-entity-in-modes",
        "unknown-entity-second",
        "unknown-entity",
        "default-mode",
        "blank-allowlist-value",
        "empty-allowlist-value",
        "long-allowlist-value",
        "too-many-allowlist-values",
        "wrong-type",
        "truncated-json",
        "empty-body",
        "not-json",
    ],
)
def test_an_invalid_policy_names_the_field_and_the_fix(raw: str, field: str, fix: str) -> None:
    with pytest.raises(ContractError) as info:
        PiiPolicy.from_json(raw)
    assert info.value.field == field
    assert fix in info.value.message


def test_an_unknown_top_level_field_is_named() -> None:
    with pytest.raises(ContractError) as info:
        PiiPolicy.from_json(b'{"foo": 1}')
    assert info.value.field == "foo"
    for name in ("enabled", "entities", "modes", "default_mode", "allowlist", "ids"):
        assert name in info.value.message


def test_an_unknown_ids_mode_names_the_field_and_the_choices() -> None:
    with pytest.raises(ContractError) as info:
        PiiPolicy.from_json(b'{"ids": "maybe"}')
    assert info.value.field == "ids"
    assert "keep" in info.value.message and "hash" in info.value.message


def test_a_mode_of_the_wrong_type_names_the_modes_field() -> None:
    with pytest.raises(ContractError) as info:
        PiiPolicy.from_json(b'{"modes": {"email": 5}}')
    assert info.value.field in ("modes", "modes.email")


def test_an_entity_of_the_wrong_type_is_named_like_an_unknown_entity() -> None:
    with pytest.raises(ContractError) as info:
        PiiPolicy.from_json(b'{"entities": [5]}')
    assert info.value.field == "entities[0]"  # as for {"entities": ["emails"]}


def test_a_policy_that_is_not_an_object_is_refused() -> None:
    with pytest.raises(ContractError) as info:
        PiiPolicy.from_json(b"[]")
    assert info.value.field == "body"


# -- project_redactor ---------------------------------------------------------------------


def test_the_default_policy_masks_an_email_in_the_input() -> None:
    out = redactor("{}")(interaction(f"mail {EMAIL} now"))
    assert text(out) == "mail <EMAIL> now"


def test_redaction_off_and_ids_kept_is_no_step() -> None:
    assert project_redactor(PiiPolicy.from_json(b'{"enabled": false}'), secret=None) is None
    policy = PiiPolicy.from_json(b'{"enabled": false, "ids": "keep"}')
    assert project_redactor(policy, secret="k") is None


def test_hashed_ids_are_the_pseudonyms_of_the_values() -> None:
    step = redactor('{"ids": "hash"}', secret="k")
    out = step(interaction(user_id="u-7", session_id="s-1"))
    assert out.body.user_id == pseudonym("k", "u-7")
    assert out.body.session_id == pseudonym("k", "s-1")
    assert out.id == "i-1"
    fb = feedback_body(step(feedback(thumbs=1, given_by="rev-2", user_id="u-7")))
    assert fb.given_by == pseudonym("k", "rev-2")
    assert fb.user_id == pseudonym("k", "u-7")
    assert fb.interaction_id == "i-1"  # an event id, not an app identifier
    sg = step(signal(session_id="s-1"))
    assert sg.body.session_id == pseudonym("k", "s-1")
    assert sg.body.user_id is None


def test_hashed_ids_are_stable_and_keyed_by_the_secret() -> None:
    event = interaction(user_id="u-7")
    one = redactor('{"ids": "hash"}', secret="k1")
    again = redactor('{"ids": "hash"}', secret="k1")
    other = redactor('{"ids": "hash"}', secret="k2")
    assert one(event).body.user_id == one(event).body.user_id == again(event).body.user_id
    assert one(event).body.user_id != other(event).body.user_id


def test_ids_are_kept_by_default() -> None:
    out = redactor("{}")(interaction(user_id="u-7", session_id="s-1"))
    assert (out.body.user_id, out.body.session_id) == ("u-7", "s-1")


def test_hashed_ids_with_redaction_off_leave_the_text() -> None:
    out = redactor('{"enabled": false, "ids": "hash"}', secret="k")(interaction(user_id="u-7"))
    assert text(out) == f"mail {EMAIL}"
    assert out.body.user_id == pseudonym("k", "u-7")


def test_an_event_without_ids_passes_the_id_step_unchanged() -> None:
    event = interaction()
    assert redactor('{"enabled": false, "ids": "hash"}', secret="k")(event) == event


def test_hash_mode_gives_one_token_per_value_within_a_project() -> None:
    policy = '{"modes": {"email": "hash"}}'
    step = redactor(policy, secret="p1")
    a = text(step(interaction(f"mail {EMAIL}")))
    b = str(feedback_body(step(feedback(comment=f"I wrote from {EMAIL} twice"))).comment)
    tokens_a, tokens_b = TOKEN.findall(a), TOKEN.findall(b)
    assert len(tokens_a) == len(tokens_b) == 1
    assert tokens_a == tokens_b
    assert EMAIL not in a and EMAIL not in b
    other = text(redactor(policy, secret="p2")(interaction(f"mail {EMAIL}")))
    assert TOKEN.findall(other) != tokens_a


def test_the_allowlist_keeps_a_value() -> None:
    step = redactor('{"allowlist": ["help@example.org"]}')
    out = step(interaction(f"write to help@example.org, not {EMAIL}"))
    assert text(out) == "write to help@example.org, not <EMAIL>"


def test_drop_mode_and_default_mode() -> None:
    out = redactor('{"default_mode": "drop"}')(interaction(f"mail {EMAIL} now"))
    assert text(out) == "mail  now"


def test_entities_limit_what_is_redacted() -> None:
    step = redactor('{"entities": ["phone"]}')
    out = step(interaction(f"mail {EMAIL} or call +1 415 555 0100"))
    assert text(out) == f"mail {EMAIL} or call <PHONE>"


@pytest.mark.parametrize("secret", [None, ""])
@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ('{"modes": {"email": "hash"}}', "modes"),
        ('{"default_mode": "hash"}', "modes"),
        ('{"ids": "hash"}', "ids"),
        ('{"enabled": false, "ids": "hash"}', "ids"),
    ],
)
def test_hashing_without_a_secret_is_refused(policy: str, field: str, secret: str | None) -> None:
    with pytest.raises(ContractError, match="secret") as info:
        project_redactor(PiiPolicy.from_json(policy), secret=secret)
    assert info.value.field == field


# -- pseudonym ----------------------------------------------------------------------------


def test_pseudonym_is_a_stable_keyed_hash_with_a_prefix() -> None:
    value = pseudonym("k", "u-7")
    digest = hmac.new(b"k", b"u-7", hashlib.sha256).hexdigest()
    assert value == "ph_" + digest[:32]
    assert value == pseudonym("k", "u-7") == pseudonym(b"k", "u-7")
    assert value != pseudonym("k2", "u-7")
    assert value != pseudonym("k", "u-8")
    assert re.fullmatch(r"ph_[0-9a-f]{32}", value)


# -- ProjectRedactors ---------------------------------------------------------------------


class Source:
    """A fake policy source that counts its reads."""

    def __init__(self, policies: dict[int, str] | None = None, secret: str | None = "k") -> None:
        self.policies = dict(policies or {})
        self.secret = secret
        self.calls: list[int] = []

    def __call__(self, project_id: int) -> tuple[str, str | None]:
        self.calls.append(project_id)
        return self.policies.get(project_id, "{}"), self.secret


def test_a_project_step_is_read_once_within_the_ttl() -> None:
    source = Source()
    redactors = ProjectRedactors(source, ttl=3600)
    assert redactors.cached(1) is None
    step = redactors.get(1)
    assert redactors.get(1) is step
    assert redactors.cached(1) is step
    assert source.calls == [1]
    assert text(step(interaction())) == "mail <EMAIL>"


def test_each_project_has_its_own_step() -> None:
    source = Source({2: '{"enabled": false}'})
    redactors = ProjectRedactors(source, ttl=3600)
    one, two = redactors.get(1), redactors.get(2)
    redactors.get(1)
    redactors.get(2)
    assert source.calls == [1, 2]
    assert text(one(interaction())) == "mail <EMAIL>"
    assert text(two(interaction())) == f"mail {EMAIL}"


def test_forget_makes_the_next_get_read_the_policy_again() -> None:
    source = Source()
    redactors = ProjectRedactors(source, ttl=3600)
    redactors.get(1)
    redactors.get(2)
    source.policies[1] = '{"enabled": false}'
    redactors.forget(1)
    assert redactors.cached(1) is None
    assert redactors.cached(2) is not None
    step = redactors.get(1)
    assert source.calls == [1, 2, 1]
    assert text(step(interaction())) == f"mail {EMAIL}"  # the new policy took effect
    redactors.get(2)
    assert source.calls == [1, 2, 1]


def test_forget_without_a_project_drops_every_step() -> None:
    source = Source()
    redactors = ProjectRedactors(source, ttl=3600)
    redactors.get(1)
    redactors.get(2)
    redactors.forget()
    assert redactors.cached(1) is None and redactors.cached(2) is None
    redactors.get(1)
    redactors.get(2)
    assert source.calls == [1, 2, 1, 2]


def test_ttl_zero_reads_the_policy_every_time() -> None:
    source = Source()
    redactors = ProjectRedactors(source, ttl=0)
    for _ in range(3):
        redactors.get(1)
    assert source.calls == [1, 1, 1]
    assert redactors.cached(1) is None


def test_an_invalid_stored_policy_fails_and_is_not_cached() -> None:
    source = Source({1: '{"modes": {"email": "blur"}}'})
    redactors = ProjectRedactors(source, ttl=3600)
    with pytest.raises(ContractError):
        redactors.get(1)
    assert redactors.cached(1) is None
    with pytest.raises(ContractError):
        redactors.get(1)
    assert source.calls == [1, 1]


class Recorder:
    """A plugin redactor that records the input text and user id it sees."""

    def __init__(self) -> None:
        self.seen: list[tuple[object, object]] = []

    def __call__(self, event: Event) -> Event:
        assert isinstance(event, InteractionEvent)
        self.seen.append((event.body.input, event.body.user_id))
        return event


def test_plugin_redactors_run_after_the_project_step() -> None:
    first, second = Recorder(), Recorder()
    source = Source({1: '{"ids": "hash"}'}, secret="k")
    redactors = ProjectRedactors(source, ttl=3600, plugins=[first, second])
    out = redactors.get(1)(interaction(f"mail {EMAIL}", user_id="u-7"))
    expected = ("mail <EMAIL>", pseudonym("k", "u-7"))
    assert first.seen == [expected]
    assert second.seen == [expected]
    assert (text(out), out.body.user_id) == expected


def test_plugin_redactors_run_in_order_on_what_the_previous_step_returned() -> None:
    def upper(event: Event) -> Event:
        assert isinstance(event, InteractionEvent)
        body = Interaction(input=str(event.body.input).upper())
        return InteractionEvent(id=event.id, timestamp=event.timestamp, body=body)

    recorder = Recorder()
    redactors = ProjectRedactors(Source(), ttl=3600, plugins=[upper, recorder])
    redactors.get(1)(interaction(f"mail {EMAIL}"))
    assert recorder.seen == [("MAIL <EMAIL>", None)]


def test_plugins_alone_when_the_project_redacts_nothing() -> None:
    recorder = Recorder()
    redactors = ProjectRedactors(Source({1: '{"enabled": false}'}), ttl=3600, plugins=[recorder])
    event = interaction(f"mail {EMAIL}")
    assert redactors.get(1)(event) == event
    assert recorder.seen == [(f"mail {EMAIL}", None)]


def test_no_policy_and_no_plugins_is_the_identity() -> None:
    redactors = ProjectRedactors(Source({1: '{"enabled": false}'}), ttl=3600)
    event = interaction(f"mail {EMAIL}", user_id="u-7")
    assert redactors.get(1)(event) is event


def test_an_unchanged_policy_keeps_its_redactor_and_its_warm_cache() -> None:
    policies = {"json": "{}"}
    redactors = ProjectRedactors(lambda project_id: (policies["json"], "k"), ttl=0)
    first = redactors.get(1)
    assert redactors.get(1) is first, "re-read after the ttl, unchanged: the same step"
    policies["json"] = '{"default_mode": "drop"}'
    assert redactors.get(1) is not first, "a changed policy builds a new step"


def test_a_policy_change_during_a_read_is_not_undone_by_the_stale_read() -> None:
    stored = {"json": '{"enabled": false}'}
    redactors: ProjectRedactors

    def source(project_id: int) -> tuple[str, str | None]:
        read = stored["json"]
        stored["json"] = "{}"  # the PUT lands while this read is in flight ...
        redactors.forget(project_id)  # ... and forgets the cached step
        return read, "k"

    redactors = ProjectRedactors(source, ttl=60)
    redactors.get(1)  # built from the stale policy: used once, not cached
    assert redactors.cached(1) is None
