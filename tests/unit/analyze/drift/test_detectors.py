"""Every registered detector through the generic checks (river ``test_estimators.py``)."""

from __future__ import annotations

import inspect
import random
from typing import Any

import pytest

from closedloop.analyze.drift import DriftDetector, load_detectors

CASES = [
    pytest.param(cls, params, id=f"{name}-{i}")
    for name, cls in sorted(load_detectors(load_entrypoints=False).items())
    for i, params in enumerate(cls._unit_test_params())
]


def stream(seed: int, n: int) -> list[float]:
    rng = random.Random(seed)
    return [float(rng.random() < 0.8) for _ in range(n)]


@pytest.mark.parametrize(("cls", "params"), CASES)
def test_update_returns_none_and_drift_detected_is_a_bool(
    cls: type[DriftDetector], params: dict[str, Any]
) -> None:
    detector = cls(**params)
    assert detector.drift_detected is False
    for x in stream(0, 50):
        assert detector.update(x) is None  # type: ignore[func-returns-value]
        assert isinstance(detector.drift_detected, bool)


@pytest.mark.parametrize(("cls", "params"), CASES)
def test_constructor_arguments_are_stored_under_their_own_names(
    cls: type[DriftDetector], params: dict[str, Any]
) -> None:
    detector = cls(**params)
    for name, parameter in inspect.signature(cls).parameters.items():
        expected = params.get(name, parameter.default)
        value = getattr(detector, name)
        assert value == (tuple(expected) if isinstance(value, tuple) else expected), name


@pytest.mark.parametrize(("cls", "params"), CASES)
def test_the_same_stream_gives_the_same_alarms(
    cls: type[DriftDetector], params: dict[str, Any]
) -> None:
    data = stream(1, 1500) + [float(x < 0.3) for x in stream(2, 1500)]

    def alarms() -> list[int]:
        detector = cls(**params)
        found = []
        for i, x in enumerate(data):
            detector.update(x)
            if detector.drift_detected:
                found.append(i)
        return found

    assert alarms() == alarms()


@pytest.mark.parametrize(("cls", "params"), CASES)
def test_no_alarm_is_raised_during_the_warmup(
    cls: type[DriftDetector], params: dict[str, Any]
) -> None:
    detector = cls(**params)
    warmup = getattr(detector, "warmup", 0)
    for x in [1.0] * (warmup // 2) + [0.0] * (warmup - warmup // 2):
        detector.update(x)
        assert not detector.drift_detected
