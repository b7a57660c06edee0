"""The always-valid sequential test of prompt A/B tests (:mod:`closedloop.act.ab` runs it).

The test is the **mixture sequential probability ratio test** (mSPRT) of Johari, Pekelis and
Walsh on the difference of mean quality, candidate minus control, ``theta``. With ``d`` the
observed difference and ``V = var_c / n_c + var_t / n_t`` its variance (plug-in sample
variances), a normal mixture ``theta ~ N(0, tau^2)`` over the alternatives gives the
likelihood ratio against ``theta = 0``

    Lambda_n = sqrt(V / (V + tau^2)) * exp(tau^2 d^2 / (2 V (V + tau^2)))

Under ``theta = 0``, ``Lambda_n`` is a nonnegative martingale with mean 1 (in the normal limit),
so by Ville's inequality ``P(sup_n Lambda_n >= 1/alpha) <= alpha``: the p-value
``p_n = min(1, min_{m <= n} 1 / Lambda_m)`` is *always valid* - it may be looked at after every
observation, and the test stopped at any look, without inflating the error rate, unlike a
t-test repeated on growing data. Rejecting when ``p_n <= alpha`` promotes the candidate when
``d > 0`` and rolls it back when ``d < 0``; the two decisions together err with probability at
most ``alpha`` when both versions are equally good. Inverting the test gives an always-valid
confidence sequence for ``theta``.

Guard rails: no decision before ``min_samples`` rated interactions per arm (starting the looks
later only lowers the error), the traffic share never above ``Settings.ab_max_share``, and an
optional ``max_samples`` per arm or ``max_days`` after which the test stops as inconclusive and
production stays as it was.

References
----------
Johari, R., Koomen, P., Pekelis, L. and Walsh, D. (2022). Always valid inference: continuous
monitoring of A/B tests. *Operations Research* 70(3), 1806-1821 (arXiv:1512.04922, 2015/2017).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from closedloop.errors import ConfigError

__all__ = [
    "ABParams",
    "Decision",
    "SequentialTest",
    "always_valid_p_values",
    "confidence_radius",
]

Decision = Literal["continue", "promote", "rollback", "inconclusive"]

_VAR_FLOOR = 1e-6  # a variance of exactly 0 (every rating equal) would divide by zero


@dataclass(frozen=True, kw_only=True)
class ABParams:
    """Parameters of one test (stored with it).

    Parameters
    ----------
    alpha
        Overall error rate of the two decisions (``Settings.ab_alpha``).
    tau
        Standard deviation of the mixture over effects, in quality units (default 0.1: tuned
        to differences of about 0.1; smaller finds small effects sooner and large ones later).
    min_samples
        Rated interactions each arm needs before a decision (``Settings.ab_min_samples``).
    max_samples
        Per arm: stop as inconclusive when both arms have this many (``None``: never).
    max_days
        Stop as inconclusive this many days after the start (``None``: never).
    """

    alpha: float = 0.05
    tau: float = 0.1
    min_samples: int = 100
    max_samples: int | None = None
    max_days: float | None = None

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError("alpha must lie strictly between 0 and 1", field="params.alpha")
        if self.tau <= 0:
            raise ConfigError("tau must be positive", field="params.tau")
        if self.min_samples < 2:
            raise ConfigError("min_samples must be at least 2", field="params.min_samples")
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise ConfigError("max_samples must be >= min_samples", field="params.max_samples")
        if self.max_days is not None and self.max_days <= 0:
            raise ConfigError("max_days must be positive", field="params.max_days")


def _variance(n: NDArray[Any], s: NDArray[Any], ss: NDArray[Any]) -> NDArray[Any]:
    # arms with fewer than two observations get the floor; the min_samples mask ignores them
    var = (ss - s * s / np.maximum(n, 1)) / np.maximum(n - 1, 1)
    out: NDArray[Any] = np.maximum(var, _VAR_FLOOR)
    return out


def _stats(
    n_c: ArrayLike, s_c: ArrayLike, ss_c: ArrayLike, n_t: ArrayLike, s_t: ArrayLike,
    ss_t: ArrayLike,
) -> tuple[NDArray[Any], NDArray[Any], NDArray[Any], NDArray[Any]]:  # fmt: skip
    nc, nt = np.asarray(n_c, dtype=float), np.asarray(n_t, dtype=float)
    sc, st = np.asarray(s_c, dtype=float), np.asarray(s_t, dtype=float)
    nc1, nt1 = np.maximum(nc, 1), np.maximum(nt, 1)  # an empty arm: mean 0, no division by 0
    diff = st / nt1 - sc / nc1
    v = _variance(nc, sc, np.asarray(ss_c, float)) / nc1
    v = v + _variance(nt, st, np.asarray(ss_t, float)) / nt1
    return nc, nt, diff, v


def always_valid_p_values(
    n_c: ArrayLike,
    sum_c: ArrayLike,
    sumsq_c: ArrayLike,
    n_t: ArrayLike,
    sum_t: ArrayLike,
    sumsq_t: ArrayLike,
    *,
    tau: float = 0.1,
    min_samples: int = 2,
) -> NDArray[np.float64]:
    """The mSPRT's always-valid p-value at each look (the last axis), from running counts,
    sums and sums of squares of the control (``_c``) and candidate (``_t``) arms.

    Looks before both arms have ``min_samples`` get 1. Vectorised over leading axes (runs).

    >>> n = np.array([100, 400, 1000])
    >>> p = always_valid_p_values(n, 0.6 * n, 0.6 * n, n, 0.7 * n, 0.7 * n, tau=0.1)
    >>> bool(p[0] > p[1] > p[2]), bool(p[2] < 0.05)
    (True, True)
    """
    nc, nt, diff, v = _stats(n_c, sum_c, sumsq_c, n_t, sum_t, sumsq_t)
    t2 = tau * tau
    log_lr = 0.5 * np.log(v / (v + t2)) + t2 * diff * diff / (2.0 * v * (v + t2))
    log_lr = np.where((nc >= min_samples) & (nt >= min_samples), log_lr, 0.0)
    p = np.minimum(1.0, np.exp(-np.maximum(log_lr, 0.0)))
    return np.asarray(np.minimum.accumulate(p, axis=-1) if p.ndim else p, dtype=np.float64)


def confidence_radius(variance: float, *, alpha: float, tau: float) -> float:
    """Half-width of the always-valid (1 - alpha) confidence sequence for the difference:
    the effects the mSPRT would not reject, ``|d - theta| <= radius``."""
    v, t2 = max(variance, _VAR_FLOOR), tau * tau
    return math.sqrt(v * (v + t2) / t2 * (2 * math.log(1 / alpha) + math.log((v + t2) / v)))


class SequentialTest:
    """The mSPRT over running sums of control and candidate qualities in [0, 1].

    ``update`` adds observations; ``decision`` says what to do now. ``p_value`` carries the
    running minimum from earlier looks (pass it back in to resume).

    >>> rng = np.random.default_rng(7)
    >>> test = SequentialTest(ABParams(alpha=0.05, min_samples=100))
    >>> for _ in range(100):
    ...     test.update(rng.binomial(1, 0.5, 20), rng.binomial(1, 0.75, 20))
    ...     if test.decision() != "continue":
    ...         break
    >>> test.decision(), bool(test.n_candidate < 2000)
    ('promote', True)
    """

    def __init__(self, params: ABParams = ABParams(), *, p_value: float = 1.0) -> None:
        self.params = params
        self._sums = np.zeros((2, 3))  # per arm: n, sum, sum of squares
        self._p = float(p_value)

    @property
    def n_control(self) -> int:
        """Observations of the control arm."""
        return int(self._sums[0, 0])

    @property
    def n_candidate(self) -> int:
        """Observations of the candidate arm."""
        return int(self._sums[1, 0])

    @property
    def p_value(self) -> float:
        """The always-valid p-value (the minimum over every look so far)."""
        return self._p

    def update(self, control_values: ArrayLike, candidate_values: ArrayLike) -> None:
        """Add a batch of each arm's qualities and look once."""
        for arm, values in enumerate((control_values, candidate_values)):
            x = np.asarray(values, dtype=float).ravel()
            if x.size and (x.min() < 0 or x.max() > 1):
                raise ValueError("qualities must lie within [0, 1]")
            self._sums[arm] += (x.size, x.sum(), (x * x).sum())
        (nc, sc, ssc), (nt, st, sst) = self._sums
        p = always_valid_p_values(
            nc, sc, ssc, nt, st, sst, tau=self.params.tau, min_samples=self.params.min_samples
        )
        self._p = min(self._p, float(p))

    def difference(self) -> float:
        """Candidate mean minus control mean."""
        return float(_stats(*self._sums[0], *self._sums[1])[2])

    def decision(self) -> Decision:
        """``promote`` or ``rollback`` once the p-value is at most alpha (enough samples);
        ``inconclusive`` at ``max_samples``; else ``continue``."""
        enough = min(self.n_control, self.n_candidate) >= self.params.min_samples
        if enough and self._p <= self.params.alpha:
            return "promote" if self.difference() > 0 else "rollback"
        cap = self.params.max_samples
        if cap is not None and min(self.n_control, self.n_candidate) >= cap:
            return "inconclusive"
        return "continue"

    def evidence(self) -> dict[str, Any]:
        """Counts, means with 95 % intervals (fixed-n, per arm), the difference with its
        always-valid confidence sequence, the p-value and the decision."""
        arms: dict[str, Any] = {}
        for arm, (n, s, ss) in zip(("control", "candidate"), self._sums, strict=True):
            mean = s / n if n else None
            half = 1.96 * math.sqrt(float(_variance(np.array(n), s, ss)) / n) if n > 1 else None
            arms[arm] = {
                "n": int(n),
                "mean": mean,
                "low": None if half is None or mean is None else max(0.0, mean - half),
                "high": None if half is None or mean is None else min(1.0, mean + half),
            }
        _, _, diff, v = _stats(*self._sums[0], *self._sums[1])
        radius = confidence_radius(float(v), alpha=self.params.alpha, tau=self.params.tau)
        both = self.n_control > 1 and self.n_candidate > 1
        return {
            "arms": arms,
            "difference": {
                "value": float(diff) if both else None,
                "low": float(diff) - radius if both else None,
                "high": float(diff) + radius if both else None,
                "kind": f"always-valid {1 - self.params.alpha:.0%} confidence sequence",
            },
            "p_value": self._p,
            "decision": self.decision(),
            "params": asdict(self.params),
        }
