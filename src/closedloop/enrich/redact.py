"""The redaction step of the ingest path (the one place allowed to see raw PII).

A redactor is a synchronous callable ``(event) -> event`` (:data:`closedloop.types.Redactor`).
The foundation ships none that changes anything: the enrichment work fills this in, and
plugins add their own through the ``register_redactors`` hook.
"""

from __future__ import annotations

from closedloop.plugins import get_plugin_manager
from closedloop.types import Redactor

__all__ = ["load_redactors"]


def load_redactors(*, load_entrypoints: bool = True) -> list[Redactor]:
    """Redactors registered by plugins, in registration order."""
    pm = get_plugin_manager(load_entrypoints=load_entrypoints)
    redactors: list[Redactor] = []
    for group in pm.hook.register_redactors():
        redactors.extend(group)
    return redactors
