"""Derived implicit measures: hand-checked values and properties."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from closedloop.enrich.measures import (
    Measure,
    MeasureParams,
    Measurer,
    capped_dwell_seconds,
    edit_distance,
    edit_similarity,
    input_similarity,
    is_rephrase,
    kept_length_ratio,
    reciprocal_rank,
    session_abandoned,
)
from closedloop.events import Signal

LEVELS = st.sampled_from(["char", "token"])
METHODS = st.sampled_from(["indel", "levenshtein"])


def test_edit_similarity_matches_hand_counted_edits() -> None:
    # "kitten" -> "sitting": Levenshtein 3 over 7; Indel 5 (2 substitutions + 1 insert) over 13
    assert edit_similarity("kitten", "sitting", method="levenshtein") == pytest.approx(4 / 7)
    assert edit_similarity("kitten", "sitting") == pytest.approx(1 - 5 / 13)
    assert edit_similarity("a b c d", "a b x d", level="token", method="levenshtein") == 0.75
    assert edit_distance("", "abc") == 1.0


@given(st.text(), LEVELS, METHODS)
def test_identical_texts_have_distance_zero_and_similarity_one(
    text: str, level: str, method: str
) -> None:
    assert edit_similarity(text, text, level=level, method=method) == 1.0  # type: ignore[arg-type]
    assert edit_distance(text, text, level=level, method=method) == 0.0  # type: ignore[arg-type]


@given(st.text(), st.text(), LEVELS, METHODS)
def test_edit_similarity_is_symmetric_and_within_unit_interval(
    a: str, b: str, level: str, method: str
) -> None:
    forward = edit_similarity(a, b, level=level, method=method)  # type: ignore[arg-type]
    assert forward == edit_similarity(b, a, level=level, method=method)  # type: ignore[arg-type]
    assert 0.0 <= forward <= 1.0
    distance = edit_distance(a, b, level=level, method=method)  # type: ignore[arg-type]
    assert distance == pytest.approx(1.0 - forward)


@given(st.text(), st.text())
def test_input_similarity_is_symmetric_and_within_unit_interval(a: str, b: str) -> None:
    assert input_similarity(a, b) == input_similarity(b, a)
    assert 0.0 <= input_similarity(a, b) <= 1.0


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789", min_size=1))
def test_repeating_an_input_is_a_rephrase_at_any_threshold(text: str) -> None:
    assert is_rephrase(text, text.upper(), threshold=1.0)


def test_rephrase_is_derived_only_above_the_threshold() -> None:
    assert is_rephrase("how do I cancel my order", "how can I cancel my order?")
    assert not is_rephrase("how do I cancel my order", "what are your opening hours?")
    with pytest.raises(ValueError, match="threshold"):
        is_rephrase("a", "a", threshold=1.5)


def test_kept_length_ratio_reports_cuts_and_additions() -> None:
    assert kept_length_ratio("abcdefgh", "abcd") == 0.5
    assert kept_length_ratio("ab", "abcd") == 2.0
    assert kept_length_ratio("", "x") == float("inf")


def test_reciprocal_rank_and_dwell_cap() -> None:
    assert [reciprocal_rank(r) for r in range(4)] == [1.0, 0.5, 1 / 3, 0.25]
    with pytest.raises(ValueError):
        reciprocal_rank(0, first=1)
    assert capped_dwell_seconds(1_500) == 1.5
    assert capped_dwell_seconds(10_000, cap_seconds=5) == 5.0
    with pytest.raises(ValueError):
        capped_dwell_seconds(-1)


@pytest.mark.parametrize(
    ("timeline", "now", "expected"),
    [
        ([], 1_000, None),
        ([(0, "interaction")], 599, None),
        ([(0, "interaction")], 600, True),
        ([(0, "interaction"), (10, "copy")], 10_000, False),
        ([(0, "interaction"), (10, "dwell")], 10_000, True),
        ([(0, "interaction"), (10, "abandon")], 20, True),
        ([(0, "interaction"), (700, "rephrase")], 10_000, True),  # the follow-up came too late
        ([(0, "interaction"), (5, "copy"), (50, "interaction")], 100, None),  # last answer open
        ([(0, "interaction"), (5, "copy"), (50, "interaction")], 10_000, True),
    ],
)
def test_session_abandoned_looks_at_the_last_answer(
    timeline: list[tuple[float, str]], now: float, expected: bool | None
) -> None:
    assert session_abandoned(timeline, now=now, after_seconds=600) is expected


def test_session_abandoned_accepts_datetimes_and_refuses_disorder() -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    timeline = [(t0, "interaction"), (t0 + dt.timedelta(seconds=30), "thumbs")]
    assert session_abandoned(timeline, now=t0 + dt.timedelta(hours=1)) is False
    with pytest.raises(ValueError, match="time order"):
        session_abandoned([(5, "interaction"), (1, "copy")], now=10)


def test_measurer_tags_client_values_and_derived_values() -> None:
    measurer = Measurer(MeasureParams(dwell_cap_seconds=60))
    dwell = measurer(Signal(interaction_id="i", kind="dwell", duration_ms=90_000))
    assert dwell == (Measure(name="dwell_seconds", value=60.0, source="client"),)
    assert measurer(Signal(interaction_id="i", kind="escalate")) == (
        Measure(name="escalate", value=1.0, source="client"),
    )
    edit = measurer(Signal(interaction_id="i", kind="edit", text="abc"), output="abc")
    assert {m.name: (m.value, m.source) for m in edit} == {
        "edit_similarity": (1.0, "derived"),
        "edit_distance": (0.0, "derived"),
        "kept_length_ratio": (1.0, "derived"),
    }
    # without the output there is nothing to compare
    assert measurer(Signal(interaction_id="i", kind="edit", text="abc")) == ()


def test_measure_params_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        MeasureParams(dwell_cap_seconds=0)
    with pytest.raises(ValueError):
        MeasureParams(rephrase_threshold=2)
