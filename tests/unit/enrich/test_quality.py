"""The quality estimate: explicit feedback wins, implicit evidence is a weighted mean."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from closedloop.enrich.measures import Measure
from closedloop.enrich.quality import QualityEstimator, QualityParams
from closedloop.events import Feedback

NEGATIVE = ["regenerate", "rephrase", "abandon", "escalate"]
POSITIVE = ["copy", "accept"]


def measure(name: str, value: float = 1.0) -> Measure:
    return Measure(name=name, value=value, source="client")


MEASURES = st.lists(
    st.one_of(
        st.sampled_from(NEGATIVE + POSITIVE).map(measure),
        st.floats(0, 1).map(lambda v: measure("edit_similarity", v)),
        st.floats(0, 1).map(lambda v: measure("click_reciprocal_rank", v)),
        st.floats(0, 1_000).map(lambda v: measure("dwell_seconds", v)),
        st.floats(0, 1).map(lambda v: measure("kept_length_ratio", v)),  # not a vote
    ),
    max_size=12,
)
FEEDBACK = st.one_of(
    st.sampled_from([-1, 1]).map(lambda t: Feedback(interaction_id="i", thumbs=t)),
    st.integers(1, 5).map(lambda r: Feedback(interaction_id="i", rating=r)),
    st.just(Feedback(interaction_id="i", correction="the right answer")),
)

estimate = QualityEstimator()


def test_explicit_feedback_maps_to_the_unit_interval() -> None:
    assert estimate(feedback=[Feedback(interaction_id="i", thumbs=1)]).value == 1.0
    assert estimate(feedback=[Feedback(interaction_id="i", thumbs=-1)]).value == 0.0
    ten = Feedback(interaction_id="i", rating=7, rating_min=0, rating_max=10)
    assert estimate(feedback=[ten]).value == pytest.approx(0.7)
    assert estimate(feedback=[Feedback(interaction_id="i", correction="x")]).value == 0.1
    both = [Feedback(interaction_id="i", thumbs=1), Feedback(interaction_id="i", rating=1)]
    assert estimate(feedback=both).value == 0.5


def test_labels_and_comments_alone_leave_the_implicit_estimate() -> None:
    q = estimate(
        feedback=[Feedback(interaction_id="i", comment="hm", label="x")],
        measures=[measure("copy")],
    )
    assert q.basis == "implicit"
    assert q.value == 0.75


def test_implicit_estimate_is_the_documented_weighted_mean() -> None:
    q = estimate(measures=[measure("edit_similarity", 0.8), measure("regenerate")])
    assert q.value == pytest.approx((0.5 + 3 * 0.8 + 2 * 0) / (1 + 3 + 2))
    assert [(e.name, e.weight) for e in q.evidence] == [
        ("edit_similarity", 3.0),
        ("regenerate", 2.0),
    ]
    assert estimate(measures=[measure("dwell_seconds", 15)]).value == pytest.approx(0.5)


def test_an_indicator_that_did_not_fire_is_no_evidence() -> None:
    assert estimate(measures=[measure("abandon", 0.0)]).basis == "prior"


def test_repeats_of_one_measure_are_capped() -> None:
    three = estimate(measures=[measure("regenerate")] * 3).value
    assert estimate(measures=[measure("regenerate")] * 10).value == three


@given(st.lists(FEEDBACK, min_size=1, max_size=4), MEASURES)
def test_explicit_feedback_wins_over_any_implicit_measures(
    feedback: list[Feedback], measures: list[Measure]
) -> None:
    alone = estimate(feedback=feedback)
    q = estimate(feedback=feedback, measures=measures)
    assert q == alone
    assert q.basis == "explicit"
    assert 0.0 <= q.value <= 1.0


@given(MEASURES)
def test_the_estimate_lies_within_the_unit_interval(measures: list[Measure]) -> None:
    assert 0.0 <= estimate(measures=measures).value <= 1.0


@given(MEASURES, st.lists(st.sampled_from(NEGATIVE), min_size=1, max_size=4))
def test_more_negative_signals_never_raise_quality(
    measures: list[Measure], negatives: list[str]
) -> None:
    before = estimate(measures=measures).value
    after = estimate(measures=measures + [measure(n) for n in negatives]).value
    assert after <= before + 1e-12


@given(MEASURES, st.lists(st.sampled_from(POSITIVE), min_size=1, max_size=4))
def test_more_positive_signals_never_lower_quality(
    measures: list[Measure], positives: list[str]
) -> None:
    before = estimate(measures=measures).value
    after = estimate(measures=measures + [measure(n) for n in positives]).value
    assert after >= before - 1e-12


@given(st.floats(0, 1), st.floats(0, 1))
def test_a_closer_edit_never_lowers_quality(low: float, high: float) -> None:
    low, high = sorted((low, high))
    assert (
        estimate(measures=[measure("edit_similarity", low)]).value
        <= estimate(measures=[measure("edit_similarity", high)]).value
    )


def test_quality_params_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        QualityParams(prior=1.5)
    with pytest.raises(ValueError):
        QualityParams(weights={"copy": -1.0})
    with pytest.raises(ValueError):
        QualityParams(prior_weight=0)
