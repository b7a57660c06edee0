"""Small JSON state of the analysis jobs (watermarks), one row per project and name."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from closedloop.store import models
from closedloop.store.db import utcnow

__all__ = ["load_state", "save_state"]


def load_state(conn: Connection, project_id: int, name: str, *, for_update: bool = False) -> Any:
    """The state stored under ``name``, or ``None``; ``for_update`` locks its row until the
    transaction ends (PostgreSQL; SQLite has one writer at a time anyway)."""
    t = models.analysis_state
    query = sa.select(t.c.value).where(t.c.project_id == project_id, t.c.name == name)
    value = conn.execute(query.with_for_update() if for_update else query).scalar()
    return None if value is None else json.loads(value)


def save_state(conn: Connection, project_id: int, name: str, value: Any) -> None:
    """Store ``value`` (JSON) under ``name``, replacing what was there."""
    t = models.analysis_state
    values = {"value": json.dumps(value), "updated_at": utcnow()}
    where = (t.c.project_id == project_id, t.c.name == name)
    if conn.execute(t.update().where(*where).values(**values)).rowcount == 0:
        conn.execute(t.insert().values(project_id=project_id, name=name, **values))
