"""BernoulliCusum against its documented properties."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable

import pytest

from closedloop.analyze.drift import BernoulliCusum, Change, measure_arl0


def run_until_alarm_after(
    detector: BernoulliCusum, rate: Callable[[int], float], seed: int, start: int, n: int
) -> int | None:
    """Index of the first alarm at or after ``start``, else ``None``."""
    rng = random.Random(seed)
    for i in range(n):
        detector.update(rng.random() < rate(i))
        if detector.drift_detected and i >= start:
            return i
    return None


def first_alarm(detector: BernoulliCusum, rate: Callable[[int], float], seed: int, n: int) -> int:
    """Index of the first alarm (``n`` if none): a change's delay is measured on the streams
    with no false alarm before it, as in the conditional delay of the literature."""
    return run_until_alarm_after(detector, rate, seed, 0, n) or n


def test_a_seeded_stream_pins_the_detection_index() -> None:
    rng = random.Random(11)
    detector = BernoulliCusum()
    found = []
    for i in range(6000):
        detector.update(rng.random() < (0.8 if i < 4000 else 0.7))
        if detector.drift_detected:
            found.append(i)
    assert found == [4272]


def test_false_alarms_on_stationary_streams_stay_within_the_stated_rate() -> None:
    # 25 streams x 6,000 observations at ARL0 = 2,000: at most 75 alarms expected; allow
    # the Poisson 3-sigma excess over the bound
    m = measure_arl0(
        lambda: BernoulliCusum(arl0=2000, warmup=500),
        lambda rng: rng.random() < 0.8,
        n_streams=25,
        horizon=6000,
        seed=3,
    )
    assert m.alarms <= 75 + 3 * math.sqrt(75)


def test_bounded_scores_raise_no_more_false_alarms_than_thumbs() -> None:
    m = measure_arl0(
        lambda: BernoulliCusum(arl0=2000, warmup=500),
        lambda rng: min(rng.random(), rng.random(), rng.random()) ** 0.3,  # a score in [0, 1]
        n_streams=10,
        horizon=6000,
        seed=3,
    )
    assert m.alarms <= 30 + 3 * math.sqrt(30)


def test_a_clear_drop_is_detected_quickly() -> None:
    delays = [
        first_alarm(BernoulliCusum(), lambda i: 0.8 if i < 1500 else 0.5, seed, 3000) - 1500
        for seed in range(20)
    ]
    clean = [d for d in delays if d >= 0]
    assert len(clean) >= 16  # no false alarm in the 500 observations after the warm-up
    assert max(clean) < 200


def changes(n_seeds: int) -> list[Change]:
    """The first alarm on streams falling from 0.8 to 0.6 at 2,000, if it came after."""
    found = []
    for seed in range(n_seeds):
        detector = BernoulliCusum()
        if first_alarm(detector, lambda i: 0.8 if i < 2000 else 0.6, seed, 5000) >= 2000:
            assert detector.change is not None
            found.append(detector.change)
    assert len(found) >= 0.7 * n_seeds
    return found


def test_the_estimated_change_point_is_within_a_tolerance_of_the_truth() -> None:
    errors = [abs(change.change_point - 2000) for change in changes(30)]
    assert statistics.median(errors) <= 30
    assert sum(e <= 100 for e in errors) >= 0.7 * len(errors)


def test_the_intervals_contain_the_true_rates() -> None:
    found = changes(30)
    before = sum(c.before.low <= 0.8 <= c.before.high for c in found)
    after = sum(c.after.low <= 0.6 <= c.after.high for c in found)
    assert before >= 0.8 * len(found)  # 95 % intervals
    # the after interval comes from the observations that raised the alarm, which were
    # selected for looking low: it covers less often than its nominal 95 %
    assert after >= 0.6 * len(found)


def test_a_rise_is_detected_when_watching_up() -> None:
    at = run_until_alarm_after(
        BernoulliCusum(direction="up"), lambda i: 0.5 if i < 1500 else 0.8, 0, 1500, 3000
    )
    assert at is not None


def test_a_rise_is_ignored_when_watching_down() -> None:
    assert (
        run_until_alarm_after(BernoulliCusum(), lambda i: 0.5 if i < 1500 else 0.8, 0, 0, 4000)
        is None
    )


def test_after_an_alarm_the_level_is_learned_again_before_the_next_alarm() -> None:
    detector = BernoulliCusum(warmup=300)
    at = run_until_alarm_after(detector, lambda i: 0.8 if i < 1000 else 0.3, 0, 1000, 2000)
    assert at is not None
    rng = random.Random(1)
    for _ in range(300):
        detector.update(rng.random() < 0.3)
        assert not detector.drift_detected
    assert detector.n_reference == 300


def test_a_low_volume_segment_never_alarms_before_its_warmup() -> None:
    detector = BernoulliCusum(warmup=1000)
    for _ in range(999):
        detector.update(0.0)
        assert not detector.drift_detected
    assert detector.statistic == -math.inf


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"arl0": 1}, "arl0"),
        ({"arl0": math.inf}, "arl0"),
        ({"drops": ()}, "drops"),
        ({"drops": (0.1, 1.5)}, "drops"),
        ({"warmup": 0}, "warmup"),
        ({"direction": "sideways"}, "direction"),
        ({"offset": math.nan}, "offset"),
        ({"dispersion": 0.5}, "dispersion"),
    ],
)
def test_bad_parameters_are_refused_by_name(kwargs: dict[str, object], name: str) -> None:
    with pytest.raises(ValueError, match=name):
        BernoulliCusum(**kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("x", [-0.1, 1.5, math.nan])
def test_observations_outside_the_unit_interval_are_refused(x: float) -> None:
    with pytest.raises(ValueError, match="x must be in"):
        BernoulliCusum().update(x)


def test_a_rate_with_no_room_for_a_drop_disables_that_chart() -> None:
    detector = BernoulliCusum(drops=(0.1, 0.5), warmup=1000)
    rng = random.Random(0)
    for _ in range(1500):
        detector.update(rng.random() < 0.2)  # 0.2 - 0.5 < 0: the 0.5 chart is off
    assert detector.thresholds[1] == math.inf
    assert math.isfinite(detector.statistic)
    assert not detector.drift_detected


def test_a_small_reference_keeps_the_charts_of_small_drops_off() -> None:
    detector = BernoulliCusum(warmup=200)
    rng = random.Random(0)
    for _ in range(201):
        detector.update(rng.random() < 0.8)
    # a chart for a drop d needs about 4 * 0.16 * b / d**2 observations (b, its threshold
    # before the correction, is about 5 to 7 here): some 1,300 for 5 points, 430 for 10
    assert [math.isinf(h) for h in detector.thresholds] == [True, True, False]
    for _ in range(3000):
        detector.update(rng.random() < 0.8)
    assert not any(math.isinf(h) for h in detector.thresholds)


def test_a_lasting_change_starts_a_new_history() -> None:
    detector = BernoulliCusum(warmup=500)
    at = run_until_alarm_after(detector, lambda i: 0.8 if i < 3000 else 0.6, 0, 3000, 4000)
    assert at is not None
    rng = random.Random(1)
    for _ in range(500):
        detector.update(rng.random() < 0.6)
    assert detector.n_reference == 500


def bursty(icc: float = 0.1, mean_session: float = 3.0) -> Callable[[random.Random], float]:
    """Thumbs in sessions of geometric size sharing a Beta rate of mean 0.8."""
    state = {"left": 0, "rate": 0.8}
    total = 1.0 / icc - 1.0

    def sample(rng: random.Random) -> float:
        if state["left"] <= 0:
            state["left"] = 1
            while rng.random() > 1.0 / mean_session:
                state["left"] += 1
            state["rate"] = rng.betavariate(0.8 * total, 0.2 * total)
        state["left"] -= 1
        return float(rng.random() < state["rate"])

    return sample


def test_bursty_feedback_keeps_the_stated_rate_when_its_dispersion_is_given() -> None:
    # sessions of mean 3 (E[m^2]/E[m] = 5) with correlation 0.1: dispersion 1 + 0.1 * 4
    m = measure_arl0(
        lambda: BernoulliCusum(arl0=2000, warmup=500, dispersion=1.4),
        bursty(),
        n_streams=20,
        horizon=6000,
        seed=6,
    )
    assert m.alarms <= 60 + 3 * math.sqrt(60)


def test_dispersion_widens_the_intervals() -> None:
    rng = random.Random(0)
    plain, wide = BernoulliCusum(warmup=200), BernoulliCusum(warmup=200, dispersion=2.0)
    for i in range(1500):
        x = rng.random() < (0.8 if i < 1000 else 0.2)
        plain.update(x)
        wide.update(x)
    assert plain.change is not None and wide.change is not None
    narrow_width = plain.change.before.high - plain.change.before.low
    assert wide.change.before.high - wide.change.before.low > 1.3 * narrow_width
