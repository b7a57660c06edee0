"""Rows of the ``vectors`` table: insert (idempotent), read by ``seq``, delete for erasure and
retention.

A vector is stored as float32 bytes (``dim`` of them) beside the hot rows it embeds. Its
``seq`` (autoincrement) is its key in the approximate-nearest-neighbour index
(:mod:`closedloop.store.vectors.index`), which follows the table by ``seq``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from closedloop.store import models
from closedloop.store.db import utcnow

__all__ = [
    "KINDS",
    "NewVector",
    "delete_for_interactions",
    "delete_for_refs",
    "delete_for_users",
    "delete_older_than",
    "from_blob",
    "insert_vectors",
    "load_after",
    "max_seq",
]

KINDS = ("input", "correction", "comment")
"""What a vector embeds: an interaction's input, or a feedback's correction or comment."""

_CHUNK = 400  # ids per IN (...) list
_KEY = ["project_id", "model", "kind", "ref_id"]


@dataclass(frozen=True, kw_only=True)
class NewVector:
    """A vector to store; ``ref_id`` is the interaction's id for an input, the feedback's id
    for a correction or comment."""

    project_id: int
    model: str
    kind: str
    ref_id: str
    interaction_id: str
    user_id: str | None
    ts: dt.datetime
    vector: npt.NDArray[np.float32]
    text_hash: str


def from_blob(blob: bytes) -> npt.NDArray[np.float32]:
    """A stored vector as a float32 array."""
    return np.frombuffer(blob, dtype=np.float32)


def insert_vectors(
    conn: Connection, rows: Sequence[NewVector], *, require_source: bool = False
) -> int:
    """Store ``rows``; one already stored (same project, model, kind and ref) is kept as it
    is. With ``require_source``, rows whose interaction or feedback is no longer stored are
    left out (the embedding job's texts may have been erased while they were embedded).
    Returns how many were new."""
    if not rows:
        return 0
    for r in rows:
        if r.kind not in KINDS:
            raise ValueError(f"kind {r.kind!r}: use one of {', '.join(KINDS)}")
        if r.ts.utcoffset() is None:
            raise ValueError("ts must be timezone-aware")
    now = utcnow()
    values: list[dict[str, Any]] = [
        {
            "project_id": r.project_id,
            "model": r.model,
            "kind": r.kind,
            "ref_id": r.ref_id,
            "interaction_id": r.interaction_id,
            "user_id": r.user_id,
            "ts": r.ts.astimezone(dt.UTC),
            "dim": int(r.vector.shape[0]),
            "vector": np.ascontiguousarray(r.vector, dtype=np.float32).tobytes(),
            "text_hash": r.text_hash,
            "created_at": now,
        }
        for r in rows
    ]
    if require_source:
        values = _still_stored(conn, values)
    if not values:
        return 0
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(models.vectors)
        .on_conflict_do_nothing(index_elements=_KEY)
        .returning(models.vectors.c.seq)
    )
    return len(conn.execute(stmt, values).all())


def _still_stored(conn: Connection, values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The vectors whose source row (interaction or feedback) is still stored.

    The texts were read before they were embedded; an erasure may have deleted them since.
    On PostgreSQL the source rows are locked (``FOR KEY SHARE``) until this transaction
    ends, so an erasure deleting them waits and then deletes these vectors too; on SQLite
    the transactions are serialised.
    """
    keep: set[tuple[int, str, str]] = set()
    for kind, table in (("input", models.interactions), ("feedback", models.feedback)):
        wanted = [v for v in values if (v["kind"] == "input") == (kind == "input")]
        for project_id in {v["project_id"] for v in wanted}:
            ids = sorted({v["ref_id"] for v in wanted if v["project_id"] == project_id})
            for start in range(0, len(ids), _CHUNK):
                query = sa.select(table.c.id).where(
                    table.c.project_id == project_id, table.c.id.in_(ids[start : start + _CHUNK])
                )
                if conn.dialect.name == "postgresql":
                    query = query.with_for_update(key_share=True)
                keep.update((project_id, kind, i) for i in conn.execute(query).scalars())
    return [
        v
        for v in values
        if (v["project_id"], "input" if v["kind"] == "input" else "feedback", v["ref_id"]) in keep
    ]


def max_seq(conn: Connection, project_id: int, model: str) -> int:
    """The highest ``seq`` of the project's vectors of ``model`` (0 when there are none)."""
    v = models.vectors
    found = conn.execute(
        sa.select(sa.func.max(v.c.seq)).where(v.c.project_id == project_id, v.c.model == model)
    ).scalar()
    return int(found or 0)


def load_after(
    conn: Connection, project_id: int, model: str, after: int, *, limit: int = 10_000
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.float32]]:
    """Up to ``limit`` vectors with ``seq > after``, in ``seq`` order: their keys and a
    ``(n, dim)`` matrix. Rows of another length than the first are skipped."""
    v = models.vectors
    rows = conn.execute(
        sa.select(v.c.seq, v.c.vector)
        .where(v.c.project_id == project_id, v.c.model == model, v.c.seq > after)
        .order_by(v.c.seq)
        .limit(limit)
    ).all()
    if not rows:
        return np.zeros(0, dtype=np.uint64), np.zeros((0, 0), dtype=np.float32)
    dim = len(rows[0].vector) // 4
    kept = [r for r in rows if len(r.vector) == 4 * dim]
    keys = np.fromiter((r.seq for r in kept), dtype=np.uint64, count=len(kept))
    matrix = np.frombuffer(b"".join(r.vector for r in kept), dtype=np.float32).reshape(-1, dim)
    return keys, matrix


def _delete(conn: Connection, condition: sa.ColumnElement[bool]) -> int:
    return int(conn.execute(models.vectors.delete().where(condition)).rowcount or 0)


def _chunked(conn: Connection, column: sa.Column[Any], ids: Iterable[str], base: Any) -> int:
    items = sorted(set(ids))
    return sum(
        _delete(conn, sa.and_(base, column.in_(items[s : s + _CHUNK])))
        for s in range(0, len(items), _CHUNK)
    )


def delete_for_interactions(
    conn: Connection, project_id: int, interaction_ids: Iterable[str]
) -> int:
    """Delete every vector of these interactions (their inputs, and the corrections and
    comments of their feedback), of every model. Returns how many were deleted."""
    v = models.vectors
    return _chunked(conn, v.c.interaction_id, interaction_ids, v.c.project_id == project_id)


def delete_for_refs(
    conn: Connection, project_id: int, ref_ids: Iterable[str], *, kinds: Sequence[str] = KINDS
) -> int:
    """Delete the vectors of these refs (interaction ids for ``input``, feedback ids for
    ``correction`` and ``comment``), of every model. Returns how many were deleted."""
    v = models.vectors
    base = sa.and_(v.c.project_id == project_id, v.c.kind.in_(list(kinds)))
    return _chunked(conn, v.c.ref_id, ref_ids, base)


def delete_for_users(conn: Connection, project_id: int, user_ids: Iterable[str]) -> int:
    """Delete every vector stored with these (stored, i.e. possibly pseudonymised) user ids.
    Returns how many were deleted."""
    v = models.vectors
    return _chunked(conn, v.c.user_id, user_ids, v.c.project_id == project_id)


def delete_older_than(conn: Connection, project_id: int, before: dt.datetime) -> int:
    """Retention: delete the project's vectors of texts from before ``before`` (by the
    embedded event's time). Returns how many were deleted."""
    if before.utcoffset() is None:
        raise ValueError("before must be timezone-aware")
    v = models.vectors
    return _delete(conn, sa.and_(v.c.project_id == project_id, v.c.ts < before))
