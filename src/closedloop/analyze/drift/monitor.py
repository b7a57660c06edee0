"""One detector per (segment, measure) stream, with the false-alarm budget shared out.

>>> import random
>>> rng = random.Random(1)
>>> monitor = SegmentMonitor(DriftParams(arl0=10_000, n_segments=4))
>>> monitor.detector_arl0
40000.0
>>> for i in range(6000):
...     rate = 0.80 if i < 4000 else 0.60
...     alarm = monitor.update("model=b", "thumbs", rng.random() < rate)
...     if alarm:
...         print(alarm.segment, alarm.measure, alarm.change.change_point, alarm.change.detected_at)
...         print(alarm.change.before, "->", alarm.change.after)
model=b thumbs 3985 4038
0.793 [0.781, 0.806] (n=3985) -> 0.519 [0.389, 0.646] (n=54)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from closedloop.analyze.drift.base import Change, ChangeDetector
from closedloop.analyze.drift.bernoulli import BernoulliCusum
from closedloop.analyze.drift.calibrate import segment_arl0

__all__ = ["DetectorFactory", "DriftAlarm", "DriftParams", "SegmentMonitor"]

DetectorFactory = Callable[[float], ChangeDetector]
"""Builds the detector of one stream from its ARL0 (in observations)."""


@dataclass(frozen=True, kw_only=True)
class DriftParams:
    """The configuration of quality-drift detection.

    ``arl0`` is the stated false-alarm budget: one false alarm per ``arl0`` observations
    (default 10,000), held for the whole family of ``n_segments`` streams by giving each
    stream ``n_segments * arl0`` (:func:`~closedloop.analyze.drift.segment_arl0`). A stream is
    one measure of one segment. ``warmup`` observations of a stream form its reference; no
    alarm comes before (the low-volume guard). ``drops`` are the rate shifts the charts of
    a Bernoulli stream are tuned to; ``dispersion`` the variance inflation of feedback that
    comes in correlated bursts (1 for independent observations).
    """

    arl0: float = 10_000
    n_segments: int = 1
    warmup: int = 1000
    drops: tuple[float, ...] = (0.05, 0.10, 0.20)
    dispersion: float = 1.0

    def __post_init__(self) -> None:
        segment_arl0(self.arl0, self.n_segments)  # validates both
        if not (isinstance(self.warmup, int) and self.warmup >= 1):
            raise ValueError(f"warmup must be an integer of at least 1, got {self.warmup!r}")


@dataclass(frozen=True, kw_only=True)
class DriftAlarm:
    """What changed (``measure``, before and after), where (``segment``) and since when."""

    segment: str
    measure: str
    change: Change

    def __str__(self) -> str:
        return f"{self.measure} in {self.segment}: {self.change}"


class SegmentMonitor:
    """Routes each observation to the detector of its (segment, measure) stream.

    Streams are created on first sight. Beyond ``params.n_segments`` streams the family
    budget no longer holds; :attr:`over_budget` says so (size ``n_segments`` for the
    number of streams expected, not the number seen so far).
    """

    def __init__(
        self, params: DriftParams = DriftParams(), factory: DetectorFactory | None = None
    ) -> None:
        self.params = params
        self.factory = factory
        self._detectors: dict[tuple[str, str], ChangeDetector] = {}

    @property
    def detector_arl0(self) -> float:
        """The ARL0 each stream's detector is built with."""
        return segment_arl0(self.params.arl0, self.params.n_segments)

    @property
    def over_budget(self) -> bool:
        """Whether more streams exist than the budget was shared between."""
        return len(self._detectors) > self.params.n_segments

    def _new(self) -> ChangeDetector:
        if self.factory is not None:
            return self.factory(self.detector_arl0)
        return BernoulliCusum(
            arl0=self.detector_arl0,
            drops=self.params.drops,
            warmup=self.params.warmup,
            dispersion=self.params.dispersion,
        )

    def detector(self, segment: str, measure: str) -> ChangeDetector:
        """The detector of one stream (created on first use)."""
        key = (segment, measure)
        found = self._detectors.get(key)
        if found is None:
            found = self._detectors[key] = self._new()
        return found

    def update(self, segment: str, measure: str, x: float) -> DriftAlarm | None:
        """Feed one observation; return the alarm it raised, if any."""
        detector = self.detector(segment, measure)
        detector.update(x)
        if detector.drift_detected and detector.change is not None:
            return DriftAlarm(segment=segment, measure=measure, change=detector.change)
        return None

    def update_many(self, segment: str, measure: str, xs: Sequence[float]) -> Iterator[DriftAlarm]:
        """Feed a batch of one stream in order, yielding each alarm."""
        for x in xs:
            alarm = self.update(segment, measure, x)
            if alarm is not None:
                yield alarm

    def __len__(self) -> int:
        return len(self._detectors)
