"""The registry of exported files, and whose rows each one holds.

Anything that writes a file from the store's rows (a fine-tuning or preference dataset, a CSV
for a reviewer) records it here with the users its rows came from, by the same keyed hash the
erasure tombstones use (:func:`closedloop.store.erased.user_key`). Erasing a user deletes the
files that held them and says so in the receipt; the export can be made again without them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa

from closedloop.store import models
from closedloop.store.db import utcnow
from closedloop.store.erased import user_key

__all__ = ["ExportFile", "exports_holding", "mark_deleted", "record_export"]


@dataclass(frozen=True, slots=True)
class ExportFile:
    """A recorded export."""

    id: int
    kind: str
    url: str
    rows: int


def record_export(
    conn: sa.Connection,
    project_id: int,
    *,
    kind: str,
    url: str,
    rows: int,
    user_ids: Iterable[str],
    secret: str | None,
) -> int:
    """Record an export file and the (stored) user ids of its rows; returns its id."""
    export_id = int(
        conn.execute(
            models.export_files.insert()
            .values(project_id=project_id, kind=kind, url=url, rows=rows, created_at=utcnow())
            .returning(models.export_files.c.id)
        ).scalar_one()
    )
    keys = sorted({user_key(secret, u) for u in user_ids if u})
    if keys:
        conn.execute(
            models.export_users.insert(), [{"export_id": export_id, "user_key": k} for k in keys]
        )
    return export_id


def exports_holding(conn: sa.Connection, project_id: int, keys: Iterable[str]) -> list[ExportFile]:
    """The project's live export files that hold any of the users ``keys``."""
    f, u = models.export_files, models.export_users
    rows = conn.execute(
        sa.select(f.c.id, f.c.kind, f.c.url, f.c.rows)
        .where(
            f.c.project_id == project_id,
            f.c.deleted_at.is_(None),
            f.c.id.in_(sa.select(u.c.export_id).where(u.c.user_key.in_(list(keys)))),
        )
        .order_by(f.c.id)
    )
    return [ExportFile(id=r.id, kind=r.kind, url=r.url, rows=r.rows) for r in rows]


def mark_deleted(conn: sa.Connection, export_ids: Iterable[int]) -> None:
    """Mark exports deleted and forget whose rows they held."""
    ids = list(export_ids)
    if not ids:
        return
    conn.execute(
        models.export_files.update()
        .where(models.export_files.c.id.in_(ids))
        .values(deleted_at=utcnow())
    )
    conn.execute(models.export_users.delete().where(models.export_users.c.export_id.in_(ids)))
