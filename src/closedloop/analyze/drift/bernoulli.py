"""Drift of a rate: thumbs up, accepts, or any score bounded in [0, 1].

The pre-change rate ``p0`` is estimated from the reference (see
:mod:`closedloop.analyze.drift.multi_cusum`); chart ``k`` tests ``p0`` against
``p0 - drop_k`` (or ``+``) with the Bernoulli log-likelihood ratio
``x * log(p1 / p0) + (1 - x) * log((1 - p1) / (1 - p0))``. For a score ``x`` in [0, 1] the
same ratio is used: its exponential is convex in ``x``, so a bounded score is never more
prone to false alarms than a thumb with the same mean (Hoeffding), and the Wilson intervals
stay valid (conservative).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from closedloop.analyze.drift.base import Estimate
from closedloop.analyze.drift.multi_cusum import MultiCusum

__all__ = ["DEFAULT_OFFSET", "BernoulliCusum", "Direction"]

Direction = Literal["down", "up", "both"]

DEFAULT_OFFSET = -0.4
"""Threshold offset measured by simulation (``bench/drift_eval.py``'s numpy twin, first
alarms on stationary streams, ``warmup=1000``, the default drops): the offset that gives
exactly the stated ARL0 was -0.89 to -1.00 for ``p0`` from 0.5 to 0.95 at ``arl0=10_000``
and -0.42 at ``arl0=100_000``; the default is the most conservative of these, rounded up (it
measured 0.74 false alarms per 10,000 observations at ``p0=0.8``, ``arl0=10_000``)."""

_P_MIN = 0.005  # rates are clipped to [_P_MIN, 1 - _P_MIN]; charts beyond are disabled


class BernoulliCusum(MultiCusum):
    """Multichart Bernoulli CUSUM for a drop (or rise) of a rate of unknown size.

    Parameters
    ----------
    arl0
        Average run length to false alarm, in observations: on a stationary stream of
        independent observations (else see ``dispersion``) the detector raises one false
        alarm per ``arl0`` observations or fewer. For many segments, pass
        :func:`closedloop.analyze.drift.segment_arl0`.
    drops
        Shifts of the rate, in absolute points, that the charts are tuned to (one chart per
        shift and direction). A change between two grid points is detected by the nearer
        chart with a small loss.
    warmup
        Observations that form the first reference. No alarm is raised before (the guard
        for low-volume segments).
    direction
        ``"down"`` (drops only), ``"up"`` or ``"both"``.
    offset
        Added to every chart threshold ``log(K * arl0 * KL)``; see :data:`DEFAULT_OFFSET`.
    dispersion
        Variance inflation of the stream over independent observations (at least 1), for
        feedback that comes in correlated bursts; see
        :mod:`closedloop.analyze.drift.multi_cusum`.

    Examples
    --------
    >>> import random
    >>> rng = random.Random(7)
    >>> stream = [rng.random() < 0.80 for _ in range(4000)]
    >>> stream += [rng.random() < 0.65 for _ in range(1000)]
    >>> detector = BernoulliCusum(arl0=10_000)
    >>> for i, x in enumerate(stream):
    ...     detector.update(x)
    ...     if detector.drift_detected:
    ...         print(f"Change detected at index {i}")
    Change detected at index 4054
    >>> change = detector.change
    >>> change.change_point, change.detected_at
    (3935, 4054)
    >>> print(change.before, "->", change.after)
    0.802 [0.788, 0.815] (n=3397) -> 0.65 [0.561, 0.729] (n=120)

    References
    ----------
    [^1]: E. S. Page. 1954. Continuous inspection schemes. Biometrika 41(1/2), 100-115.
    [^2]: A. G. Tartakovsky, I. V. Nikiforov and M. Basseville. 2014. Sequential Analysis:
        Hypothesis Testing and Changepoint Detection, section 8.3 (multichart CUSUM).
    """

    def __init__(
        self,
        arl0: float = 10_000,
        drops: Sequence[float] = (0.05, 0.10, 0.20),
        warmup: int = 1000,
        direction: Direction = "down",
        offset: float = DEFAULT_OFFSET,
        dispersion: float = 1.0,
    ) -> None:
        super().__init__()
        drops = tuple(drops)
        if not drops or not all(isinstance(d, int | float) and 0 < d < 1 for d in drops):
            raise ValueError(
                f"drops must be a non-empty sequence of values in (0, 1), got {drops!r}"
            )
        self.drops = drops
        self.direction = direction
        self._shifts = self._configure(
            arl0=arl0,
            warmup=warmup,
            min_warmup=1,
            direction=direction,
            offset=offset,
            dispersion=dispersion,
            magnitudes=drops,
        )

    def _check(self, x: float) -> float:
        x = float(x)
        if not 0.0 <= x <= 1.0:
            raise ValueError(f"x must be in [0, 1] (a thumb or a bounded score), got {x!r}")
        return x

    def _models(
        self, n: float, total: float, total_sq: float
    ) -> list[tuple[float, float, float, float] | None]:
        p0 = min(max(total / n, _P_MIN), 1.0 - _P_MIN)
        charts: list[tuple[float, float, float, float] | None] = []
        for shift in self._shifts:
            p1 = p0 + shift
            if not _P_MIN <= p1 <= 1.0 - _P_MIN:
                charts.append(None)  # no room for this shift: off
                continue
            up, down = math.log(p1 / p0), math.log((1.0 - p1) / (1.0 - p0))
            kl = p0 * math.log(p0 / p1) + (1.0 - p0) * math.log((1.0 - p0) / (1.0 - p1))
            c = self.dispersion * p0 * (1.0 - p0) / (n * shift * shift)
            phi = self.dispersion
            charts.append((down / phi, (up - down) / phi, kl, c))
        return charts

    def _estimate(self, n: float, total: float, total_sq: float) -> Estimate:
        return Estimate.of_rate(total, int(n), self.dispersion)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"arl0": 1000, "drops": (0.1,), "warmup": 200, "direction": "both", "dispersion": 1.5}
