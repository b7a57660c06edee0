"""Write a group of prepared events in one transaction, effectively once.

The id ledger (``event_ids``) is inserted first with ``ON CONFLICT DO NOTHING ... RETURNING``:
the ids it returns are new and their rows are inserted; the others are duplicates. Whole
groups go in multi-row statements, never a savepoint per row.

This is the group commit's hottest loop, so rows reach the driver as plain tuples: the
statements are built once per dialect and the columns' bind processors (SQLAlchemy's own, e.g.
SQLite's datetime format) applied by hand. That stores exactly what ``conn.execute(insert,
rows)`` would, at about a third of SQLAlchemy's per-row parameter-processing cost. SQLite gets
``executemany``; PostgreSQL gets the ledger as one ``INSERT ... SELECT FROM unnest(arrays)``
(a constant statement, where a multi-row VALUES list would be re-parsed by psycopg for every
group) and the rows by ``COPY``, which fails on a conflicting key exactly like ``INSERT``.
"""

from __future__ import annotations

import operator
import weakref
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Dialect

from closedloop.store import models
from closedloop.store.db import utcnow
from closedloop.types import PreparedEvent

__all__ = ["TABLES", "write_events"]

TABLES: dict[str, sa.Table] = {
    "interaction": models.interactions,
    "feedback": models.feedback,
    "signal": models.signals,
}


_LEDGER_KEYS = ("project_id", "event_id", "type", "received_at")
_MAX_PARAMS = 32_000  # below SQLite's 32766 and PostgreSQL's 65535 bound parameters


class _Insert:
    """A plain ``INSERT INTO table (keys) VALUES ...`` (or ``COPY``) built for one dialect."""

    def __init__(self, dialect: Dialect, table: sa.Table, keys: tuple[str, ...]) -> None:
        quote = dialect.identifier_preparer.quote
        mark = "?" if dialect.paramstyle == "qmark" else "%s"
        target = (
            f"{dialect.identifier_preparer.format_table(table)} "
            f"({', '.join(quote(k) for k in keys)})"
        )
        self.head = f"INSERT INTO {target} VALUES "
        self.copy = f"COPY {target} FROM STDIN"
        self.values = f"({', '.join([mark] * len(keys))})"
        self.max_rows = min(1000, _MAX_PARAMS // len(keys))
        self.processors: dict[str, Callable[[Any], Any]] = {}
        for key in keys:
            process = table.c[key].type.dialect_impl(dialect).bind_processor(dialect)
            if process is not None:
                self.processors[key] = process

    def sql(self, rows: int = 1, tail: str = "") -> str:
        """The statement for ``rows`` rows of values."""
        return self.head + ", ".join([self.values] * rows) + tail

    def bind(self, key: str, value: Any) -> Any:
        """``value`` as the driver receives it for column ``key``."""
        process = self.processors.get(key)
        return value if process is None else process(value)


_inserts: weakref.WeakKeyDictionary[Dialect, dict[tuple[str, tuple[str, ...]], _Insert]] = (
    weakref.WeakKeyDictionary()
)


def _insert(dialect: Dialect, table: sa.Table, keys: tuple[str, ...]) -> _Insert:
    cache = _inserts.setdefault(dialect, {})
    insert = cache.get((table.name, keys))
    if insert is None:
        insert = cache[(table.name, keys)] = _Insert(dialect, table, keys)
    return insert


_LEDGER_UNNEST = (
    "INSERT INTO event_ids (project_id, event_id, type, received_at) "
    "SELECT p, e, t, %s::timestamptz FROM unnest(%s::integer[], %s::text[], %s::text[]) "
    "AS u(p, e, t) ON CONFLICT DO NOTHING RETURNING project_id, event_id"
)


def _insert_ledger(
    conn: Connection, events: Sequence[PreparedEvent], received_at: Any
) -> set[tuple[int, str]]:
    """Insert the ids; return the ``(project_id, event_id)`` pairs that were new."""
    if conn.dialect.name == "postgresql":
        arrays = (
            [e.project_id for e in events],
            [e.event_id for e in events],
            [e.type for e in events],
        )
        result = conn.exec_driver_sql(_LEDGER_UNNEST, (received_at, *arrays))
        return {(row[0], row[1]) for row in result}
    insert = _insert(conn.dialect, models.event_ids, _LEDGER_KEYS)
    received = insert.bind("received_at", received_at)
    new: set[tuple[int, str]] = set()
    for start in range(0, len(events), insert.max_rows):
        page = events[start : start + insert.max_rows]
        params: list[Any] = []
        for e in page:
            params += (e.project_id, e.event_id, e.type, received)
        sql = insert.sql(len(page), " ON CONFLICT DO NOTHING RETURNING project_id, event_id")
        new.update((row[0], row[1]) for row in conn.exec_driver_sql(sql, tuple(params)))
    return new


def _insert_rows(
    conn: Connection, table: sa.Table, rows: list[dict[str, Any]], received_at: Any
) -> None:
    """Insert ``rows`` (with ``received_at``); the columns are the first row's."""
    keys = tuple(k for k in rows[0] if k != "received_at")
    insert = _insert(conn.dialect, table, (*keys, "received_at"))
    received = insert.bind("received_at", received_at)
    convert = [(i, insert.processors[k]) for i, k in enumerate(keys) if k in insert.processors]
    values = operator.itemgetter(*keys)
    params: list[tuple[Any, ...]] = []
    for row in rows:
        row_values = values(row) if len(keys) > 1 else (values(row),)
        if convert:
            row_values = list(row_values)
            for i, process in convert:
                row_values[i] = process(row_values[i])
        params.append((*row_values, received))
    if conn.dialect.name == "postgresql":
        _copy(conn, insert.copy, params)
        return
    conn.exec_driver_sql(insert.sql(), params)


def _copy(conn: Connection, statement: str, rows: list[tuple[Any, ...]]) -> None:
    """``COPY ... FROM STDIN`` on the connection's psycopg 3 driver, in its transaction.

    A driver error is raised as the same SQLAlchemy exception an ``INSERT`` would raise
    (``IntegrityError``, ``OperationalError``, ...), so callers see no difference.
    """
    driver: Any = conn.connection.driver_connection
    error = conn.dialect.loaded_dbapi.Error
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(row)
    except error as exc:
        raise sa.exc.DBAPIError.instance(
            statement,
            None,
            exc,
            error,
            connection_invalidated=conn.dialect.is_disconnect(exc, driver, None),
            dialect=conn.dialect,
        ) from exc


def write_events(conn: Connection, events: Sequence[PreparedEvent]) -> list[bool]:
    """Insert ``events`` inside the caller's transaction; return, per event, whether it is new.

    ``events`` must not repeat a ``(project_id, event_id)`` pair (the pipeline removes
    in-batch duplicates first).
    """
    if not events:
        return []
    received_at = utcnow()
    new = _insert_ledger(conn, events, received_at)
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    fresh: list[bool] = []
    for e in events:
        is_new = (e.project_id, e.event_id) in new
        fresh.append(is_new)
        if is_new:
            by_type[e.type].append(e.row)
    for type_, rows in by_type.items():
        _insert_rows(conn, TABLES[type_], rows, received_at)
    return fresh
