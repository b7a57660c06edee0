"""The plugin manager. Plugins are found through the ``closedloop`` entry-point group.

Entry points load lazily, on first use, and never when ``load_entrypoints=False`` (tests).

>>> pm = get_plugin_manager(load_entrypoints=False)
>>> pm.hook.register_redactors()
[]
"""

from __future__ import annotations

import functools

import pluggy

from closedloop import hookspecs

__all__ = ["get_plugin_manager"]


@functools.cache
def get_plugin_manager(*, load_entrypoints: bool = True) -> pluggy.PluginManager:
    """The process-wide plugin manager (one per value of ``load_entrypoints``)."""
    pm = pluggy.PluginManager("closedloop")
    pm.add_hookspecs(hookspecs)
    if load_entrypoints:
        pm.load_setuptools_entrypoints("closedloop")
    return pm
