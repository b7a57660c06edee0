"""The lock of the lake's writers: tiering, retention and erasure hold it while they write,
move or delete files, so a file no manifest row lists is garbage whenever the lock is free.

On PostgreSQL it is a session advisory lock (any number of worker processes and machines);
on SQLite a file lock beside the database file (SQLite is one machine's store); within a
process, a lock per database as well. A crashed holder's lock is released with its session
or process.

>>> import sqlalchemy as sa
>>> engine = sa.create_engine("sqlite://")
>>> with lake_lock(engine) as mine, lake_lock(engine) as again:  # re-entrant in a thread
...     mine, again
(True, True)
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.store.db import sqlite_file_lock

__all__ = ["lake_lock"]

log = logging.getLogger(__name__)

_LOCK_KEY = 0x636C_6C61_6B65  # "cllake": the advisory lock of the lake's writers

_guard = threading.Lock()
_local_locks: dict[str, threading.RLock] = {}
_depth: dict[str, int] = {}


@contextlib.contextmanager
def lake_lock(engine: Engine, *, wait: bool = True) -> Iterator[bool]:
    """Hold the lock of the lake's writers; yields whether it was taken (always, with
    ``wait``). Re-entrant within a thread."""
    key = engine.url.render_as_string(hide_password=True)
    with _guard:
        local = _local_locks.setdefault(key, threading.RLock())
    if not local.acquire(blocking=wait):
        yield False
        return
    try:
        depth = _depth.get(key, 0)
        _depth[key] = depth + 1
        if depth:
            yield True
        else:
            with _process_lock(engine, wait=wait) as got:
                yield got
    finally:
        _depth[key] -= 1
        local.release()


@contextlib.contextmanager
def _process_lock(engine: Engine, *, wait: bool) -> Iterator[bool]:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            if wait:
                conn.execute(sa.select(sa.func.pg_advisory_lock(_LOCK_KEY)))
                got = True
            else:
                got = bool(
                    conn.execute(sa.select(sa.func.pg_try_advisory_lock(_LOCK_KEY))).scalar()
                )
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    try:
                        conn.execute(sa.select(sa.func.pg_advisory_unlock(_LOCK_KEY)))
                        conn.commit()
                    except sa.exc.SQLAlchemyError as exc:
                        # closing the session releases it: never pool a connection holding it
                        log.warning("cannot release the lake lock: %s", exc)
                        conn.invalidate()
        return
    with sqlite_file_lock(engine, "lake-lock", wait=wait) as got:
        yield got
