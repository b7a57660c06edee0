"""The one job mechanism: a jobs table with leases, retries with backoff, and a dead state.

A worker leases due jobs (PostgreSQL: ``FOR UPDATE SKIP LOCKED``, so N processes never take
the same job; SQLite: a single ``UPDATE ... RETURNING`` statement under SQLite's one-writer
lock). A job whose worker dies is taken again once its lease expires. Completion and failure
are fenced by the lease holder, so a worker that lost its lease cannot overwrite the new one.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from closedloop.store import models
from closedloop.store.db import utc, utcnow

__all__ = ["Job", "JobQueue"]

QUEUED, RUNNING, DONE, DEAD = "queued", "running", "done", "dead"


@dataclass(frozen=True, kw_only=True)
class Job:
    """A leased job."""

    id: int
    kind: str
    project_id: int | None
    payload: dict[str, Any]
    attempts: int
    max_attempts: int
    leased_by: str


class JobQueue:
    """Enqueue, lease, complete and fail jobs.

    Parameters
    ----------
    engine
        The hot store holding the jobs table.
    backoff_seconds
        Base of the exponential backoff between attempts (with full jitter).
    """

    def __init__(self, engine: Engine, *, backoff_seconds: float = 2.0) -> None:
        self.engine = engine
        self.backoff_seconds = backoff_seconds

    def enqueue(
        self,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        project_id: int | None = None,
        run_at: dt.datetime | None = None,
        max_attempts: int = 5,
        unique_key: str | None = None,
    ) -> int | None:
        """Add a job; with ``unique_key``, a second enqueue of the same key is a no-op
        (returns ``None``). ``run_at`` must be timezone-aware; it is stored in UTC."""
        if run_at is not None and run_at.utcoffset() is None:
            raise ValueError("run_at must be timezone-aware: pass e.g. datetime.now(datetime.UTC)")
        now = utcnow()
        values = {
            "kind": kind,
            "project_id": project_id,
            "payload": json.dumps(payload or {}),
            "state": QUEUED,
            "attempts": 0,
            "max_attempts": max_attempts,
            "run_at": run_at.astimezone(dt.UTC) if run_at is not None else now,
            "unique_key": unique_key,
            "created_at": now,
        }
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        stmt = (
            dialect.insert(models.jobs)
            .values(**values)
            .on_conflict_do_nothing()
            .returning(models.jobs.c.id)
        )
        with self.engine.begin() as conn:
            return conn.execute(stmt).scalar()

    def lease(
        self,
        worker: str,
        *,
        limit: int = 1,
        lease_seconds: float = 60.0,
        kinds: Collection[str] | None = None,
    ) -> list[Job]:
        """Take up to ``limit`` due jobs (or jobs whose lease expired) for ``worker``; only of
        ``kinds`` when given (a worker never takes a job it has no handler for)."""
        j = models.jobs
        now = utcnow()
        due = sa.or_(
            sa.and_(j.c.state == QUEUED, j.c.run_at <= now),
            sa.and_(j.c.state == RUNNING, j.c.lease_until < now, j.c.attempts < j.c.max_attempts),
        )
        if kinds is not None:
            due = sa.and_(due, j.c.kind.in_(sorted(kinds)))
        pick = sa.select(j.c.id).where(due).order_by(j.c.run_at, j.c.id).limit(limit)
        if self.engine.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            j.update()
            .where(j.c.id.in_(pick.scalar_subquery()))
            .values(
                state=RUNNING,
                attempts=j.c.attempts + 1,
                leased_by=worker,
                lease_until=now + dt.timedelta(seconds=lease_seconds),
            )
            .returning(
                j.c.id, j.c.kind, j.c.project_id, j.c.payload, j.c.attempts, j.c.max_attempts
            )
        )
        with self.engine.begin() as conn:
            rows = conn.execute(stmt).all()
        return [
            Job(
                id=r.id,
                kind=r.kind,
                project_id=r.project_id,
                payload=json.loads(r.payload),
                attempts=r.attempts,
                max_attempts=r.max_attempts,
                leased_by=worker,
            )
            for r in sorted(rows, key=lambda r: r.id)
        ]

    def complete(self, job: Job) -> bool:
        """Mark ``job`` done; ``False`` when its lease was lost to another worker."""
        j = models.jobs
        with self.engine.begin() as conn:
            done = conn.execute(
                j.update()
                .where(j.c.id == job.id, j.c.leased_by == job.leased_by, j.c.state == RUNNING)
                .values(state=DONE, finished_at=utcnow(), lease_until=None)
            ).rowcount
        return bool(done)

    def fail(self, job: Job, error: str) -> str:
        """Record a failure: retry later with backoff, or ``dead`` after the last attempt.

        Returns the job's new state, or ``"lost"`` when another worker holds its lease now
        (nothing is changed then).
        """
        j = models.jobs
        now = utcnow()
        if job.attempts >= job.max_attempts:
            values: dict[str, Any] = {"state": DEAD, "finished_at": now}
        else:
            delay = random.uniform(0, self.backoff_seconds * 2 ** (job.attempts - 1))
            values = {"state": QUEUED, "run_at": now + dt.timedelta(seconds=delay)}
        with self.engine.begin() as conn:
            changed = conn.execute(
                j.update()
                .where(j.c.id == job.id, j.c.leased_by == job.leased_by, j.c.state == RUNNING)
                .values(last_error=error[:4000], lease_until=None, **values)
            ).rowcount
        return str(values["state"]) if changed else "lost"

    def bury_expired(self) -> int:
        """Mark ``dead`` the jobs whose lease expired on their last attempt."""
        j = models.jobs
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    j.update()
                    .where(
                        j.c.state == RUNNING,
                        j.c.lease_until < utcnow(),
                        j.c.attempts >= j.c.max_attempts,
                    )
                    .values(
                        state=DEAD,
                        finished_at=utcnow(),
                        last_error="the lease expired on the last attempt",
                    )
                ).rowcount
            )

    def get(self, job_id: int) -> dict[str, Any]:
        """The stored row of a job, as a dict."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models.jobs).where(models.jobs.c.id == job_id)).one()
        out = dict(row._mapping)
        for key in ("run_at", "lease_until", "created_at", "finished_at"):
            out[key] = utc(out[key])
        return out

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        j = models.jobs
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(j.c.state, sa.func.count()).group_by(j.c.state))
            return {state: int(n) for state, n in rows}
