"""The shape every drift detector shares, and what an alarm reports.

A detector watches one stream of feedback observations (one measure of one segment): it is
fed one value at a time with :meth:`DriftDetector.update` and raises
:attr:`DriftDetector.drift_detected` on the update that signals a change. Detectors that can
say *what* changed and *since when* also expose :attr:`ChangeDetector.change`, a
:class:`Change` with the estimated change point and the before and after estimates, each with
a confidence interval.

The clock of every detector is the feedback observation, not wall time: a segment that
receives three thumbs a day and one that receives three thousand run the same statistics,
only at different speeds. Sparse or bursty arrival therefore changes when an alarm comes,
not how often a false one does (false alarms are counted per observation).

>>> low, high = wilson_interval(8, 10)
>>> round(low, 3), round(high, 3)
(0.49, 0.943)
>>> print(Estimate.of_rate(80, 100))
0.8 [0.711, 0.867] (n=100)
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Change",
    "ChangeDetector",
    "DriftDetector",
    "Estimate",
    "Z_95",
    "mean_interval",
    "wilson_interval",
]

Z_95 = 1.959963984540054
"""The two-sided 95 % normal quantile used by every interval."""


def wilson_interval(successes: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a rate: ``successes`` out of ``n`` (``z`` sets the level).

    Also valid, and conservative, for the mean of values bounded in [0, 1], whose variance
    never exceeds that of a Bernoulli variable with the same mean.

    >>> wilson_interval(0, 0)
    (0.0, 1.0)
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(max(successes / n, 0.0), 1.0)
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(centre - half, 0.0), min(centre + half, 1.0)


def mean_interval(total: float, total_sq: float, n: float, z: float = Z_95) -> tuple[float, float]:
    """Normal interval of a mean from its sums (``z`` sets the level; ``n < 2`` is unbounded).

    >>> low, high = mean_interval(10.0, 30.0, 4)
    >>> round(low, 3), round(high, 3)
    (1.235, 3.765)
    """
    if n < 2:
        return -math.inf, math.inf
    mean = total / n
    var = max(total_sq - n * mean * mean, 0.0) / (n - 1)
    half = z * math.sqrt(var / n)
    return mean - half, mean + half


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A point estimate with its confidence interval, from ``n`` observations."""

    value: float
    low: float
    high: float
    n: int

    @classmethod
    def of_rate(cls, successes: float, n: int, dispersion: float = 1.0) -> Estimate:
        """A rate (or a mean of values in [0, 1]) with its Wilson interval; ``dispersion``
        (the variance inflation of correlated observations) widens it, as ``n / dispersion``
        independent observations would."""
        low, high = wilson_interval(successes / dispersion, n / dispersion)
        return cls(value=successes / n if n else math.nan, low=low, high=high, n=n)

    @classmethod
    def of_mean(cls, total: float, total_sq: float, n: int, dispersion: float = 1.0) -> Estimate:
        """A mean with its normal interval (widened by ``sqrt(dispersion)``)."""
        low, high = mean_interval(total, total_sq, n, Z_95 * math.sqrt(dispersion))
        return cls(value=total / n if n else math.nan, low=low, high=high, n=n)

    def __str__(self) -> str:
        return f"{self.value:.3g} [{self.low:.3g}, {self.high:.3g}] (n={self.n})"


@dataclass(frozen=True, kw_only=True)
class Change:
    """What a detector found: where the change started, when it was seen, before and after.

    Indices count the observations given to the detector since it was created, from 0.
    ``change_point`` is the index of the first observation estimated to follow the change;
    ``detected_at`` the index of the observation that raised the alarm.
    """

    change_point: int
    detected_at: int
    before: Estimate
    after: Estimate

    @property
    def delay(self) -> int:
        """Observations from the estimated change point to the alarm, both included."""
        return self.detected_at - self.change_point + 1

    def __str__(self) -> str:
        return (
            f"{self.before} -> {self.after} since observation {self.change_point} "
            f"(alarm at {self.detected_at})"
        )


class DriftDetector(abc.ABC):
    """A sequential change detector fed one observation at a time (river's shape)."""

    def __init__(self) -> None:
        self._drift_detected = False

    @property
    def drift_detected(self) -> bool:
        """Whether the last update signalled drift."""
        return self._drift_detected

    @abc.abstractmethod
    def update(self, x: float) -> None:
        """Take one observation; set :attr:`drift_detected` when it signals a change."""

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        """Constructor arguments the generic tests run the detector with."""
        yield {}


class ChangeDetector(DriftDetector):
    """A detector that can say what changed and since when."""

    @property
    @abc.abstractmethod
    def change(self) -> Change | None:
        """The change found by the last alarm (kept until the next one), else ``None``."""
