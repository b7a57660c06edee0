"""The rules page's one-line condition: a signal rule reads as the signal kind (with the prompt
and model that narrow it), a feedback rule as its filter."""

from __future__ import annotations

import datetime as dt

import pytest

from closedloop.act.rules import StoredRule, parse_rules
from closedloop.ui.pages.rules import condition_text


def stored(when: str) -> StoredRule:
    spec = parse_rules(f"rules:\n  - {{name: r, when: {when}, actions: [{{kb_refresh: {{}}}}]}}\n")[
        0
    ]
    now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    return StoredRule(
        id=1, project_id=1, spec=spec, source="api", state={}, created_at=now, updated_at=now
    )


@pytest.mark.parametrize(
    ("when", "text"),
    [
        ("{event: {signal: edit}}", "signal edit"),
        ("{event: {signal: rephrase, prompt: support}}", "signal rephrase, prompt=support"),
        (
            "{event: {signal: edit, prompt: support@3, model: gpt-x}}",
            "signal edit, prompt=support@3, model=gpt-x",
        ),
        ("{event: {thumbs: down}}", "feedback thumbs=down, source=user"),
    ],
)
def test_an_event_rule_reads_as_its_signal_kind_or_its_feedback_filter(
    when: str, text: str
) -> None:
    assert condition_text(stored(when)) == text
