"""The background worker: runs leased jobs from the jobs table.

``closedloop worker`` runs it as a process; ``closedloop serve`` runs it in a thread in the
embedded default. Handlers come from closedloop itself and from plugins
(``register_job_handlers``). Recurring jobs are enqueued with a unique key per time slot, so
any number of workers schedule each run exactly once.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.store import models
from closedloop.store.db import utcnow
from closedloop.store.jobs import Job, JobQueue

__all__ = ["Recurring", "Worker", "builtin_handlers"]

log = logging.getLogger(__name__)

Handler = Callable[[Job], None]


@dataclass(frozen=True, kw_only=True)
class Recurring:
    """A job kind to enqueue every ``every_seconds``."""

    kind: str
    every_seconds: float


def prune_ledger(engine: Engine, replay_window_hours: float) -> Handler:
    """A handler that forgets event ids older than the replay window whose rows have left the
    hot store (ids of rows still hot stay: their rows' keys would catch a retry anyway)."""

    def run(job: Job) -> None:
        cutoff = utcnow() - dt.timedelta(hours=replay_window_hours)
        ledger = models.event_ids
        still_hot = [
            sa.exists().where(t.c.project_id == ledger.c.project_id, t.c.id == ledger.c.event_id)
            for t in (models.interactions, models.feedback, models.signals)
        ]
        with engine.begin() as conn:
            conn.execute(ledger.delete().where(ledger.c.received_at < cutoff, ~sa.or_(*still_hot)))

    return run


def prune_jobs(engine: Engine, keep_hours: float = 24.0) -> Handler:
    """A handler that deletes finished jobs older than ``keep_hours`` (dead ones are kept
    seven times longer, for inspection): recurring jobs would otherwise pile up."""

    def run(job: Job) -> None:
        now = utcnow()
        j = models.jobs
        with engine.begin() as conn:
            for state, hours in (("done", keep_hours), ("dead", 7 * keep_hours)):
                cutoff = now - dt.timedelta(hours=hours)
                conn.execute(j.delete().where(j.c.state == state, j.c.finished_at < cutoff))

    return run


def builtin_handlers(engine: Engine, replay_window_hours: float) -> dict[str, Handler]:
    """The handlers closedloop itself ships (the enrichment job is added by the runtime)."""
    return {
        "ledger.prune": prune_ledger(engine, replay_window_hours),
        "jobs.prune": prune_jobs(engine),
    }


BUILTIN_RECURRING = (
    Recurring(kind="ledger.prune", every_seconds=3600.0),
    Recurring(kind="jobs.prune", every_seconds=3600.0),
)


class Worker:
    """Lease, run, complete or fail jobs until stopped.

    Parameters
    ----------
    queue
        The job queue.
    handlers
        Job kind -> handler. A job of an unknown kind fails (and ends dead after its attempts).
    recurring
        Jobs to schedule periodically.
    lease_seconds, poll_seconds
        Lease length and idle polling interval.
    """

    def __init__(
        self,
        queue: JobQueue,
        handlers: Mapping[str, Handler],
        *,
        recurring: tuple[Recurring, ...] = BUILTIN_RECURRING,
        lease_seconds: float = 60.0,
        poll_seconds: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.queue = queue
        self.handlers = dict(handlers)
        self.recurring = recurring
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"
        self._stop = threading.Event()

    def schedule_recurring(self) -> None:
        """Enqueue each recurring job for the current time slot (idempotent)."""
        now = time.time()
        for rec in self.recurring:
            slot = int(now // rec.every_seconds)
            self.queue.enqueue(rec.kind, unique_key=f"{rec.kind}@{slot}", max_attempts=3)

    def run_once(self, limit: int = 10) -> int:
        """Lease and run up to ``limit`` due jobs; return how many ran."""
        self.queue.bury_expired()
        jobs = self.queue.lease(
            self.name, limit=limit, lease_seconds=self.lease_seconds, kinds=self.handlers.keys()
        )
        for job in jobs:
            handler = self.handlers.get(job.kind)
            if handler is None:
                self.queue.fail(job, f"no handler for job kind {job.kind!r}")
                continue
            try:
                handler(job)
            except Exception as exc:  # a job's failure must not stop the worker
                log.warning("job %s (%s) failed: %s", job.id, job.kind, exc)
                self.queue.fail(job, f"{type(exc).__name__}: {exc}")
            else:
                self.queue.complete(job)
        return len(jobs)

    def run(self) -> None:
        """Run until :meth:`stop`; survive database outages by waiting and retrying."""
        next_schedule = 0.0
        period = min([60.0, *(r.every_seconds for r in self.recurring)])
        while not self._stop.is_set():
            try:
                if time.monotonic() >= next_schedule:
                    self.schedule_recurring()
                    next_schedule = time.monotonic() + period
                ran = self.run_once()
            except sa.exc.SQLAlchemyError as exc:
                log.warning("worker cannot reach the database: %s", exc)
                ran = 0
            if not ran:
                self._stop.wait(self.poll_seconds)

    def stop(self) -> None:
        """Ask :meth:`run` to return after the current job."""
        self._stop.set()

    def start_thread(self) -> threading.Thread:
        """Run in a daemon thread (the embedded default)."""
        thread = threading.Thread(target=self.run, name="closedloop-worker", daemon=True)
        thread.start()
        return thread
