"""The retention job: each project's lake files, vectors and sessions past their days go.

Moving rows past the hot window to the lake is the tiering job's work
(:mod:`closedloop.store.lake.tiering`); this job deletes what is past ``cold_days`` (lake files
by their day, session aggregates by their last turn) and past ``vector_days`` (vectors by the
time of the text they embed), as each project's :class:`~closedloop.store.retention.Retention`
says.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.store import models
from closedloop.store.db import utcnow
from closedloop.store.lake.files import Lake
from closedloop.store.lake.tiering import drop_before
from closedloop.store.retention import Retention
from closedloop.store.vectors.index import IndexManager
from closedloop.store.vectors.table import delete_older_than

__all__ = ["RetentionReport", "enforce_retention", "retention_of"]

log = logging.getLogger(__name__)


@dataclass
class RetentionReport:
    """What one run deleted (lake rows, vectors, sessions), per project id."""

    lake_rows: dict[int, int] = field(default_factory=dict)
    vectors: dict[int, int] = field(default_factory=dict)
    sessions: dict[int, int] = field(default_factory=dict)


def retention_of(engine: Engine) -> dict[int, Retention]:
    """Every project's retention, by project id."""
    p = models.projects
    with engine.connect() as conn:
        rows = conn.execute(sa.select(p.c.id, p.c.retention)).all()
    return {row.id: Retention.stored(row.retention) for row in rows}


def enforce_retention(
    engine: Engine,
    lake: Lake | None,
    *,
    indexes: IndexManager | None = None,
    now: dt.datetime | None = None,
) -> RetentionReport:
    """Apply every project's retention once; a project whose vectors went has its indexes
    dropped (rebuilt from the table on the next search)."""
    now = now or utcnow()
    report = RetentionReport()
    for project_id, policy in retention_of(engine).items():
        if policy.cold_days is not None:
            cutoff = now - dt.timedelta(days=policy.cold_days)
            if lake is not None:
                report.lake_rows[project_id] = drop_before(engine, lake, project_id, cutoff.date())
            s = models.sessions
            with engine.begin() as conn:
                report.sessions[project_id] = int(
                    conn.execute(
                        s.delete().where(s.c.project_id == project_id, s.c.last_ts < cutoff)
                    ).rowcount
                    or 0
                )
        if policy.vector_days is not None:
            before = now - dt.timedelta(days=policy.vector_days)
            with engine.begin() as conn:
                report.vectors[project_id] = delete_older_than(conn, project_id, before)
            if report.vectors[project_id] and indexes is not None:
                indexes.drop(project_id)
    return report


class RetentionJob:
    """The recurring ``retention`` job of the worker."""

    def __init__(
        self, engine: Engine, lake: Lake | None, indexes: IndexManager | None = None
    ) -> None:
        self.engine = engine
        self.lake = lake
        self.indexes = indexes

    def __call__(self, job: Any) -> None:
        report = enforce_retention(self.engine, self.lake, indexes=self.indexes)
        removed = {
            name: sum(getattr(report, name).values())
            for name in ("lake_rows", "vectors", "sessions")
        }
        if any(removed.values()):
            log.info("retention removed %s", removed)
