"""The redaction step of the ingest path (the one place allowed to see raw PII).

A redactor is a synchronous callable ``(event) -> event`` (:data:`closedloop.types.Redactor`).
Each project's PII policy (:mod:`closedloop.enrich.privacy`) gives the first step; redactors
that plugins register through the ``register_redactors`` hook run after it, on text that is
already redacted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from closedloop.enrich.privacy import PiiPolicy, chain, project_redactor
from closedloop.plugins import get_plugin_manager
from closedloop.types import Redactor

__all__ = ["ProjectRedactors", "load_redactors"]

PolicySource = Callable[[int], tuple[str, str | None]]
"""``project_id -> (policy JSON, pseudonym secret)``; :meth:`Projects.pii` is one."""


def load_redactors(*, load_entrypoints: bool = True) -> list[Redactor]:
    """Redactors registered by plugins, in registration order."""
    pm = get_plugin_manager(load_entrypoints=load_entrypoints)
    redactors: list[Redactor] = []
    for group in pm.hook.register_redactors():
        redactors.extend(group)
    return redactors


class ProjectRedactors:
    """The redaction step of each project, built from its policy and cached for ``ttl`` s.

    Parameters
    ----------
    source
        Reads a project's policy and secret (from the database).
    ttl
        Seconds a built redactor is reused before its policy is read again; a change made
        in this process takes effect at once through :meth:`forget`.
    plugins
        Plugin redactors, run after the project's own step.

    Examples
    --------
    >>> redactors = ProjectRedactors(lambda project_id: ("{}", None), ttl=60)
    >>> redactors.cached(1) is None
    True
    >>> step = redactors.get(1)
    >>> redactors.cached(1) is step
    True
    """

    def __init__(self, source: PolicySource, *, ttl: float, plugins: Sequence[Redactor] = ()):
        self.source = source
        self.ttl = ttl
        self.plugins = tuple(plugins)
        self._cache: dict[int, tuple[float, Redactor]] = {}
        self._built: dict[int, tuple[tuple[str, str | None], Redactor]] = {}
        self._generation = 0  # bumped by forget(): a read that raced it is not cached
        self._lock = threading.Lock()

    def cached(self, project_id: int) -> Redactor | None:
        """The project's step if it is cached and fresh; never touches the database."""
        hit = self._cache.get(project_id)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    def get(self, project_id: int) -> Redactor:
        """The project's step, reading its policy when the cache has none."""
        hit = self.cached(project_id)
        if hit is not None:
            return hit
        generation = self._generation
        policy_json, secret = self.source(project_id)
        built = self._built.get(project_id)
        if built is not None and built[0] == (policy_json, secret):
            step = built[1]  # unchanged: keep the step, and the redactor's warm cache
        else:
            own = project_redactor(PiiPolicy.from_json(policy_json), secret=secret)
            step = chain(((own,) if own is not None else ()) + self.plugins)
        with self._lock:
            if generation != self._generation:
                # forgotten while we read: what we read may predate the change, so it is
                # used for this batch only (the next one reads the policy again)
                return step
            if len(self._cache) > 10_000:
                self._cache.clear()
                self._built.clear()
            self._cache[project_id] = (time.monotonic() + self.ttl, step)
            self._built[project_id] = ((policy_json, secret), step)
        return step

    def forget(self, project_id: int | None = None) -> None:
        """Drop the cached step of one project (or of all)."""
        with self._lock:
            self._generation += 1
            if project_id is None:
                self._cache.clear()
                self._built.clear()
            else:
                self._cache.pop(project_id, None)
                self._built.pop(project_id, None)
