"""Engines for the hot store, with the durability settings the ingest promise needs.

SQLite runs in WAL mode with ``synchronous=FULL`` by default (a commit survives power loss);
every connection the pool hands out gets the pragmas, and a test checks each one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from closedloop.errors import ConfigError

__all__ = [
    "create_engine",
    "is_postgresql",
    "is_sqlite",
    "single_flight",
    "sqlite_file_lock",
    "utc",
    "utcnow",
]


def utcnow() -> dt.datetime:
    """The current time, timezone-aware, in UTC."""
    return dt.datetime.now(dt.UTC)


@overload
def utc(value: dt.datetime) -> dt.datetime: ...
@overload
def utc(value: None) -> None: ...
def utc(value: dt.datetime | None) -> dt.datetime | None:
    """Attach UTC to a naive timestamp read back from SQLite; convert aware ones to UTC."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def is_sqlite(engine: Engine) -> bool:
    """Whether ``engine`` talks to SQLite."""
    return engine.dialect.name == "sqlite"


def is_postgresql(engine: Engine) -> bool:
    """Whether ``engine`` talks to PostgreSQL."""
    return engine.dialect.name == "postgresql"


_flights_guard = threading.Lock()
_flights: dict[tuple[str, int], threading.Lock] = {}


def _forget_flights() -> None:
    """In a forked child: no thread of the parent runs here, so none of its locks is held."""
    global _flights_guard, _flights
    _flights_guard = threading.Lock()
    _flights = {}


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_flights)


@contextlib.contextmanager
def single_flight(engine: Engine, key: int) -> Iterator[bool]:
    """Whether this process may run the job that ``key`` names, now (``False`` while another
    run holds it; never waits): on PostgreSQL a session advisory lock (one holder across
    processes and machines); on SQLite a lock per database in the process and a file lock
    beside the database file (a CLI run beside a server's worker).

    >>> engine = create_engine("sqlite://")
    >>> with single_flight(engine, 7) as mine, single_flight(engine, 7) as again:
    ...     mine, again
    (True, False)
    """
    if not is_postgresql(engine):
        with _sqlite_flight(engine, key) as got:
            yield got
        return
    with engine.connect() as conn:
        got = bool(conn.execute(sa.select(sa.func.pg_try_advisory_lock(key))).scalar())
        conn.commit()
        try:
            yield got
        finally:
            if got:
                conn.execute(sa.select(sa.func.pg_advisory_unlock(key)))
                conn.commit()


@contextlib.contextmanager
def _sqlite_flight(engine: Engine, key: int) -> Iterator[bool]:
    name = engine.url.render_as_string(hide_password=True)
    if not engine.url.database or engine.url.database == ":memory:":
        name += f"#{id(engine)}"  # each in-memory database is its own
    with _flights_guard:
        local = _flights.setdefault((name, key), threading.Lock())
    if not local.acquire(blocking=False):
        yield False
        return
    try:
        with sqlite_file_lock(engine, f"job-{key:x}.lock", wait=False) as got:
            yield got
    finally:
        local.release()


@contextlib.contextmanager
def sqlite_file_lock(engine: Engine, suffix: str, *, wait: bool) -> Iterator[bool]:
    """An exclusive file lock beside a SQLite database file (``<database>.<suffix>``), for
    processes on one machine; yields whether it was taken (always, with ``wait``). A database
    with no file (in memory) or no ``flock`` (Windows) has one process: ``True``. A crashed
    holder's lock is released with its process."""
    database = engine.url.database
    if sys.platform == "win32" or not database or database == ":memory:":
        yield True  # one process: the caller's thread lock is the lock
        return
    import fcntl

    fd = os.open(f"{database}.{suffix}", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def create_engine(url: str, *, sqlite_synchronous: str = "FULL", **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite files get WAL and the given ``synchronous`` level.

    >>> engine = create_engine("sqlite://")
    >>> with engine.connect() as conn:
    ...     conn.exec_driver_sql("PRAGMA synchronous").scalar()
    2
    """
    parsed = make_url(url)
    # Errors and logs never print the statement's parameters: they hold event text and ids.
    kwargs.setdefault("hide_parameters", True)
    if parsed.get_backend_name() == "sqlite":
        if sqlite_synchronous not in ("FULL", "EXTRA", "NORMAL"):
            raise ConfigError(
                f"sqlite_synchronous={sqlite_synchronous!r}: use FULL, EXTRA or NORMAL"
            )
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            parsed, connect_args={"timeout": 30, "check_same_thread": False}, **kwargs
        )

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            try:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute(f"PRAGMA synchronous={sqlite_synchronous}")
                cursor.execute("PRAGMA busy_timeout=30000")
                cursor.execute("PRAGMA foreign_keys=ON")
            finally:
                cursor.close()

        return engine
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 10)
        kwargs.setdefault("pool_pre_ping", True)
        return sa.create_engine(parsed, connect_args={"connect_timeout": 5}, **kwargs)
    raise ConfigError(
        f"database_url {url!r} is not supported: use sqlite:///PATH or "
        "postgresql+psycopg://USER@HOST:PORT/DB"
    )
