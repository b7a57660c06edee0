"""Input drift: calibration under the null, detection of clear shifts, and refusals."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy.stats import binom

from closedloop.analyze.input_drift import (
    DEFAULT_FAR,
    InputDriftParams,
    emerging,
    mmd_test,
    topic_mix_test,
)
from closedloop.embed import load_embedder

ALPHA = 0.05
REPETITIONS = 100
# P(Binomial(100, 0.05) > 12) is about 0.001: a valid test almost never exceeds this.
MAX_REJECTIONS = 12


def _sphere(rng: np.random.Generator, n: int, dim: int, shift: float = 0.0) -> np.ndarray:
    """Gaussian rows, the first coordinate shifted, normalised like embeddings."""
    x = rng.normal(size=(n, dim))
    x[:, 0] += shift
    rows: np.ndarray = x / np.linalg.norm(x, axis=1, keepdims=True)
    return rows


def test_binomial_bound_is_what_the_comment_says() -> None:
    assert binom.sf(MAX_REJECTIONS, REPETITIONS, ALPHA) < 0.002


# -- MMD ----------------------------------------------------------------------------------


def test_mmd_rejection_rate_under_the_null_stays_near_alpha() -> None:
    rng = np.random.default_rng(0)
    rejections = sum(
        mmd_test(
            _sphere(rng, 40, 8), _sphere(rng, 40, 8), permutations=99, seed=i, alpha=ALPHA
        ).drift
        for i in range(REPETITIONS)
    )
    assert rejections <= MAX_REJECTIONS


def test_mmd_p_values_under_the_null_are_not_piled_at_zero() -> None:
    rng = np.random.default_rng(1)
    p = [
        mmd_test(
            _sphere(rng, 30, 4), _sphere(rng, 30, 4), permutations=49, seed=i, alpha=ALPHA
        ).p_value
        for i in range(60)
    ]
    # Uniform-ish: about half above 0.5, and never below the smallest attainable p-value.
    assert 0.3 < np.mean(np.array(p) > 0.5) < 0.7
    assert min(p) >= 1 / 50


def test_mmd_detects_a_mean_shift_of_normalised_gaussians() -> None:
    rng = np.random.default_rng(2)
    result = mmd_test(_sphere(rng, 200, 16), _sphere(rng, 200, 16, shift=1.0), seed=2)
    assert result.drift
    assert result.p_value == pytest.approx(1 / 201)
    assert result.statistic > result.threshold > 0


def test_mmd_detects_lexical_embeddings_of_different_requests() -> None:
    embedder = load_embedder("lexical")
    accounts = ["reset my password", "i cannot log in", "change the email on my account"]
    travel = ["book a flight to paris", "cancel my hotel booking", "is my train on time"]
    suffixes = [f" please ({i})" for i in range(15)]
    reference = embedder.embed([t + s for t in accounts for s in suffixes])
    same = embedder.embed([t + s + " now" for t in accounts for s in suffixes])
    other = embedder.embed([t + s for t in travel for s in suffixes])
    assert mmd_test(reference, other, alpha=0.01).drift
    assert mmd_test(reference, other).p_value < 0.01
    assert mmd_test(reference, same).statistic < mmd_test(reference, other).statistic


def test_mmd_subsamples_each_side_to_max_samples() -> None:
    rng = np.random.default_rng(3)
    result = mmd_test(_sphere(rng, 900, 4), _sphere(rng, 50, 4), max_samples=100)
    assert (result.n_reference, result.n_current) == (100, 50)
    assert result.bandwidth > 0
    assert result.method == "mmd2-rbf-permutation"


def test_mmd_bandwidth_scale_multiplies_the_median_heuristic() -> None:
    rng = np.random.default_rng(11)
    x, y = _sphere(rng, 60, 4), _sphere(rng, 60, 4)
    default = mmd_test(x, y)
    assert mmd_test(x, y, bandwidth_scale=0.5).bandwidth == pytest.approx(default.bandwidth / 2)


def test_mmd_is_reproducible_for_a_seed() -> None:
    rng = np.random.default_rng(4)
    x, y = _sphere(rng, 60, 4), _sphere(rng, 60, 4)
    assert mmd_test(x, y, seed=7) == mmd_test(x, y, seed=7)


@pytest.mark.parametrize(
    ("reference", "current", "kwargs", "argument"),
    [
        (np.zeros((30, 4)), np.zeros((30, 5)), {}, "current"),
        (np.zeros((10, 4)), np.zeros((30, 4)), {}, "reference"),
        (np.zeros((30, 4)), np.zeros((19, 4)), {}, "current"),
        (np.zeros(30), np.zeros((30, 4)), {}, "reference"),
        (np.full((30, 4), np.nan), np.zeros((30, 4)), {}, "reference"),
        (np.zeros((30, 4)), np.zeros((30, 4)), {"permutations": 0}, "permutations"),
        (np.zeros((30, 4)), np.zeros((30, 4)), {"permutations": 50}, "permutations"),
        (np.zeros((30, 4)), np.zeros((30, 4)), {"max_samples": 5}, "max_samples"),
        (np.zeros((30, 4)), np.zeros((30, 4)), {"alpha": 1.5}, "alpha"),
        (np.zeros((30, 4)), np.zeros((30, 4)), {"bandwidth_scale": 0.0}, "bandwidth_scale"),
    ],
)
def test_mmd_refuses_bad_input_naming_the_argument(
    reference: np.ndarray, current: np.ndarray, kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(ValueError, match=argument):
        mmd_test(reference, current, **kwargs)


# -- Topic mix ----------------------------------------------------------------------------


def _draw(rng: np.random.Generator, shares: dict[int, float], n: int) -> list[int | None]:
    topics = list(shares)
    drawn = rng.choice(len(topics), size=n, p=np.array(list(shares.values())))
    return [None if topics[i] == -1 else topics[i] for i in drawn]


MIX = {0: 0.3, 1: 0.25, 2: 0.2, 3: 0.15, -1: 0.1}


def test_topic_mix_with_the_same_proportions_is_not_drift() -> None:
    rng = np.random.default_rng(5)
    result = topic_mix_test(_draw(rng, MIX, 600), _draw(rng, MIX, 600))
    assert not result.drift
    assert result.p_value > 0.01
    assert result.js_distance < 0.1


def test_topic_mix_rejection_rate_under_the_null_stays_near_alpha() -> None:
    rng = np.random.default_rng(6)
    sparse = {i: 1 / 40 for i in range(40)}  # expected counts of about 2: merging needed
    rejections = sum(
        topic_mix_test(_draw(rng, sparse, 80), _draw(rng, sparse, 80), alpha=ALPHA).drift
        for _ in range(REPETITIONS)
    )
    assert rejections <= MAX_REJECTIONS


def test_topic_mix_names_the_topic_that_doubled_first() -> None:
    rng = np.random.default_rng(7)
    doubled = {0: 0.25, 1: 0.2, 2: 0.4, 3: 0.1, -1: 0.05}  # topic 2: 20 % -> 40 %
    result = topic_mix_test(_draw(rng, MIX, 600), _draw(rng, doubled, 600))
    assert result.drift
    first = result.shifts[0]
    assert first.topic == 2
    assert first.before == pytest.approx(0.2, abs=0.05)
    assert first.after == pytest.approx(0.4, abs=0.05)
    assert first.change > 0
    assert "topic 2" in str(result)


def test_topic_mix_counts_no_topic_as_its_own_category() -> None:
    before = [0] * 50 + [1] * 50 + [-1] * 10
    after = [0] * 50 + [1] * 50 + [None] * 60
    result = topic_mix_test(before, after)
    assert result.drift
    assert result.shifts[0].topic is None
    assert result.shifts[0].after == pytest.approx(60 / 160)


def test_topic_mix_merges_tiny_topics_into_other() -> None:
    before = [0] * 100 + [1] * 100 + [2, 3, 4]
    after = [0] * 100 + [1] * 100 + [5, 6]
    result = topic_mix_test(before, after)
    assert set(result.merged) == {2, 3, 4, 5, 6}
    assert result.dof == 2  # topics 0, 1 and "other"
    assert not result.drift
    # The shares still name every topic, merged or not.
    assert {s.topic for s in topic_mix_test(before, after, top=10).shifts} == set(range(7))


def test_topic_mix_with_a_single_topic_has_nothing_to_test() -> None:
    result = topic_mix_test([3] * 30, [3] * 40)
    assert (result.p_value, result.dof, result.drift) == (1.0, 0, False)
    assert result.js_distance == pytest.approx(0.0)


def test_topic_mix_accepts_numpy_ids() -> None:
    ids = np.array([0, 1, -1] * 10, dtype=np.int64)
    assert not topic_mix_test(ids, ids).drift


@pytest.mark.parametrize(
    ("reference", "current", "argument"),
    [
        ([0] * 10, [0] * 30, "reference_topics"),
        ([0] * 30, [0] * 10, "current_topics"),
        ([0] * 29 + ["a"], [0] * 30, "reference_topics"),
        ([0] * 30, [0] * 29 + [0.5], "current_topics"),
        ([0] * 29 + [-2], [0] * 30, "reference_topics"),
    ],
)
def test_topic_mix_refuses_bad_input_naming_the_argument(
    reference: list[Any], current: list[Any], argument: str
) -> None:
    with pytest.raises(ValueError, match=argument):
        topic_mix_test(reference, current)


# -- Emerging -----------------------------------------------------------------------------


def _similarities(rng: np.random.Generator, n: int, far_share: float) -> np.ndarray:
    far = rng.random(n) < far_share
    return np.where(far, rng.uniform(0.0, DEFAULT_FAR, n), rng.uniform(DEFAULT_FAR, 0.95, n))


def test_emerging_flags_a_growing_far_share() -> None:
    rng = np.random.default_rng(8)
    result = emerging(_similarities(rng, 500, 0.03), _similarities(rng, 500, 0.12))
    assert result.emerging
    assert result.after.value > result.before.value
    assert result.after.low > result.before.high
    assert result.far == DEFAULT_FAR


def test_emerging_does_not_flag_a_stable_far_share() -> None:
    rng = np.random.default_rng(9)
    rejections = sum(
        emerging(_similarities(rng, 300, 0.05), _similarities(rng, 300, 0.05), alpha=ALPHA).emerging
        for _ in range(REPETITIONS)
    )
    assert rejections <= MAX_REJECTIONS


def test_emerging_is_one_sided() -> None:
    rng = np.random.default_rng(10)
    result = emerging(_similarities(rng, 500, 0.2), _similarities(rng, 500, 0.02))
    assert not result.emerging
    assert result.p_value > 0.5


def test_emerging_estimates_are_the_far_shares() -> None:
    before = [0.1] * 5 + [0.9] * 95
    after = [0.1] * 30 + [0.9] * 70
    result = emerging(before, after, far=0.5)
    assert (result.before.value, result.after.value) == (0.05, 0.30)
    assert (result.before.n, result.after.n) == (100, 100)
    assert result.emerging


@pytest.mark.parametrize(
    ("reference", "current", "kwargs", "argument"),
    [
        ([0.5] * 10, [0.5] * 30, {}, "reference_similarity"),
        ([0.5] * 30, [0.5] * 29 + [1.5], {}, "current_similarity"),
        ([0.5] * 30, [0.5] * 29 + [math.nan], {}, "current_similarity"),
        ([[0.5] * 30], [0.5] * 30, {}, "reference_similarity"),
        ([0.5] * 30, [0.5] * 30, {"far": 2.0}, "far"),
        ([0.5] * 30, [0.5] * 30, {"alpha": 0.0}, "alpha"),
    ],
)
def test_emerging_refuses_bad_input_naming_the_argument(
    reference: list[Any], current: list[Any], kwargs: dict[str, Any], argument: str
) -> None:
    with pytest.raises(ValueError, match=argument):
        emerging(reference, current, **kwargs)


# -- Params -------------------------------------------------------------------------------


def test_params_defaults_are_valid_and_frozen() -> None:
    params = InputDriftParams()
    assert (params.alpha, params.far) == (0.01, DEFAULT_FAR)
    with pytest.raises(AttributeError):
        params.alpha = 0.05  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"permutations": 0}, "permutations"),
        ({"permutations": 98}, "permutations"),
        ({"max_samples": 3}, "max_samples"),
        ({"far": -1.0}, "far"),
        ({"reference_window": 5}, "reference_window"),
        ({"current_window": 2.5}, "current_window"),
    ],
)
def test_params_refuse_bad_values_naming_them(kwargs: dict[str, Any], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        InputDriftParams(**kwargs)
