"""Reading what the analysis job stored: issues ranked by impact, topics, drift alarms.

Shared by the HTTP API, the CLI and the Python API, so they answer alike.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections import Counter
from typing import Any

import msgspec
import pandas as pd  # type: ignore[import-untyped]  # no stubs installed
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from closedloop.enrich.sessions import user_text
from closedloop.errors import NotFound
from closedloop.events import Interaction
from closedloop.store import models
from closedloop.store.db import utc

__all__ = ["alarms", "clusters", "frame_json", "issue", "ISSUE_STATES"]

ISSUE_STATES = ("open", "growing", "resolved")
_interaction = msgspec.json.Decoder(Interaction)


def _inputs(conn: Connection, project_id: int, ids: list[str]) -> dict[str, str]:
    if not ids:
        return {}
    i = models.interactions
    rows = conn.execute(
        sa.select(i.c.id, i.c.body).where(i.c.project_id == project_id, i.c.id.in_(ids))
    )
    return {rid: user_text(_interaction.decode(body).input) or "" for rid, body in rows}


def _cluster_json(row: Any, examples: dict[str, str]) -> dict[str, Any]:
    stats = json.loads(row.stats)
    return {
        "id": row.id,
        "kind": row.kind,
        "name": row.name,
        "keywords": json.loads(row.keywords),
        "size": row.size,
        "state": row.state,
        "impact": stats.get("impact"),
        "stats": stats,
        "examples": [
            {"interaction_id": ref, "input": examples.get(ref)} for ref in json.loads(row.examples)
        ],
        "created_at": utc(row.created_at).isoformat(),
        "updated_at": utc(row.updated_at).isoformat(),
    }


def clusters(
    engine: Engine,
    project_id: int,
    kind: str,
    *,
    state: str | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """Issues (ranked by impact, highest first) or topics (largest first), with examples."""
    c = models.clusters
    query = sa.select(c).where(c.c.project_id == project_id, c.c.kind == kind)
    if state is not None:
        query = query.where(c.c.state == state)
    with engine.connect() as conn:
        rows = list(conn.execute(query).all())
        if kind == "issue":
            rows.sort(key=lambda r: (-(json.loads(r.stats).get("impact") or 0.0), r.id))
        else:
            rows.sort(key=lambda r: (-r.size, r.id))
        rows = rows[:limit]
        refs = [ref for r in rows for ref in json.loads(r.examples)]
        examples = _inputs(conn, project_id, refs)
    ranked = [_cluster_json(r, examples) for r in rows]
    for rank, item in enumerate(ranked, 1):
        item["rank"] = rank
    return ranked


def issue(
    engine: Engine,
    project_id: int,
    issue_id: int,
    *,
    kind: str = "issue",
    members: int = 50,
    trend_days: int = 14,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """One issue (or topic) with its most recent member interactions and its ``trend``: new
    members per day (UTC) over the last ``trend_days`` days, oldest first."""
    c, m = models.clusters, models.cluster_members
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(c).where(c.c.project_id == project_id, c.c.kind == kind, c.c.id == issue_id)
        ).first()
        if row is None:
            raise NotFound(f"no {kind} {issue_id} in this project")
        recent = conn.execute(
            sa.select(m.c.ref_id, m.c.ts, m.c.severity)
            .where(m.c.project_id == project_id, m.c.kind == kind, m.c.cluster_id == issue_id)
            .order_by(m.c.ts.desc(), m.c.ref_id)
            .limit(members)
        ).all()
        texts = _inputs(conn, project_id, [*json.loads(row.examples), *(r.ref_id for r in recent)])
        today = (now or dt.datetime.now(dt.UTC)).date()
        first = today - dt.timedelta(days=trend_days - 1)
        start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
        per_day = Counter(
            utc(ts).date()
            for ts in conn.execute(
                sa.select(m.c.ts).where(
                    m.c.project_id == project_id,
                    m.c.kind == kind,
                    m.c.cluster_id == issue_id,
                    m.c.ts >= start,
                )
            ).scalars()
        )
    out = _cluster_json(row, texts)
    out["trend"] = [
        {
            "day": (first + dt.timedelta(days=d)).isoformat(),
            "members": per_day.get(first + dt.timedelta(days=d), 0),
        }
        for d in range(trend_days)
    ]
    out["members"] = [
        {
            "interaction_id": r.ref_id,
            "ts": utc(r.ts).isoformat(),
            "severity": r.severity,
            "input": texts.get(r.ref_id),
        }
        for r in recent
    ]
    return out


def alarms(
    engine: Engine,
    project_id: int,
    *,
    kind: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Drift alarms, the most recently detected first."""
    a = models.drift_alarms
    query = sa.select(a).where(a.c.project_id == project_id)
    if kind is not None:
        query = query.where(a.c.kind == kind)
    if since is not None:
        query = query.where(a.c.detected_at >= since)
    query = query.order_by(a.c.detected_at.desc(), a.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "id": r.id,
            "kind": r.kind,
            "segment": r.segment,
            "measure": r.measure,
            "since": utc(r.since).isoformat(),
            "detected_at": utc(r.detected_at).isoformat(),
            "before": json.loads(r.before),
            "after": json.loads(r.after),
            "details": json.loads(r.details),
        }
        for r in rows
    ]


def frame_json(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """A metrics frame as JSON rows: NaN and infinite numbers become null, times ISO 8601."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, pd.Timestamp):
            return None if pd.isna(value) else value.isoformat()
        if value is pd.NaT:
            return None
        if hasattr(value, "item"):  # numpy scalars
            return clean(value.item())
        return value

    return [{k: clean(v) for k, v in row.items()} for row in frame.to_dict("records")]
