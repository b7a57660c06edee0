"""Write a group of prepared events in one transaction, effectively once.

The id ledger (``event_ids``) is inserted first with ``ON CONFLICT DO NOTHING ... RETURNING``:
the ids it returns are new and their rows are inserted; the others are duplicates. Whole
groups go in multi-row statements (SQLAlchemy's insertmanyvalues), never a savepoint per row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from closedloop.store import models
from closedloop.store.db import utcnow
from closedloop.types import PreparedEvent

__all__ = ["TABLES", "write_events"]

TABLES: dict[str, sa.Table] = {
    "interaction": models.interactions,
    "feedback": models.feedback,
    "signal": models.signals,
}


def _ledger_insert(conn: Connection) -> Any:
    table = models.event_ids
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def write_events(conn: Connection, events: Sequence[PreparedEvent]) -> list[bool]:
    """Insert ``events`` inside the caller's transaction; return, per event, whether it is new.

    ``events`` must not repeat a ``(project_id, event_id)`` pair (the pipeline removes
    in-batch duplicates first).
    """
    if not events:
        return []
    received_at = utcnow()
    ledger = [
        {
            "project_id": e.project_id,
            "event_id": e.event_id,
            "type": e.type,
            "received_at": received_at,
        }
        for e in events
    ]
    stmt = _ledger_insert(conn).returning(
        models.event_ids.c.project_id, models.event_ids.c.event_id
    )
    new = {(row[0], row[1]) for row in conn.execute(stmt, ledger)}
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    fresh: list[bool] = []
    for e in events:
        is_new = (e.project_id, e.event_id) in new
        fresh.append(is_new)
        if is_new:
            row = dict(e.row)
            row["received_at"] = received_at
            by_type[e.type].append(row)
    for type_, rows in by_type.items():
        conn.execute(TABLES[type_].insert(), rows)
    return fresh
