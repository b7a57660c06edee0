"""Input drift: has the distribution of what users ask changed between two windows?

Three batch tests compare a *reference* window of inputs with a *current* one. Each returns
a frozen result that says whether the change is significant at level ``alpha`` and what it
is, so an alarm can name it:

- :func:`mmd_test`: a kernel two-sample test on the inputs' embeddings (any change of
  distribution, topic or phrasing);
- :func:`topic_mix_test`: a chi-square test of the topic shares, with the topics whose share
  moved most;
- :func:`emerging`: growth of the share of inputs far from every known topic (new intents).

Every test is a test of one pair of windows; run on many windows (or segments) the false
alarms add up, so share ``alpha`` between them as
:class:`~closedloop.analyze.drift.SegmentMonitor` shares its budget. The windows must be
samples of their periods: inputs that repeat (retries, one user's burst) are correlated and
make every test too eager. A significant result says the two distributions differ, not that
they differ much: with large windows a small, harmless change of mix is significant, so read
the effect (the shares, ``js_distance``) before acting.

Examples
--------
>>> rng = np.random.default_rng(0)
>>> reference = rng.normal(size=(200, 8))
>>> print(mmd_test(reference, rng.normal(size=(200, 8))).drift)
False
>>> print(mmd_test(reference, rng.normal(0.5, 1.0, size=(200, 8))).drift)
True
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.spatial.distance import jensenshannon
from scipy.stats import chi2_contingency, fisher_exact

from closedloop.analyze.drift.base import Estimate

__all__ = [
    "DEFAULT_FAR",
    "EmergingResult",
    "InputDriftParams",
    "MIN_SAMPLES",
    "TopicMixResult",
    "TopicShift",
    "TwoSampleResult",
    "emerging",
    "mmd_test",
    "topic_mix_test",
]

MIN_SAMPLES = 20
"""Fewest inputs per window any test accepts."""

DEFAULT_FAR = 0.4
"""Cosine similarity to the nearest known centroid below which an input is "far".

Chosen for all-MiniLM-L6-v2: inputs of one intent are 0.5-0.8 similar to one another and so
about 0.7-0.9 to their (normalised) centroid. On CLINC150 (``bench/input_drift_eval.py``),
0.4 lies below the 5th percentile of known-intent inputs (2.6 % fall under it) while a third
of the inputs of held-out, mostly same-domain intents do; it maximises the separation
``(far share new - far share known) / sd(known)`` over 0.30-0.60 in steps of 0.05.
Recalibrate it for another embedder: the lexical one's similarities are lower, and 0.4 puts
27 % of its known-intent inputs among the far ones (the test stays valid, with less power).
"""

FloatMatrix = npt.NDArray[np.float64]
Topic = int | None


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")


def _check_count(name: str, value: int, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an integer of at least {least}, got {value!r}")


def _check_resolution(permutations: int, alpha: float) -> None:
    if 1.0 / (1 + permutations) > alpha:
        raise ValueError(
            f"permutations must be at least {math.ceil(1 / alpha) - 1} for alpha={alpha:g} "
            f"(the smallest p-value is 1 / (1 + permutations)), got {permutations}"
        )


@dataclass(frozen=True, kw_only=True)
class InputDriftParams:
    """The configuration of input-drift detection (a job takes it from settings).

    ``alpha`` is the false-alarm probability of one test of one pair of windows (default
    0.01). ``permutations`` and ``max_samples`` size :func:`mmd_test` (its cost grows as
    ``permutations * (2 * max_samples) ** 2``). ``far`` is the similarity below which an input
    counts as far from every known topic (:data:`DEFAULT_FAR`, for all-MiniLM-L6-v2).
    ``reference_window`` and ``current_window`` are the most inputs drawn into each window.
    """

    alpha: float = 0.01
    permutations: int = 200
    max_samples: int = 500
    far: float = DEFAULT_FAR
    reference_window: int = 2000
    current_window: int = 500

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        _check_count("permutations", self.permutations, 1)
        _check_resolution(self.permutations, self.alpha)
        _check_count("max_samples", self.max_samples, MIN_SAMPLES)
        _check_count("reference_window", self.reference_window, MIN_SAMPLES)
        _check_count("current_window", self.current_window, MIN_SAMPLES)
        if not -1.0 < self.far <= 1.0:
            raise ValueError(f"far must be a cosine similarity in (-1, 1], got {self.far!r}")


# -- MMD ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TwoSampleResult:
    """A two-sample test of embeddings.

    ``statistic`` is the unbiased MMD^2 (it can be slightly negative when nothing changed),
    ``threshold`` the (1 - alpha) quantile of its permutation distribution, ``p_value`` the
    permutation p-value and ``drift`` whether ``p_value <= alpha``. ``n_reference`` and
    ``n_current`` count the rows tested (after subsampling); ``bandwidth`` is the RBF kernel's
    length scale.
    """

    statistic: float
    p_value: float
    threshold: float
    drift: bool
    n_reference: int
    n_current: int
    method: str
    bandwidth: float

    def __str__(self) -> str:
        verdict = "drift" if self.drift else "no drift"
        return (
            f"{verdict}: {self.method} {self.statistic:.4g} (threshold {self.threshold:.4g}, "
            f"p={self.p_value:.3g}, n={self.n_reference}/{self.n_current})"
        )


def _matrix(x: Any, name: str) -> FloatMatrix:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (rows, dim), got shape {arr.shape}")
    if arr.shape[0] < MIN_SAMPLES:
        raise ValueError(f"{name} needs at least {MIN_SAMPLES} rows, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _mmd2(indicator: FloatMatrix, kernel: FloatMatrix, n: int, m: int) -> FloatMatrix:
    """Unbiased MMD^2 of every split in ``indicator`` (one row per split, 1 = reference)."""
    row_sums = kernel.sum(axis=1)
    diagonal = np.diag(kernel)
    k_a = indicator @ kernel
    s_xx = np.einsum("pi,pi->p", k_a, indicator)
    a_r = indicator @ row_sums
    s_xy = a_r - s_xx
    s_yy = row_sums.sum() - 2.0 * a_r + s_xx
    d_x = indicator @ diagonal
    d_y = diagonal.sum() - d_x
    result: FloatMatrix = (
        (s_xx - d_x) / (n * (n - 1)) + (s_yy - d_y) / (m * (m - 1)) - 2.0 * s_xy / (n * m)
    )
    return result


def mmd_test(
    reference: npt.ArrayLike,
    current: npt.ArrayLike,
    *,
    permutations: int = 200,
    max_samples: int = 500,
    seed: int = 0,
    alpha: float = 0.01,
    bandwidth_scale: float = 1.0,
) -> TwoSampleResult:
    """Kernel two-sample test (MMD) of two windows of embeddings.

    Each side is subsampled (seeded, without replacement) to at most ``max_samples`` rows.
    The kernel is the Gaussian (RBF) ``exp(-|x - y|^2 / (2 h^2))`` whose length scale ``h`` is
    the median distance between distinct rows of the pooled sample (the median heuristic). The
    statistic is the unbiased MMD^2 (Gretton et al., 2012, eq. 3); its null distribution
    comes from ``permutations`` random relabellings of the pooled rows, all computed from one
    kernel matrix, and the p-value is ``(1 + #{permuted >= observed}) / (1 + permutations)``,
    valid at any sample size. Cost: ``O(permutations * (n + m)^2)``.

    Parameters
    ----------
    reference, current
        ``(n, dim)`` and ``(m, dim)`` embeddings, at least :data:`MIN_SAMPLES` rows each.
    permutations
        Relabellings of the null distribution; the smallest p-value is ``1 / (1 + permutations)``
        (at 200 and ``alpha = 0.01`` a drift needs at most one permuted statistic as large), so
        fewer than ``1 / alpha - 1`` are refused: the test could never fire.
    max_samples
        Most rows kept per side.
    seed
        Seeds subsampling and permutations.
    alpha
        Level of the test.
    bandwidth_scale
        Multiplies the median-heuristic length scale. The heuristic suits shifts of the whole
        cloud; a new cluster that is a small share of the window is seen better with a
        shorter scale (on CLINC150 with all-MiniLM-L6-v2, ``0.35`` about tripled the power at
        a 20 % share of new intents, ``bench/input_drift_eval.py``).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> shifted = rng.normal(size=(300, 16)); shifted[:, 0] += 0.6
    >>> result = mmd_test(rng.normal(size=(300, 16)), shifted, seed=1)
    >>> result.drift, result.p_value, result.statistic > result.threshold
    (True, 0.004975124378109453, True)

    References
    ----------
    A. Gretton, K. Borgwardt, M. Rasch, B. Schölkopf, A. Smola. A kernel two-sample test.
    JMLR 13 (2012) 723-773.
    """
    x = _matrix(reference, "reference")
    y = _matrix(current, "current")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"current has dimension {y.shape[1]} but reference has {x.shape[1]}: "
            "embeddings of different models cannot be compared"
        )
    _check_count("permutations", permutations, 1)
    _check_count("max_samples", max_samples, MIN_SAMPLES)
    _check_alpha(alpha)
    _check_resolution(permutations, alpha)
    if not (math.isfinite(bandwidth_scale) and bandwidth_scale > 0):
        raise ValueError(f"bandwidth_scale must be positive, got {bandwidth_scale!r}")

    rng = np.random.default_rng(seed)
    if x.shape[0] > max_samples:
        x = x[rng.choice(x.shape[0], max_samples, replace=False)]
    if y.shape[0] > max_samples:
        y = y[rng.choice(y.shape[0], max_samples, replace=False)]
    n, m = x.shape[0], y.shape[0]
    pooled = np.vstack([x, y])
    norms = np.einsum("ij,ij->i", pooled, pooled)
    sq_dist = np.maximum(norms[:, None] + norms[None, :] - 2.0 * pooled @ pooled.T, 0.0)
    np.fill_diagonal(sq_dist, 0.0)
    off_diagonal = sq_dist[np.triu_indices(n + m, k=1)]
    median = float(np.median(off_diagonal))
    if median <= 0.0:  # mostly duplicates: fall back to the mean, then to 1
        positive = off_diagonal[off_diagonal > 0.0]
        median = float(positive.mean()) if positive.size else 1.0
    length_sq = median * bandwidth_scale**2
    kernel = np.exp(-sq_dist / (2.0 * length_sq))

    base = np.zeros(n + m)
    base[:n] = 1.0
    indicator = np.vstack([base, rng.permuted(np.tile(base, (permutations, 1)), axis=1)])
    stats = _mmd2(indicator, kernel, n, m)
    observed, null = float(stats[0]), stats[1:]
    tolerance = 1e-12 * max(1.0, abs(observed))
    exceed = int(np.count_nonzero(null >= observed - tolerance))
    p_value = (1 + exceed) / (1 + permutations)
    return TwoSampleResult(
        statistic=observed,
        p_value=p_value,
        threshold=float(np.quantile(null, 1.0 - alpha)),
        drift=p_value <= alpha,
        n_reference=n,
        n_current=m,
        method="mmd2-rbf-permutation",
        bandwidth=math.sqrt(length_sq),
    )


# -- Topic mix ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class TopicShift:
    """The share of one topic (``None``: no topic) in the reference and current windows."""

    topic: Topic
    before: float
    after: float

    @property
    def change(self) -> float:
        """``after - before``, in share points."""
        return self.after - self.before

    def __str__(self) -> str:
        name = "no topic" if self.topic is None else f"topic {self.topic}"
        return f"{name}: {self.before:.1%} -> {self.after:.1%}"


@dataclass(frozen=True, kw_only=True)
class TopicMixResult:
    """A chi-square test of homogeneity of the topic shares of two windows.

    ``statistic``, ``dof`` and ``p_value`` are the Pearson chi-square on the table after
    merging (``merged``: the topics pooled into one "other" category); ``drift`` is
    ``p_value <= alpha``. ``js_distance`` is the Jensen-Shannon distance (base 2, in [0, 1])
    between the unmerged shares; ``shifts`` the topics whose share moved most, largest first.
    """

    statistic: float
    dof: int
    p_value: float
    drift: bool
    js_distance: float
    shifts: tuple[TopicShift, ...]
    merged: tuple[Topic, ...]
    n_reference: int
    n_current: int

    def __str__(self) -> str:
        verdict = "drift" if self.drift else "no drift"
        moved = "; ".join(str(s) for s in self.shifts[:3])
        return (
            f"{verdict}: chi2={self.statistic:.3g} (dof {self.dof}, p={self.p_value:.3g}), "
            f"JS={self.js_distance:.3f}; {moved}"
        )


def _topics(values: Iterable[Any], name: str) -> Counter[Topic]:
    counts: Counter[Topic] = Counter()
    for value in values:
        if value is None:
            counts[None] += 1
            continue
        try:
            topic = operator.index(value)
        except TypeError:
            raise ValueError(f"{name} must hold integer topic ids or None, got {value!r}") from None
        if topic < -1:
            raise ValueError(f"{name} holds {topic}: topic ids are >= 0, or -1 for no topic")
        counts[None if topic == -1 else topic] += 1
    total = sum(counts.values())
    if total < MIN_SAMPLES:
        raise ValueError(f"{name} needs at least {MIN_SAMPLES} inputs, got {total}")
    return counts


def _order(topic: Topic) -> tuple[int, int]:
    return (0, -1) if topic is None else (1, topic)


def _cochran_ok(columns: npt.NDArray[np.int64], n: int, m: int, min_expected: float) -> bool:
    """Whether no expected count is below 1 and at most 20 % of them (or one column's two,
    whichever is more) are below ``min_expected``."""
    expected = np.outer([n, m], columns) / (n + m)
    small = int(np.count_nonzero(expected < min_expected))
    return bool(expected.min() >= 1.0 and small <= max(2, 0.2 * expected.size))


def topic_mix_test(
    reference_topics: Iterable[Any],
    current_topics: Iterable[Any],
    *,
    alpha: float = 0.01,
    min_expected: float = 5.0,
    top: int = 5,
) -> TopicMixResult:
    """Chi-square test that the topic shares of two windows are the same.

    Each input carries a topic id (an integer >= 0), or -1 / ``None`` for no topic, which is
    a category of its own (its growth is often the first sign of a new intent). The test is
    Pearson's chi-square of homogeneity on the 2 x k table of counts (no continuity
    correction).

    **Merging rule.** The chi-square approximation needs large enough expected counts, so
    the rarest topics (by pooled count, ties by id) are merged into one "other" category,
    fewest first, until Cochran's rule holds: no expected count below 1 and at most 20 % of
    them below ``min_expected`` (in tables of fewer than ten cells, at most one column's two:
    a small "other" next to large topics is allowed rather than merged with one). The rule
    looks only at pooled counts and window sizes, which are fixed under the null, so merging
    keeps the test's level. When fewer than two categories are left there is nothing to
    test: ``p_value`` is 1 and ``dof`` 0.

    ``js_distance`` and ``shifts`` (the ``top`` topics whose share changed most) use the
    unmerged topics, so an alarm names the topic even if it was merged for the test.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> before = rng.choice([0, 1, 2, -1], size=400, p=[0.4, 0.3, 0.2, 0.1])
    >>> after = rng.choice([0, 1, 2, -1], size=400, p=[0.3, 0.2, 0.2, 0.3])
    >>> result = topic_mix_test(before, after)
    >>> result.drift, [str(shift) for shift in result.shifts[:2]]
    (True, ['no topic: 12.5% -> 29.8%', 'topic 1: 28.5% -> 19.8%'])
    """
    _check_alpha(alpha)
    _check_count("top", top, 1)
    if not min_expected > 0:
        raise ValueError(f"min_expected must be positive, got {min_expected!r}")
    before = _topics(reference_topics, "reference_topics")
    after = _topics(current_topics, "current_topics")
    n, m = sum(before.values()), sum(after.values())
    topics = sorted(set(before) | set(after), key=_order)
    counts = np.array([[before[t] for t in topics], [after[t] for t in topics]], dtype=np.int64)

    shares = counts / np.array([[n], [m]])
    change = shares[1] - shares[0]
    ranked = sorted(range(len(topics)), key=lambda i: (-abs(change[i]), _order(topics[i])))
    shifts = tuple(
        TopicShift(topic=topics[i], before=float(shares[0, i]), after=float(shares[1, i]))
        for i in ranked[:top]
    )
    js = float(jensenshannon(shares[0], shares[1], base=2))

    rarest = np.argsort(counts.sum(axis=0), kind="stable")  # ties: in topic order
    ordered = counts[:, rarest]
    merged_counts = np.cumsum(ordered, axis=1)
    table, k = ordered, 0
    while True:  # k topics merged; one topic alone in "other" would be no merge at all
        table = ordered if k == 0 else np.column_stack([merged_counts[:, k - 1], ordered[:, k:]])
        if table.shape[1] < 2 or _cochran_ok(table.sum(axis=0), n, m, min_expected):
            break
        k = 2 if k == 0 else k + 1
    merged = rarest[:k].tolist()
    if table.shape[1] < 2:
        statistic, p_value, dof = 0.0, 1.0, 0
    else:
        test = chi2_contingency(table, correction=False)
        statistic, p_value, dof = float(test.statistic), float(test.pvalue), int(test.dof)
    return TopicMixResult(
        statistic=statistic,
        dof=dof,
        p_value=p_value,
        drift=p_value <= alpha,
        js_distance=js,
        shifts=shifts,
        merged=tuple(topics[i] for i in sorted(merged, key=lambda i: _order(topics[i]))),
        n_reference=n,
        n_current=m,
    )


# -- Emerging topics ------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EmergingResult:
    """The share of far inputs (similarity below ``far``) before and after, with Wilson 95 %
    intervals; ``p_value`` of Fisher's one-sided exact test that it grew; ``emerging`` is
    ``p_value <= alpha``."""

    before: Estimate
    after: Estimate
    p_value: float
    emerging: bool
    far: float

    def __str__(self) -> str:
        verdict = "emerging" if self.emerging else "no emerging topic"
        return (
            f"{verdict}: share below {self.far:g} {self.before} -> {self.after} "
            f"(p={self.p_value:.3g})"
        )


def _similarities(x: Any, name: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one similarity per input), got shape {arr.shape}")
    if arr.size < MIN_SAMPLES:
        raise ValueError(f"{name} needs at least {MIN_SAMPLES} inputs, got {arr.size}")
    if not np.isfinite(arr).all() or np.abs(arr).max() > 1.0 + 1e-4:
        raise ValueError(f"{name} must hold cosine similarities in [-1, 1]")
    return arr


def emerging(
    reference_similarity: Sequence[float] | npt.ArrayLike,
    current_similarity: Sequence[float] | npt.ArrayLike,
    *,
    far: float = DEFAULT_FAR,
    alpha: float = 0.01,
) -> EmergingResult:
    """Whether more inputs are far from every known topic now than in the reference.

    Each input's similarity is its cosine similarity to the nearest known cluster centroid.
    The centroids must not be fitted on the reference window itself (or the reference
    inputs look closer than they are, and the test leans toward alarms): fit them on earlier
    data, or compute both windows' similarities out of sample. The default ``far`` is
    :data:`DEFAULT_FAR`, chosen for all-MiniLM-L6-v2.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> before = rng.uniform(0.35, 0.9, size=500)
    >>> after = np.concatenate([rng.uniform(0.35, 0.9, size=400), rng.uniform(0.1, 0.4, 100)])
    >>> result = emerging(before, after)
    >>> result.emerging, str(result.before), str(result.after)
    (True, '0.088 [0.0662, 0.116] (n=500)', '0.264 [0.227, 0.304] (n=500)')
    >>> emerging(before, rng.uniform(0.35, 0.9, size=500)).emerging
    False
    """
    ref = _similarities(reference_similarity, "reference_similarity")
    cur = _similarities(current_similarity, "current_similarity")
    if not -1.0 < far <= 1.0:
        raise ValueError(f"far must be a cosine similarity in (-1, 1], got {far!r}")
    _check_alpha(alpha)
    far_ref, far_cur = int(np.count_nonzero(ref < far)), int(np.count_nonzero(cur < far))
    table = [[far_cur, cur.size - far_cur], [far_ref, ref.size - far_ref]]
    p_value = float(fisher_exact(table, alternative="greater").pvalue)
    return EmergingResult(
        before=Estimate.of_rate(far_ref, int(ref.size)),
        after=Estimate.of_rate(far_cur, int(cur.size)),
        p_value=p_value,
        emerging=p_value <= alpha,
        far=far,
    )
