"""False-alarm rates: measure them by simulation, calibrate a threshold, share them out.

A detector's false-alarm rate is counted per observation on stationary streams, with the
detector left running after each alarm (it restarts itself), so ``observations / alarms``
estimates the average run length to false alarm (ARL0).

**Many segments.** False-alarm rates add, whatever the dependence between the streams:
``S`` segment streams, each with one false alarm per ``A`` of its observations, raise
together ``S / A`` false alarms per observation of one stream (expected counts add exactly;
this is Bonferroni applied to rates, with no union-bound slack). :func:`segment_arl0` gives
each segment ``S * arl0``, so the whole family raises at most one false alarm in each span in
which every segment receives ``arl0`` observations. The cost is a threshold higher by
``log(S)``, a delay longer by about ``log(S) / log(arl0)``.

>>> segment_arl0(10_000, 50)
500000.0
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from closedloop.analyze.drift.base import DriftDetector

__all__ = ["ArlMeasurement", "calibrate", "measure_arl0", "segment_arl0"]

Sampler = Callable[[random.Random], float]
"""Draws one stationary observation from a seeded generator."""


def segment_arl0(arl0: float, n_segments: int) -> float:
    """The ARL0 each of ``n_segments`` streams needs so the family keeps ``arl0``."""
    if not (math.isfinite(arl0) and arl0 > 1):
        raise ValueError(f"arl0 must be a finite number above 1, got {arl0!r}")
    if not (isinstance(n_segments, int) and n_segments >= 1):
        raise ValueError(f"n_segments must be a positive integer, got {n_segments!r}")
    return float(arl0) * n_segments


@dataclass(frozen=True, kw_only=True)
class ArlMeasurement:
    """False alarms counted over ``observations`` stationary observations."""

    alarms: int
    observations: int

    @property
    def arl0(self) -> float:
        """Observations per false alarm (``inf`` when none was raised)."""
        return self.observations / self.alarms if self.alarms else math.inf

    def upper_rate(self, z: float = 1.959963984540054) -> float:
        """An upper confidence bound on the false alarms per observation (Poisson, normal)."""
        k = self.alarms
        return (k + z * math.sqrt(k) + z * z) / self.observations


def measure_arl0(
    factory: Callable[[], DriftDetector],
    sample: Sampler,
    *,
    n_streams: int = 100,
    horizon: int = 10_000,
    seed: int = 0,
) -> ArlMeasurement:
    """Run ``n_streams`` fresh detectors over ``horizon`` stationary draws each; count alarms.

    >>> from closedloop.analyze.drift.bernoulli import BernoulliCusum
    >>> m = measure_arl0(lambda: BernoulliCusum(arl0=2_000, warmup=200),
    ...                  lambda rng: rng.random() < 0.8, n_streams=5, horizon=2_000)
    >>> m.observations, m.alarms
    (10000, 1)
    """
    alarms = 0
    for stream in range(n_streams):
        rng = random.Random(f"{seed}:{stream}")
        detector = factory()
        for _ in range(horizon):
            detector.update(sample(rng))
            alarms += detector.drift_detected
    return ArlMeasurement(alarms=alarms, observations=n_streams * horizon)


def calibrate(
    factory: Callable[[float], DriftDetector],
    arl0: float,
    sample: Sampler,
    *,
    low: float,
    high: float,
    n_streams: int = 100,
    horizon: int = 10_000,
    seed: int = 0,
    iterations: int = 12,
) -> tuple[float, ArlMeasurement]:
    """Bisect a parameter ``theta`` (false alarms fall as it grows) to the ARL0 target.

    ``factory(theta)`` builds a detector. Every evaluation replays the same seeded streams
    (common random numbers), so the measured rate is monotone in ``theta`` up to ties.
    Returns the smallest ``theta`` found whose measured ARL0 reaches ``arl0`` (``high`` if
    none does within the iterations), with its measurement.

    >>> from closedloop.analyze.drift.bernoulli import BernoulliCusum
    >>> theta, m = calibrate(lambda t: BernoulliCusum(arl0=500, warmup=100, offset=t), 500,
    ...                      lambda rng: rng.random() < 0.5, low=-3.0, high=3.0,
    ...                      n_streams=4, horizon=1_500, iterations=4)
    >>> m.arl0 >= 500
    True
    """
    if not low < high:
        raise ValueError(f"low must be below high, got low={low!r}, high={high!r}")

    def run(theta: float) -> ArlMeasurement:
        return measure_arl0(
            lambda: factory(theta), sample, n_streams=n_streams, horizon=horizon, seed=seed
        )

    best = run(high)
    for _ in range(iterations):
        mid = (low + high) / 2
        measured = run(mid)
        if measured.arl0 >= arl0:
            high, best = mid, measured
        else:
            low = mid
    return high, best
