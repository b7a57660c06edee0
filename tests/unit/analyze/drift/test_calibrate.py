"""Measuring, calibrating and sharing out the false-alarm rate."""

from __future__ import annotations

import math

import pytest

from closedloop.analyze.drift import (
    ArlMeasurement,
    BernoulliCusum,
    calibrate,
    measure_arl0,
    segment_arl0,
)


def test_the_segment_budget_is_the_family_budget_times_the_number_of_segments() -> None:
    assert segment_arl0(10_000, 1) == 10_000
    assert segment_arl0(10_000, 250) == 2_500_000


@pytest.mark.parametrize(
    ("arl0", "n_segments", "name"),
    [(1.0, 3, "arl0"), (math.nan, 3, "arl0"), (100.0, 0, "n_segments"), (100.0, 2.5, "n_segments")],
)
def test_a_bad_budget_is_refused_by_name(arl0: float, n_segments: int, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        segment_arl0(arl0, n_segments)


def test_a_family_of_segments_keeps_the_family_rate() -> None:
    # 8 segments share a family budget of one false alarm per 500 observations of a
    # segment; each runs at segment_arl0(500, 8) = 4,000. Over 2,000 observations per
    # segment the family may raise 4 false alarms in expectation.
    per_segment = segment_arl0(500, 8)
    m = measure_arl0(
        lambda: BernoulliCusum(arl0=per_segment, warmup=300),
        lambda rng: rng.random() < 0.7,
        n_streams=8 * 8,  # 8 replications of the family
        horizon=2000,
        seed=5,
    )
    family_alarms_per_replication = m.alarms / 8
    assert family_alarms_per_replication <= 4 + 3 * math.sqrt(4 / 8)


def test_the_measurement_reports_arl0_and_an_upper_rate() -> None:
    m = ArlMeasurement(alarms=4, observations=40_000)
    assert m.arl0 == 10_000
    assert m.upper_rate() > 4 / 40_000
    assert ArlMeasurement(alarms=0, observations=10).arl0 == math.inf


def test_calibration_finds_a_threshold_that_meets_the_target() -> None:
    def sample(rng: object) -> float:
        return float(rng.random() < 0.6)  # type: ignore[attr-defined]

    offset, measured = calibrate(
        lambda t: BernoulliCusum(arl0=1000, warmup=200, offset=t),
        1000,
        sample,
        low=-4.0,
        high=4.0,
        n_streams=10,
        horizon=3000,
        iterations=6,
    )
    assert measured.arl0 >= 1000
    assert -4.0 < offset <= 4.0
    # a lower offset than the one found misses the target on the same streams
    lower = measure_arl0(
        lambda: BernoulliCusum(arl0=1000, warmup=200, offset=offset - 1.0),
        sample,
        n_streams=10,
        horizon=3000,
    )
    assert lower.alarms >= measured.alarms


def test_calibration_refuses_an_empty_bracket() -> None:
    with pytest.raises(ValueError, match="low"):
        calibrate(lambda t: BernoulliCusum(), 100, lambda rng: 0.5, low=1.0, high=1.0)
