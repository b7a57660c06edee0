"""Intervals and the change record."""

from __future__ import annotations

import math
import random

from closedloop.analyze.drift.base import Change, Estimate, mean_interval, wilson_interval


def test_the_wilson_interval_covers_the_true_rate_about_95_percent_of_the_time() -> None:
    rng = random.Random(0)
    runs, covered = 2000, 0
    for _ in range(runs):
        k = sum(rng.random() < 0.8 for _ in range(100))
        low, high = wilson_interval(k, 100)
        covered += low <= 0.8 <= high
    # binomial(2000, 0.95): sd about 10, so 1,860 is 9 sd below and 1,940 far above
    assert 1860 <= covered <= 1940


def test_the_wilson_interval_stays_in_the_unit_interval_at_the_edges() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 50)
    assert low < 1e-12 and 0 < high < 0.1
    low, high = wilson_interval(50, 50)
    assert 0.9 < low < 1 and high == 1.0


def test_the_mean_interval_is_unbounded_below_two_observations() -> None:
    assert mean_interval(3.0, 9.0, 1) == (-math.inf, math.inf)
    low, high = mean_interval(10.0, 30.0, 4)
    assert low < 2.5 < high


def test_a_change_counts_its_delay_from_the_change_point_inclusive() -> None:
    before, after = Estimate.of_rate(80, 100), Estimate.of_rate(6, 10)
    change = Change(change_point=100, detected_at=109, before=before, after=after)
    assert change.delay == 10
    assert str(change) == (
        "0.8 [0.711, 0.867] (n=100) -> 0.6 [0.313, 0.832] (n=10) since observation 100 "
        "(alarm at 109)"
    )
