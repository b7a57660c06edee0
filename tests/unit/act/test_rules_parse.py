"""Rules files: validation with line numbers, durations, defaults (no database)."""

from __future__ import annotations

import textwrap
from typing import Any, ClassVar

import pydantic
import pytest

from closedloop.act.engine import cooldown_of
from closedloop.act.rules import RuleError, parse_duration, parse_rules


class _NotifyParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    endpoint: str


class Notify:
    name: ClassVar[str] = "notify"
    Params: ClassVar[type[pydantic.BaseModel]] = _NotifyParams


KINDS: dict[str, Any] = {"notify": Notify}

GOOD = textwrap.dedent(
    """\
    rules:
      - name: support-quality
        when:
          metric: positive_rate
          by: prompt
          below: 0.7
          window: 24h
          min_count: 100
        cooldown: 6h
        actions:
          - notify: {endpoint: ops}
      - name: corrections
        when:
          event: {thumbs: down, correction: true, prompt: support-v3}
        actions:
          - notify: {endpoint: ops}
    """
)


def test_a_good_file_parses_with_durations_in_seconds_and_per_kind_cooldowns() -> None:
    metric, event = parse_rules(GOOD, kinds=KINDS)
    assert metric.condition.kind == "metric"
    assert metric.condition.window == 86400  # type: ignore[union-attr]
    assert cooldown_of(metric) == 6 * 3600
    assert event.condition.event.thumbs == "down"  # type: ignore[union-attr]
    assert cooldown_of(event) == 0  # each feedback is its own trigger
    assert metric.actions[0].type == "notify" and metric.actions[0].params == {"endpoint": "ops"}


def _problems(text: str) -> list[tuple[int | None, str, str]]:
    with pytest.raises(RuleError) as caught:
        parse_rules(textwrap.dedent(text), kinds=KINDS)
    return caught.value.problems


def test_an_unknown_metric_is_reported_at_its_line() -> None:
    problems = _problems(
        """\
        rules:
          - name: r1
            when:
              metric: happiness
              below: 0.5
            actions: [{notify: {endpoint: ops}}]
        """
    )
    assert len(problems) == 1
    line, field, message = problems[0]
    assert line == 4 and "metric" in field and "happiness" in message


def test_every_problem_of_a_file_is_listed_each_with_its_line() -> None:
    problems = _problems(
        """\
        rules:
          - name: ok
            when: {drift: quality}
            actions: [{notify: {endpoint: ops}}]
          - name: Bad Name
            when: {drift: quality}
            actions: [{notify: {endpoint: ops}}]
          - name: no-actions
            when: {issue: growing}
            actions: []
          - name: bad-action
            when: {issue: [open, growing]}
            actions:
              - notify: {endpoint: ops, colour: red}
          - name: bad-cooldown
            when: {drift: any}
            cooldown: soon
            actions: [{notify: {endpoint: ops}}]
        """
    )
    lines = sorted(p[0] for p in problems if p[0] is not None)
    assert lines == [5, 10, 14, 17], problems
    by_line = {p[0]: p for p in problems}
    assert "colour" in by_line[14][2]  # the action's parameters are checked too
    assert "duration" in by_line[17][2]


def test_an_unknown_action_names_the_known_ones() -> None:
    ((line, _, message),) = _problems(
        """\
        rules:
          - name: r
            when: {drift: input}
            actions:
              - page_the_cto: {}
        """
    )
    assert line == 5 and "page_the_cto" in message and "notify" in message


def test_a_metric_rule_needs_exactly_one_threshold_and_when_one_condition() -> None:
    problems = _problems(
        """\
        rules:
          - name: both
            when: {metric: quality, below: 0.5, above: 0.9}
            actions: [{notify: {endpoint: ops}}]
          - name: two
            when: {drift: quality, issue: open}
            actions: [{notify: {endpoint: ops}}]
        """
    )
    messages = " ".join(p[2] for p in problems)
    assert "exactly one of `below` or `above`" in messages
    assert "exactly one of: metric, drift, issue, event" in messages


def test_yaml_syntax_errors_and_repeated_names_have_lines() -> None:
    ((line, field, _),) = _problems("rules:\n  - name: r\n    when: {drift: quality\n")
    assert field == "yaml" and line is not None
    problems = _problems(
        """\
        rules:
          - {name: r, when: {drift: quality}, actions: [{notify: {endpoint: a}}]}
          - {name: r, when: {drift: input}, actions: [{notify: {endpoint: a}}]}
        """
    )
    assert [(p[0], p[1]) for p in problems] == [(3, "name")]


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("6h", 21600), ("7d", 604800), (90, 90)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "-5m", "5 parsecs", ""])
def test_bad_durations_say_how_to_write_one(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)
