"""Redaction never crashes on hostile input, and takes bounded time per event (hypothesis).

Hostile input: text fields at the contract's limits (:data:`closedloop.events.LIMITS`),
metadata nested to the allowed depth, odd Unicode (combining marks, RTL and direction
overrides, zero-width characters, emoji and other astral characters, digits of other scripts,
full-width ``@`` and digits) and strings built to make regular expressions backtrack
(``"1" * 50000``, ``"a@" * 20000``, ``". " * 30000``, ``+`` and digit soups, runs of
capitalised words and of PII).

Two levels:

* the redactor itself, ``PiiRedactor()(event)`` and ``redact_text`` (meaningful whether or not
  the ingest path uses it);
* the wired path, ``runtime.ingestor.ingest(key, [raw])`` on both backends, where every event
  must end ``stored`` (and read back from the store as a valid contract event) or ``rejected``
  with the field, and nothing may raise.

The hypothesis ``deadline`` on each example is a guard against catastrophic backtracking and
quadratic loops (an event that takes many seconds blocks ingestion), not a performance
measurement: it is set far above what a linear pass over 100,000 characters costs.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, example, given, note, settings
from hypothesis import strategies as st

from closedloop.enrich.pii import PiiRedactor
from closedloop.errors import ContractError
from closedloop.events import LIMITS, Event, decode_event, encode, find_nul
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.types import ProjectKey
from tests.conftest import Tenant

DEADLINE = dt.timedelta(seconds=15)  # a guard against runaway matching, not a benchmark
TS = "2026-01-01T00:00:00Z"
TEXT = LIMITS.text_length
NAME = LIMITS.name_length

# No example database (nothing written under the repository), and no shrinking where one
# example may take seconds: the failing example is printed as drawn (``unit``, ``length``).
BIG = settings(
    database=None,
    deadline=DEADLINE,
    phases=(Phase.explicit, Phase.generate),
    report_multiple_bugs=False,  # stop at the first slow failure instead of running them all
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # the runtime and the redactor serve every example
    ],
)

# -- text ----------------------------------------------------------------------------------

ODD = (
    [chr(c) for c in range(0x0300, 0x0370, 7)]  # combining marks
    + ["\u05d0", "\u05e9", "\u0627", "\u0644", "\u202e", "\u202d", "\u200f", "\u061c"]  # RTL
    + ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u00ad"]  # zero-width, soft hyphen
    + ["\U0001f600", "\U0001f469\u200d\U0001f4bb", "\U0001f1e9\U0001f1ea", "\U0001d400"]
    + ["\U00020000", "\U0001f3fd", "\U000e0041"]  # CJK ext. B, skin tone, tag character
    + [chr(0x0660 + d) for d in range(10)]  # Arabic-Indic digits
    + [chr(0x06F0 + d) for d in range(10)]  # extended Arabic-Indic digits
    + [chr(0x0966 + d) for d in range(10)]  # Devanagari digits
    + [chr(0xFF10 + d) for d in range(10)]
    + ["\uff20", "\uff0e", "\uff0b"]  # full-width @ . +
    + ["\u2028", "\u2029", "\r", "\n", "\t", "\u00a0", "\u3000"]  # separators, odd spaces
)
PLAIN = list("0123456789 -.:@/+()_=,;'\"<>aZkSé")
PII = [
    "ana@example.org",
    "+1 415-555-0132",
    "+14155550132",
    "4111 1111 1111 1111",
    "4111111111111111",
    "DE89 3704 0044 0532 0130 00",
    "203.0.113.9",
    "2001:db8::1",
    "123-45-6789",
    "https://u:p4ss@db.example.net/",
    "sk-abcdefghijklmnopqrstuvwxyz012345",
    "ghp_abcdefghijklmnopqrstuvwxyz0123456789",
    "born 1990-01-02",
    "Mr John Smith",
    "12 Main Street",
    "Paris",
    # odd variants of the same
    "ana\uff20example\uff0eorg",
    "a\u0301na@example.org",
    "\u202eana@example.org",
    "415\u200b-555-0132",
    "\u0664\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661\u0661\u0661 \u0661\u0661",
    "\uff14\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11\uff11",
    "Jos\u00e9 Mar\u00eda",
    "\u05d3\u05d5\u05d3 \u05db\u05d4\u05df",
]

atoms = st.one_of(
    st.sampled_from(ODD + PLAIN),
    st.sampled_from(PII),
    st.characters(exclude_categories=["Cs"]),  # any code point but lone surrogates
)


def odd_text(max_size: int) -> st.SearchStrategy[str]:
    """Short hostile text: odd Unicode, punctuation, digits and PII, joined at random."""
    return st.lists(atoms, max_size=60).map("".join).map(lambda s: s[:max_size])


# Units repeated up to a field's limit: each is built to make some pattern backtrack, or to
# make one detector find (and the redactor reconcile) tens of thousands of hits.
UNITS = [
    "1",
    "a@",
    ". ",
    "+",
    "+1 ",
    "1 ",
    "1-",
    "1-2 3.4/5(6)",
    "1.2.3.",
    "1.2.3.4 ",
    ":",
    "a:",
    "https://a:b@",
    "a@b.io ",
    "a.b-c+d@",
    "123-45-6789 ",
    "4111 ",
    "DE89 3704 ",
    "call 1 ",
    "born ",
    "Ab ",
    "Ab. ",
    "Mr John ",
    "hi Ab ",
    "12 Main ",
    "sk-",
    "eyJ",
    "eyJaaaaaaaaa.",
    "aB3dE5fG7hJ9kL1mN3pQ5rS7 ",
    "-----BEGIN PRIVATE KEY-----",
    "\uff11",
    "\uff20a",
    "\u0661",
    "\u0661-",
    "a\u0301",
    "\u200b1",
    "\U0001f600",
]


def soup(unit: str, length: int) -> str:
    return (unit * (length // len(unit) + 1))[:length]


def fill(unit: str, max_bytes: int) -> str:
    """``unit`` repeated as often as fits in ``max_bytes`` of encoded JSON."""
    return unit * (max_bytes // (len(encode(unit)) - 2))


def soups(max_length: int, min_length: int = 1) -> st.SearchStrategy[str]:
    return st.builds(
        soup, st.sampled_from(UNITS), st.integers(min_length, max(min_length, max_length))
    )


def field_text(limit: int, *, big: bool) -> st.SearchStrategy[str]:
    """Text for a field of at most ``limit`` characters; ``big`` adds soups up to the limit."""
    small = st.one_of(odd_text(limit), soups(min(limit, 300)))
    if not big:
        return small
    return st.one_of(small, soups(limit, min_length=limit // 2), st.just(soup("1", limit)))


def name_text(limit: int = NAME) -> st.SearchStrategy[str]:
    return field_text(limit, big=True).filter(bool)


# -- metadata ------------------------------------------------------------------------------

keys = st.one_of(st.sampled_from(["email", "a", "ip", "notes", "x"]), odd_text(16))
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    odd_text(200),
    soups(500),
)


def nested(depth: int) -> st.SearchStrategy[Any]:
    """A JSON value that, as a metadata value, stays within ``depth`` more levels."""
    if depth <= 1:
        return leaves
    inner = nested(depth - 1)
    return st.one_of(
        leaves,
        st.lists(inner, max_size=3),
        st.dictionaries(keys, inner, max_size=3),
    )


def deep_chain(leaf: Any) -> dict[str, Any]:
    """Metadata exactly as deep as the contract allows."""
    value: Any = leaf
    for key in ("d", "c", "b"):
        value = {key: value}
    return {"a": value}  # metadata 1, a 2, b 3, c 4, d's value 5


metadata = st.one_of(
    st.dictionaries(keys, nested(LIMITS.metadata_depth - 1), max_size=4),
    st.builds(deep_chain, st.one_of(odd_text(200), soups(4_000))),
    st.builds(
        lambda unit: {"blob": fill(unit, LIMITS.metadata_bytes - 64)}, st.sampled_from(UNITS)
    ),
)

# -- events --------------------------------------------------------------------------------


class Hostile:
    """An envelope whose ``repr`` stays short: hypothesis prints a failing example, and the
    full repr of 100,000-character strings would be unreadable (and warns, an error here)."""

    __slots__ = ("envelope",)

    def __init__(self, envelope: dict[str, Any]) -> None:
        self.envelope = envelope

    def __repr__(self) -> str:
        return _shown(self.envelope)


def tag_text() -> st.SearchStrategy[str]:
    return field_text(LIMITS.tag_length, big=True).filter(bool)


@st.composite
def interactions(draw: st.DrawFn, big: bool) -> dict[str, Any]:
    huge = draw(st.sampled_from(["input", "output"])) if big else None  # one big field
    small = field_text(TEXT, big=False)
    body: dict[str, Any] = {
        "input": draw(
            st.one_of(
                field_text(TEXT, big=huge == "input"),
                st.lists(
                    st.fixed_dictionaries(
                        {"role": st.sampled_from(["user", "system", "assistant"])},
                        optional={"content": small, "name": name_text()},
                    ),
                    max_size=4,
                ),
            )
        ),
        "output": draw(st.one_of(st.none(), field_text(TEXT, big=huge == "output"))),
        "retrieved": draw(
            st.lists(
                st.fixed_dictionaries(
                    {"id": st.just("doc-1")},
                    optional={"text": small, "source": name_text()},
                ),
                max_size=2,
            )
        ),
        "metadata": draw(metadata),
        "tags": draw(st.lists(tag_text(), max_size=4)),
    }
    return {k: v for k, v in body.items() if v is not None}


@st.composite
def feedbacks(draw: st.DrawFn, big: bool) -> dict[str, Any]:
    text = field_text(TEXT, big=big)
    return {
        "interaction_id": "i-1",
        "thumbs": -1,
        "label": draw(name_text()),
        "correction": draw(text),
        "comment": draw(field_text(TEXT, big=False)),
        "metadata": draw(metadata),
        "tags": draw(st.lists(tag_text(), max_size=4)),
    }


@st.composite
def signals(draw: st.DrawFn, big: bool) -> dict[str, Any]:
    kind = draw(st.sampled_from(["edit", "click"]))
    body: dict[str, Any] = {"interaction_id": "i-1", "kind": kind, "metadata": draw(metadata)}
    if kind == "edit":
        body["text"] = draw(field_text(TEXT, big=big))
    else:
        body["target"] = draw(field_text(2048, big=True))
    return body


def events(big: bool = True) -> st.SearchStrategy[Hostile]:
    """Envelopes (as JSON-ready dicts) with fresh ids; ``big``: one text field may be huge."""
    bodies = st.one_of(
        interactions(big).map(lambda b: ("interaction", b)),
        feedbacks(big).map(lambda b: ("feedback", b)),
        signals(big).map(lambda b: ("signal", b)),
    )
    return bodies.map(
        lambda tb: Hostile(
            {"id": f"h-{uuid.uuid4()}", "type": tb[0], "timestamp": TS, "body": tb[1]}
        )
    )


# Hand-picked events: PII-dense fields at their limits (masks are longer than what they
# replace), the deepest metadata, and the soups of the brief in the biggest field.
DENSE_LABEL = soup("a@b.io ", NAME)
EXPLICIT_ENVELOPES = [
    {
        "id": "x-label",
        "type": "feedback",
        "timestamp": TS,
        "body": {"interaction_id": "i-1", "label": DENSE_LABEL, "tags": [soup("1.2.3.4 ", 64)]},
    },
    {
        "id": "x-output",
        "type": "interaction",
        "timestamp": TS,
        "body": {"input": soup("https://a:b@", 60_000)},  # masked: 110,000 characters
    },
    {
        "id": "x-deep",
        "type": "signal",
        "timestamp": TS,
        "body": {
            "interaction_id": "i-1",
            "kind": "edit",
            "text": soup("1", 50_000),
            "metadata": deep_chain(soup("a@", 4_000)),
        },
    },
    {
        "id": "x-soups",
        "type": "interaction",
        "timestamp": TS,
        "body": {
            "input": [{"role": "user", "content": soup("a@", 40_000)}],
            "output": soup(". ", 60_000),
            "retrieved": [{"id": "d", "text": soup("+1 ", TEXT)}],
        },
    },
    {
        "id": "x-metadata",
        "type": "interaction",
        "timestamp": TS,
        "body": {"input": "hi", "metadata": {"blob": fill("a@b.io ", LIMITS.metadata_bytes - 64)}},
    },
]


EXPLICIT = [Hostile(e) for e in EXPLICIT_ENVELOPES]


def _decode(envelope: dict[str, Any]) -> Event | None:
    """The contract event, or ``None`` when the generated envelope is not one."""
    try:
        return decode_event(json.dumps(envelope))
    except ContractError:
        return None


def _shown(envelope: dict[str, Any]) -> str:
    """The envelope for a failure report, each long string shown by its length and start."""

    def short(value: Any) -> Any:
        if isinstance(value, str) and len(value) > 80:
            return f"{value[:40]!r}... ({len(value)} chars)"
        if isinstance(value, dict):
            return {k: short(v) for k, v in value.items()}
        if isinstance(value, list):
            return [short(v) for v in value]
        return value

    return f"envelope: {short(envelope)}"


def _round_trip(event: Event) -> Event:
    """``event`` encoded and decoded again: it must still be a valid contract event."""
    return decode_event(encode(event))


# -- the redactor itself -------------------------------------------------------------------


@pytest.fixture(scope="module")
def redactor() -> PiiRedactor:
    """One redactor, warmed up: the lexicons and phone metadata load on first use, which is
    not what the deadline measures."""
    r = PiiRedactor()
    r.redact_text("Mr John Smith of 12 Main Street, Paris, born 1990-01-02: ana@example.org")
    r.redact_text("+1 415-555-0132 4111 1111 1111 1111 DE89 3704 0044 0532 0130 00")
    return r


@settings(
    max_examples=150,
    deadline=DEADLINE,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(text=st.one_of(odd_text(2_000), st.text(max_size=300)))
def test_redact_text_of_odd_unicode_is_bounded_and_idempotent(
    redactor: PiiRedactor, text: str
) -> None:
    once = redactor.redact_text(text)
    assert isinstance(once, str)
    for span in redactor.find(text):
        assert text[span.start : span.end] == span.value
    twice = redactor.redact_text(once)
    assert twice == once, f"redact_text({text!r}) = {once!r}, and again: {twice!r}"


@settings(BIG, max_examples=5, deadline=2 * DEADLINE)  # two passes, each held to DEADLINE
@given(unit=st.sampled_from(UNITS), length=st.integers(TEXT // 2, TEXT))
@example(unit="1", length=50_000)
@example(unit="a@", length=40_000)
@example(unit=". ", length=60_000)
@example(unit="+", length=TEXT)
@example(unit="1-2 3.4/5(6)", length=TEXT)
@example(unit="a@b.io ", length=TEXT)
@example(unit="Ab ", length=TEXT)
def test_redact_text_of_backtracking_soups_is_bounded_and_idempotent(
    redactor: PiiRedactor, unit: str, length: int
) -> None:
    note(f"soup({unit!r}, {length})")
    text = soup(unit, length)
    started = time.perf_counter()
    once = redactor.redact_text(text)
    took = time.perf_counter() - started
    note(f"{len(text)} characters in, {len(once)} out, in {took:.2f} s")
    assert took < DEADLINE.total_seconds(), f"soup({unit!r}, {length}) took {took:.1f} s"
    assert redactor.redact_text(once) == once, f"redacting soup({unit!r}, {length}) twice differs"


@settings(BIG, max_examples=15)
@given(hostile=events())
@example(hostile=EXPLICIT[0])
@example(hostile=EXPLICIT[1])
@example(hostile=EXPLICIT[2])
@example(hostile=EXPLICIT[3])
@example(hostile=EXPLICIT[4])
def test_the_redacted_event_is_still_a_valid_contract_event(
    redactor: PiiRedactor, hostile: Hostile
) -> None:
    event = _decode(hostile.envelope)
    if event is None:  # a generated body over some other limit: not this test's subject
        return
    try:
        redacted = redactor(event)
    except ContractError as exc:  # the wired path would reject a valid event for it
        raise AssertionError(
            f"redacting a valid {event.type} raised ContractError at {exc.field}: {exc.message}"
        ) from exc
    assert type(redacted) is type(event) and redacted.id == event.id
    try:
        again = _round_trip(redacted)
    except ContractError as exc:
        raise AssertionError(
            f"the redacted {event.type} breaks the contract at {exc.field}: {exc.message}"
        ) from exc
    assert again == redacted


# -- the wired path ------------------------------------------------------------------------

_TABLES = {
    "interaction": models.interactions,
    "feedback": models.feedback,
    "signal": models.signals,
}


def _stored_event(runtime: Runtime, project_id: int, envelope: dict[str, Any]) -> Event:
    table = _TABLES[envelope["type"]]
    with runtime.engine.connect() as conn:
        body = conn.execute(
            sa.select(table.c.body).where(
                table.c.project_id == project_id, table.c.id == envelope["id"]
            )
        ).scalar_one()
    stored = {**envelope, "body": msgspec.json.decode(body)}
    try:
        return decode_event(json.dumps(stored))
    except ContractError as exc:
        raise AssertionError(
            f"the stored {envelope['type']} is not a valid contract event at {exc.field}: "
            f"{exc.message}"
        ) from exc


def _ingest_one(runtime: Runtime, tenant: Tenant, envelope: dict[str, Any]) -> None:
    key = ProjectKey(
        project_id=tenant.project_id, project_name=tenant.name, kind="secret", key_id=0
    )
    raw = json.dumps(envelope).encode()
    result = runtime.ingestor.ingest(key, [raw])  # must not raise, whatever the event
    (outcome,) = result.results
    if outcome.status == "rejected":
        assert outcome.field, f"rejected without a field: {outcome}"
        valid = _decode(envelope) is not None and find_nul(envelope) is None
        assert not valid, f"a valid event was rejected: {outcome}"
        return
    assert outcome.status == "stored", outcome
    _stored_event(runtime, tenant.project_id, envelope)


@settings(BIG, max_examples=8)
@given(hostile=events())
@example(hostile=EXPLICIT[0])  # a PII-dense label (a VARCHAR(256) on PostgreSQL)
@example(hostile=EXPLICIT[1])  # text fields that grow when masked
@example(hostile=EXPLICIT[4])  # metadata at its byte limit that grows when masked
def test_the_wired_ingest_path_stores_or_rejects_every_hostile_event(
    runtime: Runtime, tenant: Tenant, hostile: Hostile
) -> None:
    """On both backends: stored and read back as a contract event, or rejected with the
    field; never an exception, and within the deadline."""
    envelope = {**hostile.envelope, "id": f"w-{uuid.uuid4()}"}  # fresh: never a duplicate
    note(_shown(envelope))
    _ingest_one(runtime, tenant, envelope)


@settings(BIG, max_examples=10)
@given(hostile=events(big=False), mutation=st.sampled_from(["latency", "thumbs", "depth", "nul"]))
def test_hostile_events_that_break_the_contract_are_rejected_with_the_field(
    runtime: Runtime, tenant: Tenant, hostile: Hostile, mutation: str
) -> None:
    """Hostile text next to a contract error: a per-event rejection naming the field."""
    envelope = hostile.envelope
    body = dict(envelope["body"])
    if mutation == "latency":
        body["latency_ms"] = soup("1", 1_000)  # a string where a number goes
    elif mutation == "thumbs":
        body["thumbs"] = 3
    elif mutation == "depth":
        body["metadata"] = {"a": deep_chain({"too": "deep"})}
    else:
        body["metadata"] = {"note": "a\x00b"}
    envelope = {**envelope, "id": f"r-{uuid.uuid4()}", "body": body}
    key = ProjectKey(
        project_id=tenant.project_id, project_name=tenant.name, kind="secret", key_id=0
    )
    (outcome,) = runtime.ingestor.ingest(key, [json.dumps(envelope).encode()]).results
    assert outcome.status == "rejected" and outcome.field, outcome
