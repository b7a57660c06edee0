"""The issues pages: negative feedback clustered and ranked by impact, each with its 14-day
trend; one issue's keywords, impact, trend, examples and recent interactions.

The issues come from :mod:`closedloop.analyze.read`, as ``/v1/issues`` answers them.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Path, Query, Request
from sqlalchemy.engine import Engine
from starlette.responses import Response

from closedloop.analyze import read
from closedloop.ingest.deps import get_runtime
from closedloop.store import models
from closedloop.store.db import utc, utcnow
from closedloop.ui.render import render
from closedloop.ui.session import Viewer, viewer
from closedloop.ui.sparkline import sparkline

__all__ = ["TREND_DAYS", "router", "trends"]

router = APIRouter()

TREND_DAYS = 14
StateFilter = Annotated[Literal["", "open", "growing", "resolved"], Query()]
IssueId = Annotated[int, Path(ge=1, le=2**31 - 1)]


def trends(
    engine: Engine, project_id: int, ids: list[int], *, days: int = TREND_DAYS
) -> dict[int, list[int]]:
    """New members per UTC day over the last ``days`` days, oldest first, of each issue in
    ``ids`` (one query; the same counts as the ``trend`` of :func:`read.issue`)."""
    if not ids:
        return {}
    today = utcnow().date()
    first = today - dt.timedelta(days=days - 1)
    start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC)
    m = models.cluster_members
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(m.c.cluster_id, m.c.ts).where(
                m.c.project_id == project_id,
                m.c.kind == "issue",
                m.c.cluster_id.in_(ids),
                m.c.ts >= start,
            )
        ).all()
    counts = Counter((cid, utc(ts).date()) for cid, ts in rows)
    return {
        cid: [counts.get((cid, first + dt.timedelta(days=d)), 0) for d in range(days)]
        for cid in ids
    }


def _day_stamp(day: str) -> int:
    return int(dt.datetime.combine(dt.date.fromisoformat(day), dt.time(), dt.UTC).timestamp())


@router.get("/p/{project}/issues")
def issues_page(
    request: Request,
    v: Annotated[Viewer, Depends(viewer)],
    state: StateFilter = "",
) -> Response:
    """Issues ranked by impact, filterable by state (any role)."""
    runtime = get_runtime(request)
    found = read.clusters(runtime.engine, v.project_id, "issue", state=state or None, limit=200)
    trend = trends(runtime.engine, v.project_id, [i["id"] for i in found])
    rows: list[dict[str, Any]] = []
    for issue in found:
        days = trend.get(issue["id"], [])
        rows.append(
            {
                **issue,
                "trend_total": sum(days),
                "spark": sparkline(days, label=f"{sum(days)} new in the last {TREND_DAYS} days"),
            }
        )
    return render(
        request,
        "issues.html",
        v,
        active="issues",
        title="Issues",
        issues=rows,
        state=state,
        states=read.ISSUE_STATES,
        trend_days=TREND_DAYS,
    )


@router.get("/p/{project}/issues/{issue_id}")
def issue_page(
    request: Request,
    v: Annotated[Viewer, Depends(viewer)],
    issue_id: IssueId,
) -> Response:
    """One issue: keywords, why it ranks where it does, its trend, examples (any role)."""
    runtime = get_runtime(request)
    issue = read.issue(runtime.engine, v.project_id, issue_id, members=25, trend_days=TREND_DAYS)
    chart = {
        "x": [_day_stamp(d["day"]) for d in issue["trend"]],
        "series": [{"label": "New interactions", "values": [d["members"] for d in issue["trend"]]}],
        "alarms": [],
        "y": {"min": 0, "format": "count"},
    }
    return render(
        request,
        "issue.html",
        v,
        active="issues",
        title=f"Issue #{issue['id']}",
        issue=issue,
        stats=issue["stats"],
        chart=chart,
        trend_days=TREND_DAYS,
    )
