"""The detectors closedloop knows: the built-in ones, then those plugins register.

Plugins return detector classes from the ``register_detectors`` hook
(:mod:`closedloop.hookspecs`); they are looked up by class name.

>>> sorted(load_detectors(load_entrypoints=False))
['BernoulliCusum', 'GaussianCusum']
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from closedloop.analyze.drift.base import ChangeDetector, DriftDetector
from closedloop.analyze.drift.bernoulli import BernoulliCusum
from closedloop.analyze.drift.gaussian import GaussianCusum
from closedloop.plugins import get_plugin_manager

__all__ = ["BUILTIN_DETECTORS", "detector_factory", "load_detectors"]

BUILTIN_DETECTORS: tuple[type[DriftDetector], ...] = (BernoulliCusum, GaussianCusum)


def load_detectors(*, load_entrypoints: bool = True) -> dict[str, type[DriftDetector]]:
    """Detector classes by name: the built-in ones, then each plugin's in hook order.

    A plugin may not shadow a built-in name or register something that is not a
    :class:`~closedloop.analyze.drift.base.DriftDetector` subclass (``TypeError``/
    ``ValueError`` name the offender).
    """
    found: dict[str, type[DriftDetector]] = {cls.__name__: cls for cls in BUILTIN_DETECTORS}
    pm = get_plugin_manager(load_entrypoints=load_entrypoints)
    for group in pm.hook.register_detectors():
        for cls in group:
            if not (isinstance(cls, type) and issubclass(cls, DriftDetector)):
                raise TypeError(f"register_detectors returned {cls!r}, not a DriftDetector class")
            if cls.__name__ in found and found[cls.__name__] is not cls:
                raise ValueError(f"a detector named {cls.__name__!r} is already registered")
            found[cls.__name__] = cls
    return found


def detector_factory(
    name: str,
    *,
    warmup: int | None = None,
    drops: tuple[float, ...] | None = None,
    dispersion: float | None = None,
) -> Callable[[float], ChangeDetector]:
    """A builder of the detector class ``name`` from a stream's ARL0: ``cls(arl0=...)``, plus
    ``warmup``, ``drops`` and ``dispersion`` where its constructor takes them. Plugins are
    looked up only for a name that is not built in. The class must say what changed and since
    when (a :class:`~closedloop.analyze.drift.base.ChangeDetector`).

    >>> build = detector_factory("BernoulliCusum", warmup=500)
    >>> detector = build(640_000)
    >>> type(detector).__name__, detector.warmup
    ('BernoulliCusum', 500)
    """
    from closedloop.errors import ConfigError

    builtin = {cls.__name__: cls for cls in BUILTIN_DETECTORS}
    found = builtin.get(name) or load_detectors().get(name)
    if found is None:
        known = ", ".join(sorted(load_detectors()))
        raise ConfigError(
            f"no drift detector named {name!r}; known: {known}", field="drift_detector"
        )
    if not issubclass(found, ChangeDetector):
        raise ConfigError(
            f"{name} cannot say since when a change started: a quality-drift detector must be "
            "a ChangeDetector",
            field="drift_detector",
        )
    cls: type[ChangeDetector] = found
    accepted = inspect.signature(cls).parameters
    extra = {
        key: value
        for key, value in (("warmup", warmup), ("drops", drops), ("dispersion", dispersion))
        if value is not None and key in accepted
    }
    return lambda arl0: cls(arl0=arl0, **extra)  # type: ignore[call-arg]
