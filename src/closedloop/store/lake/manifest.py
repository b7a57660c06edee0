"""The lake's manifest: which Parquet files hold rows, kept in the hot store's database.

A file belongs to the lake exactly when its row is in ``lake_files``. Tiering inserts that row
in the same transaction that deletes the file's rows from the hot table; erasure and retention
swap or remove rows the same way. Readers list files here, never by globbing, so a file left
behind by a crash (written, not yet published) is never read twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from closedloop.store import models
from closedloop.store.db import utc

__all__ = ["LakeFile", "published", "publish", "unpublish"]

_t = models.lake_files


@dataclass(frozen=True, slots=True)
class LakeFile:
    """One published Parquet file of the lake."""

    id: int
    project_id: int
    entity: str
    day: dt.date
    path: str
    rows: int
    bytes: int
    checksum: str
    schema_version: int
    min_ts: dt.datetime
    max_ts: dt.datetime
    created_at: dt.datetime


def _file(row: Any) -> LakeFile:
    return LakeFile(
        id=row.id,
        project_id=row.project_id,
        entity=row.entity,
        day=row.day,
        path=row.path,
        rows=row.rows,
        bytes=row.bytes,
        checksum=row.checksum,
        schema_version=row.schema_version,
        min_ts=utc(row.min_ts),
        max_ts=utc(row.max_ts),
        created_at=utc(row.created_at),
    )


def published(
    conn: sa.Connection,
    project_id: int | None = None,
    entity: str | None = None,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> list[LakeFile]:
    """Published files, oldest day first; ``since``/``until`` keep files whose rows may fall in
    ``[since, until)`` (by the file's min and max event time)."""
    query = sa.select(_t).order_by(_t.c.project_id, _t.c.entity, _t.c.day, _t.c.id)
    if project_id is not None:
        query = query.where(_t.c.project_id == project_id)
    if entity is not None:
        query = query.where(_t.c.entity == entity)
    if since is not None:
        query = query.where(_t.c.max_ts >= since)
    if until is not None:
        query = query.where(_t.c.min_ts < until)
    return [_file(row) for row in conn.execute(query)]


def publish(conn: sa.Connection, files: Sequence[dict[str, Any]]) -> list[int]:
    """Insert manifest rows (inside the caller's transaction); returns their ids."""
    ids: list[int] = []
    for values in files:
        result = conn.execute(_t.insert().values(**values).returning(_t.c.id))
        ids.append(int(result.scalar_one()))
    return ids


def unpublish(conn: sa.Connection, file_ids: Sequence[int]) -> int:
    """Remove manifest rows (inside the caller's transaction); returns how many."""
    if not file_ids:
        return 0
    return conn.execute(_t.delete().where(_t.c.id.in_(list(file_ids)))).rowcount or 0
