"""The detectors closedloop knows: the built-in ones, then those plugins register.

Plugins return detector classes from the ``register_detectors`` hook
(:mod:`closedloop.hookspecs`); they are looked up by class name.

>>> sorted(load_detectors(load_entrypoints=False))
['BernoulliCusum', 'GaussianCusum']
"""

from __future__ import annotations

from closedloop.analyze.drift.base import DriftDetector
from closedloop.analyze.drift.bernoulli import BernoulliCusum
from closedloop.analyze.drift.gaussian import GaussianCusum
from closedloop.plugins import get_plugin_manager

__all__ = ["BUILTIN_DETECTORS", "load_detectors"]

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
