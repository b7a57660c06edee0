"""Detectors register through the plugin hook."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from closedloop.analyze.drift import BernoulliCusum, DriftDetector, load_detectors
from closedloop.hookspecs import hookimpl
from closedloop.plugins import get_plugin_manager


class Never(DriftDetector):
    """A plugin's detector that never alarms."""

    def update(self, x: float) -> None:
        self._drift_detected = False


class Plugin:
    def __init__(self, detectors: list[Any]) -> None:
        self.detectors = detectors

    @hookimpl
    def register_detectors(self) -> list[Any]:
        return self.detectors


@pytest.fixture
def register() -> Iterator[Any]:
    pm = get_plugin_manager(load_entrypoints=False)
    plugins: list[Plugin] = []

    def add(detectors: list[Any]) -> None:
        plugin = Plugin(detectors)
        pm.register(plugin)
        plugins.append(plugin)

    yield add
    for plugin in plugins:
        pm.unregister(plugin)


def test_the_builtin_detectors_are_always_there() -> None:
    assert load_detectors(load_entrypoints=False)["BernoulliCusum"] is BernoulliCusum


def test_a_plugin_adds_its_detectors(register: Any) -> None:
    register([Never])
    assert load_detectors(load_entrypoints=False)["Never"] is Never


def test_a_plugin_may_not_register_something_else(register: Any) -> None:
    register([object])
    with pytest.raises(TypeError, match="not a DriftDetector"):
        load_detectors(load_entrypoints=False)


def test_a_plugin_may_not_shadow_a_builtin(register: Any) -> None:
    shadow = type("BernoulliCusum", (Never,), {})
    register([shadow])
    with pytest.raises(ValueError, match="already registered"):
        load_detectors(load_entrypoints=False)
