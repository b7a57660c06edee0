"""Event rules on signals (``event: {signal: edit}``): what parses and what is refused, with
the field and line (no database)."""

from __future__ import annotations

import pytest

from closedloop.act.conditions import stream_of
from closedloop.act.engine import cooldown_of
from closedloop.act.knowledge import KnowledgeParams
from closedloop.act.rules import EventCondition, RuleError, parse_rules


def _rule(event: str) -> str:
    return f"rules:\n  - name: r\n    when:\n      event: {event}\n    actions: [{{x: {{}}}}]\n"


def test_a_signal_rule_parses_and_reads_the_signal_stream_with_no_cooldown() -> None:
    (spec,) = parse_rules(_rule("{signal: edit, prompt: support, source: user}"))
    cond = spec.condition
    assert isinstance(cond, EventCondition)
    assert (cond.event.signal, cond.event.prompt) == ("edit", "support")
    assert stream_of(cond) == "signal:edit" and cooldown_of(spec) == 0
    (feedback,) = parse_rules(_rule("{thumbs: down}"))
    assert stream_of(feedback.condition) == "event"
    assert spec.to_json()["when"]["event"]["signal"] == "edit"


def test_an_unknown_signal_kind_names_the_field_and_the_kinds() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules(_rule("{signal: edits}"))
    ((line, field, message),) = caught.value.problems
    assert (line, field) == (4, "rules[0.when.event.signal]")
    assert "'edits'" in message and "edit, copy, regenerate" in message


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ("thumbs: down", "thumbs"),
        ("correction: true", "correction"),
        ("comment: false", "comment"),
        ("label: wrong", "label"),
        ("rating_below: 0.5", "rating_below"),
        ("source: any", "source"),
    ],
)
def test_feedback_fields_with_signal_are_refused_by_name(extra: str, named: str) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rules(_rule(f"{{signal: edit, {extra}}}"))
    ((line, field, message),) = caught.value.problems
    assert (line, field) == (4, "rules[0.when.event]")
    assert f"with {named}:" in message and "`signal`" in message


def test_kb_refresh_reads_edits_only_when_asked() -> None:
    assert KnowledgeParams().from_edits is False
    assert KnowledgeParams(from_edits=True).from_edits is True
