"""Erased end users: the tombstones that keep an erased user's later events out.

A tombstone holds a keyed hash of the user's stored id (the id as the app sent it, or its
pseudonym under ``ids: hash``), keyed by the project's secret, so the erased id itself is kept
nowhere. The ingest path asks :class:`ErasedUsers` about every event that names a user.

>>> key = user_key("secret", "u-1")
>>> len(key), key == user_key("secret", "u-1") != user_key("other", "u-1")
(64, True)
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.store import models
from closedloop.store.db import utcnow
from closedloop.store.retention import ErasedEvents, Retention

__all__ = ["INTERACTION", "ErasedCheck", "ErasedUsers", "add_tombstones", "user_key"]

#: Prefix of the tombstone of an erased user's interaction: feedback and signals sent on it
#: later are kept out like the user's own events.
INTERACTION = "interaction:"


def user_key(secret: str | None, stored_id: str) -> str:
    """The keyed hash that stands for an erased user id in this project."""
    key = (secret or "").encode()
    return hmac.new(key, b"erased:" + stored_id.encode(), hashlib.sha256).hexdigest()


def add_tombstones(conn: sa.Connection, project_id: int, keys: Iterable[str]) -> None:
    """Record erased users (inside the caller's transaction); idempotent."""
    t = models.erased_users
    existing = {
        row[0]
        for row in conn.execute(
            sa.select(t.c.user_key).where(t.c.project_id == project_id, t.c.user_key.in_(keys))
        )
    }
    fresh = [k for k in dict.fromkeys(keys) if k not in existing]
    if fresh:
        now = utcnow()
        conn.execute(
            t.insert(), [{"project_id": project_id, "user_key": k, "erased_at": now} for k in fresh]
        )


@dataclass(frozen=True, slots=True)
class ErasedCheck:
    """Whether a stored user id was erased in one project, and what to do with its events."""

    secret: str | None
    keys: frozenset[str]
    mode: ErasedEvents

    def __call__(self, stored_id: str) -> bool:
        return user_key(self.secret, stored_id) in self.keys

    def interaction(self, interaction_id: str) -> bool:
        """Whether ``interaction_id`` belonged to an erased user."""
        return user_key(self.secret, INTERACTION + interaction_id) in self.keys


class ErasedUsers:
    """Each project's erased users, cached for ``ttl`` seconds per project.

    An erasure in this process calls :meth:`forget` so its tombstone applies at once; other
    processes see it within ``ttl``.
    """

    def __init__(self, engine: Engine, *, ttl: float = 5.0) -> None:
        self.engine = engine
        self.ttl = ttl
        self._cache: dict[int, tuple[float, ErasedCheck | None]] = {}
        self._lock = threading.Lock()
        # bumped by forget(): a read that began before it is not cached (it may predate the
        # tombstone that made forget() necessary)
        self._generation = 0

    def cached(self, project_id: int) -> bool:
        """Whether the project's check is at hand without I/O."""
        hit = self._cache.get(project_id)
        return hit is not None and hit[0] > time.monotonic()

    def checker(self, project_id: int) -> ErasedCheck | None:
        """The project's check, or ``None`` when it erased nobody (the common case)."""
        now = time.monotonic()
        hit = self._cache.get(project_id)
        if hit is not None and hit[0] > now:
            return hit[1]
        t, p = models.erased_users, models.projects
        generation = self._generation
        with self.engine.connect() as conn:
            keys = frozenset(
                row[0]
                for row in conn.execute(sa.select(t.c.user_key).where(t.c.project_id == project_id))
            )
            check = None
            if keys:
                row = conn.execute(
                    sa.select(p.c.pii_secret, p.c.retention).where(p.c.id == project_id)
                ).one()
                mode = Retention.stored(row.retention).erased_events
                check = ErasedCheck(secret=row.pii_secret, keys=keys, mode=mode)
        if self.ttl > 0:
            with self._lock:
                if generation == self._generation:
                    self._cache[project_id] = (now + self.ttl, check)
        return check

    def forget(self, project_id: int) -> None:
        """Drop the cached entry of ``project_id`` (after an erasure in this process)."""
        with self._lock:
            self._generation += 1
            self._cache.pop(project_id, None)
