"""The analysis as DataFrames, for notebooks and scripts: ``closedloop.metrics``,
``closedloop.issues``, ``closedloop.topics``, ``closedloop.drift_alarms``.

Each opens the store the settings name (the environment's by default), reads, and closes it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd  # type: ignore[import-untyped]  # no stubs installed

from closedloop.analyze import read
from closedloop.analyze.metrics import metrics as _metrics
from closedloop.analyze.tracker import topic_table
from closedloop.store.db import utc

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from closedloop.settings import Settings

__all__ = ["drift_alarms", "issues", "metrics", "topics"]

T = TypeVar("T")


@contextmanager
def _store(project: str | int, settings: Settings | None) -> Iterator[tuple[Engine, int, Settings]]:
    from closedloop.settings import get_settings
    from closedloop.store.db import create_engine
    from closedloop.store.projects import Projects

    settings = settings or get_settings()
    engine = create_engine(settings.resolved_database_url())
    try:
        pid = project if isinstance(project, int) else Projects(engine).get(project).id
        yield engine, pid, settings
    finally:
        engine.dispose()


def metrics(
    project: str | int,
    *,
    by: str = "all",
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    bucket: str | None = None,
    measures: Sequence[str] | None = None,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Quality measures per segment with 95 % intervals (see
    :func:`closedloop.analyze.metrics.metrics`): ``segment, bucket, measure, value, low,
    high, n``."""
    from closedloop.store.olap import Analytics

    with _store(project, settings) as (engine, pid, s):
        analytics = Analytics(engine, s.resolved_lake_url(), s.lake_options)
        return _metrics(
            analytics,
            pid,
            by=by,
            since=utc(since),
            until=utc(until),
            bucket=bucket,
            measures=measures,
            topics=topic_table(engine, pid) if by == "topic" else None,
        )


def _frame(rows: list[dict[str, Any]], flatten: Callable[[dict[str, Any]], dict[str, Any]]) -> Any:
    return pd.DataFrame([flatten(r) for r in rows])


def _cluster_row(c: dict[str, Any]) -> dict[str, Any]:
    stats = c["stats"]
    return {
        "rank": c["rank"],
        "id": c["id"],
        "name": c["name"],
        "state": c["state"],
        "size": c["size"],
        "keywords": c["keywords"],
        **{k: stats.get(k) for k in ("recent", "prior", "severity", "growth", "impact")},
        "explanation": stats.get("explanation"),
        "examples": [e["input"] for e in c["examples"]],
    }


def issues(
    project: str | int,
    *,
    state: str | None = None,
    limit: int = 50,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Issues ranked by impact, one row each (keywords, counts, impact and its explanation)."""
    with _store(project, settings) as (engine, pid, _):
        return _frame(read.clusters(engine, pid, "issue", state=state, limit=limit), _cluster_row)


def topics(
    project: str | int, *, limit: int = 50, settings: Settings | None = None
) -> pd.DataFrame:
    """Topics of the inputs, largest first."""
    with _store(project, settings) as (engine, pid, _):
        return _frame(read.clusters(engine, pid, "topic", limit=limit), _cluster_row)


def drift_alarms(
    project: str | int,
    *,
    kind: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 100,
    settings: Settings | None = None,
) -> pd.DataFrame:
    """Drift alarms, most recent first: kind, segment, measure, since, before, after."""
    with _store(project, settings) as (engine, pid, _):
        found = read.alarms(engine, pid, kind=kind, since=utc(since), limit=limit)
    return _frame(found, lambda a: a)
