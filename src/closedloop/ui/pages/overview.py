"""The overview page: headline numbers of a window against the one before, charts per segment
over time with the drift alarms marked, the top open issues and the recent alarms.

The numbers come from :func:`closedloop.analyze.metrics.metrics` and
:mod:`closedloop.analyze.read`, as ``/v1/metrics``, ``/v1/drift`` and ``/v1/issues`` answer.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pandas as pd  # type: ignore[import-untyped]  # no stubs installed
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response

from closedloop.analyze import read
from closedloop.analyze.metrics import metrics
from closedloop.analyze.tracker import topic_table
from closedloop.ingest.deps import get_runtime
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utc, utcnow
from closedloop.ui.render import render
from closedloop.ui.session import Viewer, viewer

__all__ = ["DIMENSIONS", "WINDOWS", "Window", "router", "window_bounds"]

router = APIRouter()


@dataclass(frozen=True)
class Window:
    """A choice of the window selector: its length in buckets of ``bucket``."""

    key: str
    label: str
    bucket: Literal["hour", "day"]
    buckets: int

    @property
    def step(self) -> dt.timedelta:
        """One bucket."""
        return dt.timedelta(hours=1) if self.bucket == "hour" else dt.timedelta(days=1)


WINDOWS: dict[str, Window] = {
    w.key: w
    for w in (
        Window("24h", "Last 24 hours", "hour", 24),
        Window("7d", "Last 7 days", "day", 7),
        Window("30d", "Last 30 days", "day", 30),
    )
}
#: Segment dimensions of the selector: the ``by`` of the metrics, and its label.
DIMENSIONS: dict[str, str] = {"model": "Model", "prompt": "Prompt version", "topic": "Topic"}
#: The charts: (measure, title, y-axis format, what it means).
CHARTS: tuple[tuple[str, str, str, str], ...] = (
    ("volume", "Volume", "count", "Interactions per bucket."),
    ("feedback_rate", "Feedback rate", "pct", "Share of interactions with any user feedback."),
    ("positive_rate", "Positive rate", "pct", "Share of thumbs that are up."),
    ("quality", "Quality", "score", "Mean quality estimate of the enrichment, 0 to 1."),
)
#: Where each kind of alarm is marked: quality alarms by their measure, input alarms on volume.
ALARM_CHART = {"thumbs": "positive_rate", "rating": "quality"}
INPUT_ALARMS = ("input", "topic_mix", "emerging")
MAX_SEGMENTS = 8
Win = Annotated[Literal["24h", "7d", "30d"], Query()]
By = Annotated[Literal["model", "prompt", "topic"], Query()]


def window_bounds(window: Window, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """The window ending with the bucket that holds ``now``: ``(start, end)``.

    >>> w = WINDOWS["24h"]
    >>> s, e = window_bounds(w, dt.datetime(2026, 1, 2, 10, 30, tzinfo=dt.UTC))
    >>> (s.isoformat(), e.isoformat())
    ('2026-01-01T11:00:00+00:00', '2026-01-02T11:00:00+00:00')
    """
    now = now.astimezone(dt.UTC)
    if window.bucket == "hour":
        floor = now.replace(minute=0, second=0, microsecond=0)
    else:
        floor = now.replace(hour=0, minute=0, second=0, microsecond=0)
    end = floor + window.step
    return end - window.buckets * window.step, end


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    x = float(value)
    return x if math.isfinite(x) else None


def _totals(frame: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """``measure → {value, n}`` of a one-window, one-segment frame."""
    return {
        str(r["measure"]): {"value": _finite(r["value"]), "n": int(r["n"])}
        for r in frame.to_dict("records")
    }


def _stamp(value: Any) -> int:
    ts = pd.Timestamp(value)
    if ts.tzinfo is None:
        ts = ts.tz_localize("UTC")
    return int(ts.timestamp())


def _series(
    frame: pd.DataFrame, xs: list[int]
) -> tuple[list[str], dict[str, list[dict[str, Any]]]]:
    """Segments (largest first, at most :data:`MAX_SEGMENTS`) and, per measure, one series
    per segment aligned on ``xs`` (volume 0 where a bucket is empty, other measures null)."""
    cells: dict[tuple[str, str, int], float | None] = {}
    volume: dict[str, float] = {}
    for r in frame.to_dict("records"):
        if r["bucket"] is None or pd.isna(r["bucket"]):
            continue
        segment, measure = str(r["segment"]), str(r["measure"])
        cells[(segment, measure, _stamp(r["bucket"]))] = _finite(r["value"])
        if measure == "volume":
            volume[segment] = volume.get(segment, 0.0) + float(r["value"])
    segments = sorted(volume, key=lambda s: (-volume[s], s))[:MAX_SEGMENTS]
    out: dict[str, list[dict[str, Any]]] = {}
    for measure, *_ in CHARTS:
        empty: float | None = 0.0 if measure == "volume" else None
        out[measure] = [
            {"label": s, "values": [cells.get((s, measure, x), empty) for x in xs]}
            for s in segments
        ]
    return segments, out


def _alarm_label(a: dict[str, Any]) -> str:
    if a["kind"] == "quality":
        before, after = a["before"].get("value"), a["after"].get("value")
        change = ""
        if before is not None and after is not None:
            change = f": {100 * before:.0f} % → {100 * after:.0f} %"
        return f"{a['measure']} dropped in {a['segment']}{change}"
    kind = str(a["kind"])
    return {
        "input": "Inputs shifted (embedding distribution)",
        "topic_mix": "Topic mix shifted",
        "emerging": "More inputs far from every known topic",
    }.get(kind, kind)


def _alarm_dimension(a: dict[str, Any]) -> str:
    """The segment dimension whose view shows the alarm."""
    segment = str(a["segment"])
    if segment.startswith("prompt="):
        return "prompt"
    if a["kind"] in INPUT_ALARMS:
        return "topic"
    return "model"


def _chart_alarms(
    alarms: list[dict[str, Any]], by: str, start: dt.datetime, end: dt.datetime
) -> dict[str, list[dict[str, Any]]]:
    """Per chart, the alarms of the window to mark: at the estimated change point."""
    out: dict[str, list[dict[str, Any]]] = {m: [] for m, *_ in CHARTS}
    for a in alarms:
        segment = str(a["segment"])
        if a["kind"] == "quality":
            chart = ALARM_CHART.get(a["measure"])
            if segment != "all" and not segment.startswith(by + "="):
                continue
        else:
            chart = "volume"
        at = dt.datetime.fromisoformat(a["since"])
        if chart is None or not start <= at < end:
            continue
        out[chart].append({"at": int(at.timestamp()), "label": _alarm_label(a)})
    return out


def _change(now: float | None, before: float | None, kind: str) -> dict[str, Any] | None:
    """The change of a tile against the previous window: text and direction."""
    if now is None or before is None:
        return None
    if kind == "count":
        if before == 0:
            return None
        delta = (now - before) / before
        text = f"{100 * delta:+.0f} %"
    elif kind == "rate":
        delta = now - before
        text = f"{100 * delta:+.1f} pts"
    else:
        delta = now - before
        text = f"{delta:+.2f}"
    direction = "up" if delta > 0 else "down" if delta < 0 else "flat"
    return {"text": text.replace("-", "−"), "direction": direction}


def overview_data(runtime: Runtime, project_id: int, window: Window, by: str) -> dict[str, Any]:
    """Everything the overview shows, for ``window`` with segments ``by``."""
    start, end = window_bounds(window, utcnow())
    analytics = runtime.analytics()
    names = [m for m, *_ in CHARTS]
    current = _totals(metrics(analytics, project_id, since=start, until=end, measures=names))
    span = end - start
    previous = _totals(
        metrics(analytics, project_id, since=start - span, until=start, measures=names)
    )
    empty = not current.get("volume", {}).get("value") and not previous.get("volume", {}).get(
        "value"
    )
    if empty:  # nothing in either window: anything ever?
        ever = _totals(metrics(analytics, project_id, measures=["volume"]))
        if not ever.get("volume", {}).get("value"):
            return {"empty": True}
    topics = topic_table(runtime.engine, project_id) if by == "topic" else None
    frame = metrics(
        analytics,
        project_id,
        by=by,
        since=start,
        until=end,
        bucket=window.bucket,
        measures=names,
        topics=topics,
    )
    xs = [int((start + k * window.step).timestamp()) for k in range(window.buckets)]
    segments, series = _series(frame, xs)
    alarms = read.alarms(runtime.engine, project_id, since=start, limit=200)
    marks = _chart_alarms(alarms, by, start, end)
    charts = []
    for measure, title, fmt, about in CHARTS:
        y: dict[str, Any] = {"format": fmt}
        if fmt in ("pct", "score"):
            y.update(min=0, max=1)
        else:
            y.update(min=0)
        charts.append(
            {
                "measure": measure,
                "title": title,
                "about": about,
                "alarms": marks[measure],
                "data": {
                    "x": xs,
                    "series": series[measure],
                    "alarms": marks[measure],
                    "y": y,
                },
            }
        )
    tiles = []
    for measure, title, fmt, _ in CHARTS:
        now_v = current.get(measure, {}).get("value")
        before_v = previous.get(measure, {}).get("value")
        kind = {"count": "count", "pct": "rate"}.get(fmt, "score")
        tiles.append(
            {
                "measure": measure,
                "title": "Interactions" if measure == "volume" else title,
                "value": now_v,
                "kind": kind,
                "n": current.get(measure, {}).get("n", 0),
                "change": _change(now_v, before_v, kind),
            }
        )
    issues = [
        i
        for i in read.clusters(runtime.engine, project_id, "issue", limit=50)
        if i["state"] != "resolved"
    ][:5]
    recent = [
        {**a, "label": _alarm_label(a), "by": _alarm_dimension(a)}
        for a in read.alarms(runtime.engine, project_id, limit=6)
    ]
    return {
        "empty": False,
        "start": start,
        "end": end,
        "tiles": tiles,
        "charts": charts,
        "segments": segments,
        "issues": issues,
        "alarms": recent,
    }


def _default_window(runtime: Runtime, project_id: int) -> str:
    """``24h`` when the week's first interaction is less than a day old, else ``7d``."""
    now = utcnow()
    t = models.interactions
    with runtime.engine.connect() as conn:
        first = conn.execute(
            sa.select(sa.func.min(t.c.ts)).where(
                t.c.project_id == project_id, t.c.ts >= now - dt.timedelta(days=7)
            )
        ).scalar()
    if first is None:
        return "7d"
    return "24h" if utc(first) >= now - dt.timedelta(days=1) else "7d"


@router.get("/p/{project}/")
def overview_page(
    request: Request,
    v: Annotated[Viewer, Depends(viewer)],
    window: Win | None = None,
    by: By = "model",
) -> Response:
    """The project's overview (any role); without a chosen window, the last 7 days, or the
    last 24 hours while every interaction of the week is from the last day."""
    runtime = get_runtime(request)
    chosen = WINDOWS[window or _default_window(runtime, v.project_id)]
    data = overview_data(runtime, v.project_id, chosen, by)
    return render(
        request,
        "overview.html",
        v,
        active="overview",
        title="Overview",
        window=chosen,
        windows=WINDOWS,
        by=by,
        dimensions=DIMENSIONS,
        **data,
    )
