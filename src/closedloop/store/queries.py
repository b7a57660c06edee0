"""Read queries of the hot store, always scoped by project.

Lists page with an opaque cursor over ``(ts, id)``, newest first.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Row

from closedloop.errors import ContractError, NotFound
from closedloop.events import FEEDBACK_KINDS
from closedloop.store import models
from closedloop.store.db import utc

__all__ = [
    "InteractionFilter",
    "Page",
    "decode_cursor",
    "encode_cursor",
    "get_feedback",
    "get_interaction",
    "get_signal",
    "instant",
    "interaction_context",
    "enrichment_status",
    "get_session",
    "list_feedback",
    "list_interactions",
]


@dataclass(frozen=True, kw_only=True)
class InteractionFilter:
    """Filters of the interaction list; every one is optional."""

    since: dt.datetime | None = None
    until: dt.datetime | None = None
    model: str | None = None
    model_version: str | None = None
    prompt: str | None = None
    prompt_version: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    feedback_kind: str | None = None
    feedback_value: str | None = None


@dataclass(frozen=True, kw_only=True)
class Page:
    """One page of results and the cursor of the next (``None`` at the end)."""

    data: list[dict[str, Any]]
    next_cursor: str | None


def encode_cursor(ts: dt.datetime, id: str) -> str:
    """An opaque cursor for the position after ``(ts, id)``."""
    raw = json.dumps([ts.isoformat(), id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    """The position an opaque cursor stands for.

    >>> when = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    >>> decode_cursor(encode_cursor(when, "a")) == (when, "a")
    True
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        ts, id = json.loads(base64.urlsafe_b64decode(padded.encode()))
        when, key = dt.datetime.fromisoformat(ts), str(id)
        if "\x00" in key:
            raise ValueError("a NUL character in the id")
        # compare instants in UTC: SQLite stores UTC wall time and drops any other offset
        when = when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)
        return when, key
    except (ValueError, TypeError, OverflowError) as exc:
        raise ContractError(
            "cursor", "is not a cursor this API issued; pass next_cursor unchanged"
        ) from exc


def _text(field: str, value: str) -> str:
    """``value``, refused when it holds a NUL: no stored text has one (ingest rejects it) and
    PostgreSQL cannot even compare with it."""
    if "\x00" in value:
        raise ContractError(field, "contains a NUL character (U+0000); remove it")
    return value


@overload
def instant(field: str, value: dt.datetime) -> dt.datetime: ...
@overload
def instant(field: str, value: None) -> None: ...
def instant(field: str, value: dt.datetime | None) -> dt.datetime | None:
    """``value`` in UTC; a time that has none (year 1 at +01:00) is the caller's error
    (a ``ContractError`` naming ``field``)."""
    try:
        return utc(value)
    except OverflowError as exc:
        raise ContractError(field, "lies outside the representable range of times") from exc


def _when(value: Any) -> str | None:
    ts = utc(value)
    return ts.isoformat() if ts is not None else None


def _event(row: Row[Any]) -> dict[str, Any]:
    """The API shape of a stored event: id, times, then its body's fields, then what
    enrichment added (an interaction's quality, a feedback's or signal's join state)."""
    out = {
        "id": row.id,
        "timestamp": _when(row.ts),
        "received_at": _when(row.received_at),
        **json.loads(row.body),
    }
    fields = row._mapping
    if "enriched_at" in fields:
        out["quality"] = (
            {"value": row.quality, "basis": row.quality_basis}
            if row.enriched_at is not None
            else None
        )
    if "join_state" in fields:
        out["join"] = {"state": row.join_state, "reason": row.orphan_reason}
    if "source" in fields:  # a feedback's source, also when its body left the default out
        out["source"] = row.source
    return out


def _page(
    conn: Connection, table: sa.Table, query: sa.Select[Any], *, limit: int, cursor: str | None
) -> Page:
    """Run ``query`` newest first from ``cursor`` on; one page and the next cursor."""
    if cursor is not None:
        ts, id = decode_cursor(cursor)
        query = query.where(sa.or_(table.c.ts < ts, sa.and_(table.c.ts == ts, table.c.id < id)))
    order = (table.c.ts.desc(), table.c.id.desc())
    rows = conn.execute(query.order_by(*order).limit(limit + 1)).all()
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_cursor(utc(rows[-1].ts) or rows[-1].ts, rows[-1].id)
    return Page(data=[_event(r) for r in rows], next_cursor=next_cursor)


def _feedback_condition(kind: str, value: str | None) -> sa.ColumnElement[bool]:
    fb = models.feedback
    if kind not in FEEDBACK_KINDS:
        raise ContractError("feedback_kind", f"use one of {', '.join(FEEDBACK_KINDS)}")
    column = fb.c[kind]
    cond: sa.ColumnElement[bool] = column.is_not(None)
    if value is not None:
        if kind in ("thumbs", "rating"):
            try:
                number = float(value)
            except ValueError as exc:
                raise ContractError("feedback_value", f"must be a number for {kind}") from exc
            cond = column == number
        elif kind == "label":
            cond = column == _text("feedback_value", value)
        else:
            raise ContractError(
                "feedback_value", "applies to thumbs, rating and label only; drop it"
            )
    return cond


def list_interactions(
    conn: Connection,
    project_id: int,
    filters: InteractionFilter,
    *,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Interactions of ``project_id`` matching ``filters``, newest first."""
    t = models.interactions
    query = sa.select(t).where(t.c.project_id == project_id)
    simple = {
        "model": t.c.model_name,
        "model_version": t.c.model_version,
        "prompt": t.c.prompt_name,
        "prompt_version": t.c.prompt_version,
        "user_id": t.c.user_id,
        "session_id": t.c.session_id,
    }
    for name, column in simple.items():
        value = getattr(filters, name)
        if value is not None:
            query = query.where(column == _text(name, value))
    # in UTC, naive as UTC: SQLite stores UTC wall time and would drop any other offset
    if filters.since is not None:
        query = query.where(t.c.ts >= instant("since", filters.since))
    if filters.until is not None:
        query = query.where(t.c.ts < instant("until", filters.until))
    if filters.feedback_kind is not None:
        fb = models.feedback
        query = query.where(
            sa.exists().where(
                fb.c.project_id == project_id,
                fb.c.interaction_id == t.c.id,
                _feedback_condition(filters.feedback_kind, filters.feedback_value),
            )
        )
    elif filters.feedback_value is not None:
        raise ContractError("feedback_value", "needs feedback_kind; add feedback_kind=thumbs")
    return _page(conn, t, query, limit=limit, cursor=cursor)


def get_interaction(conn: Connection, project_id: int, id: str) -> dict[str, Any]:
    """One interaction with its feedback and signals (arrived before or after it)."""
    t = models.interactions
    row = conn.execute(
        sa.select(t).where(t.c.project_id == project_id, t.c.id == _text("interaction_id", id))
    ).first()
    if row is None:
        raise NotFound(f"no interaction {id!r} in this project")
    out = _event(row)
    enrichment = json.loads(row.enrichment) if row.enrichment else {}
    out["measures"] = enrichment.get("measures", [])
    if out["quality"] is not None:
        out["quality"]["evidence"] = enrichment.get("evidence", [])
        out["quality"]["enriched_at"] = _when(row.enriched_at)
    for key, table in (("feedback", models.feedback), ("signals", models.signals)):
        rows = conn.execute(
            sa.select(table)
            .where(table.c.project_id == project_id, table.c.interaction_id == id)
            .order_by(table.c.ts, table.c.id)
        )
        out[key] = [_event(r) for r in rows]
    return out


def _get_one(conn: Connection, table: sa.Table, project_id: int, id: str, what: str) -> Any:
    row = conn.execute(
        sa.select(table).where(
            table.c.project_id == project_id, table.c.id == _text(f"{what}_id", id)
        )
    ).first()
    if row is None:
        raise NotFound(f"no {what} {id!r} in this project")
    return row


def interaction_context(
    conn: Connection, project_id: int, interaction_ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """What feedback and signals join to, by interaction id: session, user and the metadata
    the app sent, model and prompt, and the interaction's quality. Ids not in the hot store
    are left out."""
    i = models.interactions
    ids = sorted(set(interaction_ids))
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 500):
        rows = conn.execute(
            sa.select(i).where(i.c.project_id == project_id, i.c.id.in_(ids[start : start + 500]))
        )
        for row in rows:
            body = json.loads(row.body)
            out[row.id] = {
                "session_id": row.session_id,
                "user_id": row.user_id,
                "metadata": body.get("metadata", {}),
                "model": body.get("model"),
                "prompt": body.get("prompt"),
                "timestamp": _when(row.ts),
                "quality": _event(row)["quality"],
            }
    return out


def _with_context(conn: Connection, project_id: int, items: list[dict[str, Any]]) -> None:
    context = interaction_context(conn, project_id, (x["interaction_id"] for x in items))
    for item in items:
        item["interaction"] = context.get(item["interaction_id"])


def get_feedback(conn: Connection, project_id: int, id: str) -> dict[str, Any]:
    """One feedback event, with the context of its interaction (``null`` until it arrives)."""
    item = _event(_get_one(conn, models.feedback, project_id, id, "feedback"))
    _with_context(conn, project_id, [item])
    return item


def get_signal(conn: Connection, project_id: int, id: str) -> dict[str, Any]:
    """One signal event, with the context of its interaction (``null`` until it arrives)."""
    item = _event(_get_one(conn, models.signals, project_id, id, "signal"))
    _with_context(conn, project_id, [item])
    return item


def list_feedback(
    conn: Connection,
    project_id: int,
    *,
    interaction_id: str | None = None,
    orphaned: bool | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> Page:
    """Feedback of a project, newest first; ``orphaned=True`` keeps feedback whose
    interaction has not arrived (yet)."""
    fb, t = models.feedback, models.interactions
    query = sa.select(fb).where(fb.c.project_id == project_id)
    if interaction_id is not None:
        query = query.where(fb.c.interaction_id == _text("interaction_id", interaction_id))
    if orphaned is not None:
        has = sa.exists().where(t.c.project_id == project_id, t.c.id == fb.c.interaction_id)
        query = query.where(~has if orphaned else has)
    page = _page(conn, fb, query, limit=limit, cursor=cursor)
    _with_context(conn, project_id, page.data)
    return page


_SESSION_IDS = 500


def get_session(conn: Connection, project_id: int, session_id: str) -> dict[str, Any]:
    """A session's aggregates (kept by the enrichment job) and its interaction ids."""
    s, i = models.sessions, models.interactions
    row = conn.execute(
        sa.select(s).where(
            s.c.project_id == project_id, s.c.session_id == _text("session_id", session_id)
        )
    ).first()
    if row is None:
        raise NotFound(
            f"no enriched session {session_id!r} in this project (enrichment runs every few "
            "seconds after its first interaction is stored)"
        )
    recent = conn.execute(
        sa.select(i.c.id)
        .where(i.c.project_id == project_id, i.c.session_id == session_id)
        .order_by(i.c.ts.desc(), i.c.id.desc())
        .limit(_SESSION_IDS + 1)
    ).scalars()
    ids = list(recent)
    return {
        "session_id": row.session_id,
        "user_id": row.user_id,
        "first_ts": _when(row.first_ts),
        "last_ts": _when(row.last_ts),
        "turns": row.turns,
        "feedback_count": row.feedback_count,
        "signal_count": row.signal_count,
        "last_interaction_id": row.last_interaction_id,
        "abandoned": row.abandoned,
        "abandon_source": row.abandon_source,
        "mean_quality": row.mean_quality,
        "updated_at": _when(row.updated_at),
        # the most recent ones, in time order
        "interaction_ids": ids[:_SESSION_IDS][::-1],
        "interaction_ids_truncated": len(ids) > _SESSION_IDS,
    }


def enrichment_status(conn: Connection, project_id: int) -> dict[str, Any]:
    """How far enrichment has come in a project: interactions waiting, feedback and signals
    pending or orphaned (by reason), sessions and how many ended by abandonment."""
    i, s = models.interactions, models.sessions
    out: dict[str, Any] = {
        "interactions_waiting": conn.execute(
            sa.select(sa.func.count()).where(
                i.c.project_id == project_id, i.c.enriched_at.is_(None)
            )
        ).scalar_one()
    }
    for name, table in (("feedback", models.feedback), ("signals", models.signals)):
        counts: dict[str, Any] = {"pending": 0, "orphaned": {}}
        rows = conn.execute(
            sa.select(table.c.join_state, table.c.orphan_reason, sa.func.count())
            .where(table.c.project_id == project_id, table.c.join_state != "joined")
            .group_by(table.c.join_state, table.c.orphan_reason)
        )
        for state, reason, n in rows:
            if state == "orphaned":
                counts["orphaned"][reason or "unknown"] = n
            else:
                counts["pending"] += n
        out[name] = counts
    total, abandoned = conn.execute(
        sa.select(sa.func.count(), sa.func.count().filter(s.c.abandoned.is_(True))).where(
            s.c.project_id == project_id
        )
    ).one()
    out["sessions"] = {"total": total, "abandoned": abandoned}
    return out
