"""Quality drift: sequential change detectors on each segment's feedback streams.

Each stream (one measure of one segment) gets a detector calibrated to a stated false-alarm
rate, an average run length to false alarm (ARL0) in observations; the budget is shared
between segments (:func:`segment_arl0`). An alarm says what changed (the measure, before ->
after with 95 % intervals), where (the segment) and since when (the estimated change point).

- :class:`BernoulliCusum`: rates (thumbs) and scores bounded in [0, 1].
- :class:`GaussianCusum`: means of unbounded scores.
- :class:`SegmentMonitor`: one detector per (segment, measure), with the shared budget.
"""

from closedloop.analyze.drift.base import (
    Change,
    ChangeDetector,
    DriftDetector,
    Estimate,
    wilson_interval,
)
from closedloop.analyze.drift.bernoulli import BernoulliCusum
from closedloop.analyze.drift.calibrate import (
    ArlMeasurement,
    calibrate,
    measure_arl0,
    segment_arl0,
)
from closedloop.analyze.drift.gaussian import GaussianCusum
from closedloop.analyze.drift.monitor import DriftAlarm, DriftParams, SegmentMonitor
from closedloop.analyze.drift.multi_cusum import MultiCusum
from closedloop.analyze.drift.registry import load_detectors

__all__ = [
    "ArlMeasurement",
    "BernoulliCusum",
    "Change",
    "ChangeDetector",
    "DriftAlarm",
    "DriftDetector",
    "DriftParams",
    "Estimate",
    "GaussianCusum",
    "MultiCusum",
    "SegmentMonitor",
    "calibrate",
    "load_detectors",
    "measure_arl0",
    "segment_arl0",
    "wilson_interval",
]
