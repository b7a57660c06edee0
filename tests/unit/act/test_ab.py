"""The always-valid sequential A/B test on simulated quality streams.

Each simulation draws every run at once (runs x observations), forms running sums at every
look (a batch of ``BATCH`` observations per arm) and computes the whole p-value path with
:func:`always_valid_p_values`, so hundreds of continuously monitored runs take well under a
second.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from closedloop.act.ab import ABParams, SequentialTest, always_valid_p_values
from closedloop.errors import ConfigError

ALPHA = 0.05
MIN_SAMPLES = 100
BATCH = 10
MAX_PER_ARM = 3000


def first_decisions(
    control: NDArray[np.float64], candidate: NDArray[np.float64]
) -> tuple[NDArray[np.int_], NDArray[np.float64]]:
    """Per run: +1 promoted, -1 rolled back, 0 still running at the end; and the per-arm
    sample size at the decision. Looks after every batch (continuous monitoring)."""
    looks = np.arange(BATCH, control.shape[1] + 1, BATCH)
    sums = []
    for arm in (control, candidate):
        s = np.cumsum(arm, axis=1)[:, looks - 1]
        ss = np.cumsum(arm * arm, axis=1)[:, looks - 1]
        sums.append((np.broadcast_to(looks, s.shape), s, ss))
    (nc, sc, ssc), (nt, st, sst) = sums
    p = always_valid_p_values(nc, sc, ssc, nt, st, sst, tau=0.1, min_samples=MIN_SAMPLES)
    hit = p <= ALPHA
    decided = hit.any(axis=1)
    at = np.where(decided, hit.argmax(axis=1), len(looks) - 1)
    rows = np.arange(len(at))
    diff = st[rows, at] / looks[at] - sc[rows, at] / looks[at]
    outcome = np.where(decided, np.sign(diff), 0).astype(int)
    return outcome, looks[at].astype(float)


def bernoulli(rng: np.random.Generator, p: float, runs: int) -> NDArray[np.float64]:
    return rng.binomial(1, p, size=(runs, MAX_PER_ARM)).astype(float)


def test_a_better_candidate_is_promoted_in_nearly_every_run_within_a_bounded_sample() -> None:
    rng = np.random.default_rng(2024)
    outcome, n = first_decisions(bernoulli(rng, 0.6, 200), bernoulli(rng, 0.7, 200))
    assert (outcome == 1).mean() >= 0.98, "a 0.1 improvement is found within 3000 per arm"
    assert (outcome == -1).sum() == 0, "never rolled back"
    assert np.median(n[outcome == 1]) < 1000


def test_a_worse_candidate_is_rolled_back() -> None:
    rng = np.random.default_rng(7)
    outcome, _ = first_decisions(bernoulli(rng, 0.7, 200), bernoulli(rng, 0.6, 200))
    assert (outcome == -1).mean() >= 0.98
    assert (outcome == 1).sum() == 0


def test_beta_distributed_qualities_are_decided_too() -> None:
    rng = np.random.default_rng(11)
    control = rng.beta(6, 4, size=(200, MAX_PER_ARM))  # mean 0.6
    candidate = rng.beta(7, 3, size=(200, MAX_PER_ARM))  # mean 0.7
    outcome, _ = first_decisions(control, candidate)
    assert (outcome == 1).mean() >= 0.98


def binomial_bound(alpha: float, runs: int) -> float:
    """alpha plus three binomial standard errors: a true rate of alpha exceeds it with
    probability about 0.1 %."""
    return alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)


def test_with_no_difference_continuous_monitoring_decides_at_most_alpha_of_the_time() -> None:
    runs = 500
    rng = np.random.default_rng(99)
    outcome, _ = first_decisions(bernoulli(rng, 0.6, runs), bernoulli(rng, 0.6, runs))
    # 291 looks per run; the always-valid p-value keeps the error over all of them at alpha
    assert (outcome == 1).mean() <= binomial_bound(ALPHA, runs), "false promotions"
    assert (outcome != 0).mean() <= binomial_bound(ALPHA, runs), "both decisions together"


def test_a_naive_t_test_repeated_after_every_batch_would_fail_that_bound() -> None:
    runs = 500
    rng = np.random.default_rng(99)
    control, candidate = bernoulli(rng, 0.6, runs), bernoulli(rng, 0.6, runs)
    looks = np.arange(MIN_SAMPLES, MAX_PER_ARM + 1, BATCH)
    mc = np.cumsum(control, axis=1)[:, looks - 1] / looks
    mt = np.cumsum(candidate, axis=1)[:, looks - 1] / looks
    var = mc * (1 - mc) / looks + mt * (1 - mt) / looks
    z = (mt - mc) / np.sqrt(np.maximum(var, 1e-12))
    ever = (np.abs(z) > 1.96).any(axis=1).mean()
    assert ever > 2 * binomial_bound(ALPHA, runs), f"peeking inflates 0.05 to {ever:.2f}"


def test_no_decision_before_the_minimum_samples_per_arm() -> None:
    test = SequentialTest(ABParams(alpha=ALPHA, min_samples=50))
    test.update(np.zeros(49), np.ones(1000))  # overwhelming, but the control arm is short
    assert test.decision() == "continue" and test.p_value == 1.0
    test.update([0.0], [])
    assert test.decision() == "promote"


def test_the_p_value_never_rises_and_resumes_from_a_stored_value() -> None:
    rng = np.random.default_rng(3)
    test = SequentialTest(ABParams(min_samples=20))
    path = []
    for _ in range(50):
        test.update(rng.uniform(0, 1, 10), rng.uniform(0, 1, 10))
        path.append(test.p_value)
    assert all(b <= a for a, b in zip(path, path[1:], strict=False))
    resumed = SequentialTest(ABParams(min_samples=20), p_value=0.01)
    resumed.update(rng.uniform(0, 1, 30), rng.uniform(0, 1, 30))
    assert resumed.p_value == 0.01 and resumed.decision() in ("promote", "rollback")


def test_max_samples_ends_a_test_as_inconclusive() -> None:
    test = SequentialTest(ABParams(min_samples=10, max_samples=40))
    test.update([0.5, 0.6] * 20, [0.6, 0.5] * 20)
    assert test.decision() == "inconclusive"
    evidence = test.evidence()
    assert evidence["arms"]["control"]["n"] == 40 and evidence["decision"] == "inconclusive"
    low, high = evidence["difference"]["low"], evidence["difference"]["high"]
    assert low < 0 < high, "the confidence sequence covers no difference"


def test_qualities_outside_zero_one_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        SequentialTest().update([1.5], [0.5])


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"alpha": 1.0}, "params.alpha"),
        ({"tau": 0}, "params.tau"),
        ({"min_samples": 1}, "params.min_samples"),
    ],
)
def test_bad_parameters_name_their_field(params: dict[str, float], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        ABParams(**params)  # type: ignore[arg-type]
    assert info.value.field == field
