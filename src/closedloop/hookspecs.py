"""Plugin hook specifications (pluggy). Third parties implement these with ``hookimpl``.

Each hook returns a list; closedloop concatenates the lists of every plugin.
"""

from __future__ import annotations

from typing import Any

import pluggy

__all__ = ["hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker("closedloop")
hookimpl = pluggy.HookimplMarker("closedloop")


@hookspec
def register_redactors() -> list[Any]:  # type: ignore[empty-body]
    """Return redactors, callables ``(event) -> event`` run on every event before storage."""


@hookspec
def register_job_handlers() -> dict[str, Any]:  # type: ignore[empty-body]
    """Return a mapping of job kind to handler ``(job) -> None`` for the background worker."""


@hookspec
def register_detectors() -> list[Any]:  # type: ignore[empty-body]
    """Return drift detector classes (``closedloop.analyze`` detectors)."""


@hookspec
def register_actions() -> list[Any]:  # type: ignore[empty-body]
    """Return action classes with ``run(trigger, *, dry_run=False)``."""


@hookspec
def register_embedders() -> list[Any]:  # type: ignore[empty-body]
    """Return embedder classes with a batch ``embed(texts) -> array``."""


@hookspec
def register_recognizers() -> list[Any]:  # type: ignore[empty-body]
    """Return PII recognizers for the redaction step."""
