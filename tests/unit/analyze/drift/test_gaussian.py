"""GaussianCusum against its documented properties."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from closedloop.analyze.drift import GaussianCusum, measure_arl0


def first_alarm(detector: GaussianCusum, seed: int, change: int, shift: float) -> int:
    """Index of the first alarm (the delay is measured on streams with none before)."""
    rng = random.Random(seed)
    for i in range(change + 4000):
        detector.update(rng.gauss(3.0 if i < change else 3.0 + shift, 1.0))
        if detector.drift_detected:
            return i
    raise AssertionError("no alarm")


def test_false_alarms_on_stationary_streams_stay_within_the_stated_rate() -> None:
    m = measure_arl0(
        lambda: GaussianCusum(arl0=2000, warmup=500),
        lambda rng: rng.gauss(3.0, 1.0),
        n_streams=25,
        horizon=6000,
        seed=4,
    )
    assert m.alarms <= 75 + 3 * math.sqrt(75)


def test_a_clear_drop_is_detected_quickly() -> None:
    delays = [first_alarm(GaussianCusum(), seed, 1500, -1.0) - 1500 for seed in range(10)]
    clean = [d for d in delays if d >= 0]
    assert len(clean) >= 8
    assert max(clean) < 100


def test_the_change_point_and_the_intervals_match_the_truth() -> None:
    errors, covered = [], 0
    for seed in range(20):
        detector = GaussianCusum()
        if first_alarm(detector, seed, 2000, -0.5) < 2000:
            continue  # a false alarm came first
        change = detector.change
        assert change is not None
        errors.append(abs(change.change_point - 2000))
        covered += change.before.low <= 3.0 <= change.before.high
    assert len(errors) >= 14
    assert statistics.median(errors) <= 30
    assert covered >= 0.8 * len(errors)


def test_a_constant_reference_does_not_divide_by_zero() -> None:
    detector = GaussianCusum(warmup=200)
    for _ in range(200):
        detector.update(4.0)
    detector.update(3.0)
    assert detector.drift_detected


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"arl0": 0.5}, "arl0"),
        ({"shifts": (0.5, -1.0)}, "shifts"),
        ({"warmup": 1}, "warmup"),
        ({"direction": "left"}, "direction"),
        ({"offset": math.inf}, "offset"),
        ({"min_scale": 0.0}, "min_scale"),
    ],
)
def test_bad_parameters_are_refused_by_name(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        GaussianCusum(**kwargs)  # type: ignore[arg-type]


def test_a_non_finite_observation_is_refused() -> None:
    with pytest.raises(ValueError, match="finite"):
        GaussianCusum().update(math.nan)
