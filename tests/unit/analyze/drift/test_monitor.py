"""The per-segment monitor: routing, the shared budget and the alarm record."""

from __future__ import annotations

import random

import pytest

from closedloop.analyze.drift import DriftParams, GaussianCusum, SegmentMonitor


def test_each_segment_and_measure_gets_its_own_detector_with_the_shared_budget() -> None:
    monitor = SegmentMonitor(DriftParams(arl0=10_000, n_segments=3))
    monitor.update("a", "thumbs", 1.0)
    monitor.update("a", "accept", 1.0)
    monitor.update("b", "thumbs", 0.0)
    assert len(monitor) == 3
    assert monitor.detector("a", "thumbs") is not monitor.detector("b", "thumbs")
    assert monitor.detector("a", "thumbs").arl0 == 30_000  # type: ignore[attr-defined]
    assert not monitor.over_budget
    monitor.update("c", "thumbs", 1.0)
    assert monitor.over_budget


def test_an_alarm_names_the_segment_the_measure_and_the_change() -> None:
    rng = random.Random(2)
    monitor = SegmentMonitor(DriftParams(n_segments=2, warmup=500))
    alarms = []
    for i in range(3000):
        monitor.update("steady", "thumbs", rng.random() < 0.8)
        alarm = monitor.update("broken", "thumbs", rng.random() < (0.8 if i < 1500 else 0.5))
        if alarm:
            alarms.append(alarm)
    assert [(a.segment, a.measure) for a in alarms] == [("broken", "thumbs")]
    change = alarms[0].change
    assert abs(change.change_point - 1500) < 100
    assert change.before.value > change.after.value
    assert str(alarms[0]).startswith("thumbs in broken: 0.")


def test_a_factory_chooses_the_detector_of_each_stream() -> None:
    monitor = SegmentMonitor(
        DriftParams(n_segments=2), factory=lambda arl0: GaussianCusum(arl0=arl0, warmup=50)
    )
    rng = random.Random(0)
    alarms = list(
        monitor.update_many("s", "rating", [rng.gauss(4, 0.5) for _ in range(100)] + [1.0] * 20)
    )
    assert isinstance(monitor.detector("s", "rating"), GaussianCusum)
    assert len(alarms) == 1 and alarms[0].measure == "rating"


def test_bad_params_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="n_segments"):
        DriftParams(n_segments=0)
    with pytest.raises(ValueError, match="warmup"):
        DriftParams(warmup=0)
