"""The job queue and the worker: leases, retries, fencing, dead jobs and the built-in handlers."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import random
import time

import pytest
import sqlalchemy as sa

from closedloop.store import models
from closedloop.store.db import utc, utcnow
from closedloop.store.jobs import Job, JobQueue
from closedloop.store.projects import Projects
from closedloop.store.writer import write_events
from closedloop.types import PreparedEvent
from closedloop.worker import Recurring, Worker, builtin_handlers

EXPIRED = 0.05  # seconds: a lease this short is over by the time the next call runs


@pytest.fixture
def jobs(engine: sa.Engine) -> JobQueue:
    return JobQueue(engine, backoff_seconds=60.0)


def expire_leases() -> None:
    time.sleep(EXPIRED * 2)


def test_a_job_is_enqueued_leased_and_completed(jobs: JobQueue) -> None:
    job_id = jobs.enqueue("report.build", {"week": 9}, project_id=7)
    assert job_id is not None
    assert jobs.get(job_id)["state"] == "queued"

    leased = jobs.lease("w1")

    assert leased == [
        Job(
            id=job_id,
            kind="report.build",
            project_id=7,
            payload={"week": 9},
            attempts=1,
            max_attempts=5,
            leased_by="w1",
        )
    ]
    row = jobs.get(job_id)
    assert row["state"] == "running" and row["leased_by"] == "w1"
    assert row["lease_until"] > utcnow()
    assert jobs.lease("w2") == []  # a running job under a live lease is nobody else's

    assert jobs.complete(leased[0]) is True
    row = jobs.get(job_id)
    assert row["state"] == "done"
    assert row["finished_at"] is not None and row["lease_until"] is None
    assert jobs.lease("w2") == []
    assert jobs.counts() == {"done": 1}


def test_lease_takes_due_jobs_in_order_up_to_the_limit(jobs: JobQueue) -> None:
    now = utcnow()
    ids = [jobs.enqueue("k", {"n": n}, run_at=now - dt.timedelta(seconds=10 - n)) for n in range(5)]
    first = jobs.lease("w1", limit=3)
    second = jobs.lease("w2", limit=3)
    assert [j.id for j in first] == ids[:3]
    assert [j.id for j in second] == ids[3:]
    assert jobs.lease("w3", limit=3) == []


def test_a_unique_key_enqueues_once(jobs: JobQueue) -> None:
    first = jobs.enqueue("digest", {"n": 1}, unique_key="digest@2026-03-01")
    second = jobs.enqueue("digest", {"n": 2}, unique_key="digest@2026-03-01")
    other = jobs.enqueue("digest", {"n": 3}, unique_key="digest@2026-03-02")
    assert first is not None and other is not None
    assert second is None
    assert jobs.counts() == {"queued": 2}
    assert jobs.get(first)["payload"] == json.dumps({"n": 1})


def test_jobs_without_a_unique_key_are_all_enqueued(jobs: JobQueue) -> None:
    assert len({jobs.enqueue("k"), jobs.enqueue("k"), jobs.enqueue("k")}) == 3


def test_lease_waits_for_run_at(jobs: JobQueue) -> None:
    later = jobs.enqueue("k", run_at=utcnow() + dt.timedelta(hours=1))
    due = jobs.enqueue("k", run_at=utcnow() - dt.timedelta(seconds=1))
    assert [j.id for j in jobs.lease("w1", limit=10)] == [due]
    assert jobs.lease("w1", limit=10) == []
    assert later is not None
    assert jobs.get(later)["state"] == "queued"
    assert jobs.get(later)["attempts"] == 0


@pytest.mark.parametrize("hours", [-5, 9])
def test_lease_waits_for_a_run_at_given_in_another_zone(jobs: JobQueue, hours: int) -> None:
    zone = dt.timezone(dt.timedelta(hours=hours))
    later = jobs.enqueue("k", run_at=(utcnow() + dt.timedelta(hours=1)).astimezone(zone))
    due = jobs.enqueue("k", run_at=(utcnow() - dt.timedelta(minutes=1)).astimezone(zone))
    assert [j.id for j in jobs.lease("w1", limit=10)] == [due]
    assert later is not None
    run_at = jobs.get(later)["run_at"]
    assert utcnow() + dt.timedelta(minutes=59) < run_at < utcnow() + dt.timedelta(minutes=61)


def test_a_naive_run_at_is_refused(jobs: JobQueue) -> None:
    with pytest.raises(ValueError, match="timezone"):
        jobs.enqueue("k", run_at=dt.datetime(2026, 3, 1, 12, 0))
    assert jobs.counts() == {}


def test_a_failure_requeues_the_job_with_backoff(jobs: JobQueue) -> None:
    job_id = jobs.enqueue("k")
    assert job_id is not None
    (job,) = jobs.lease("w1")
    random.seed(20260301)  # the jitter is drawn from the global generator
    before = utcnow()

    state = jobs.fail(job, "ValueError: boom")

    assert state == "queued"
    row = jobs.get(job_id)
    assert row["state"] == "queued"
    assert row["attempts"] == 1
    assert row["last_error"] == "ValueError: boom"
    assert row["lease_until"] is None and row["finished_at"] is None
    # full jitter: somewhere in (0, backoff * 2 ** (attempts - 1)] from now
    assert before + dt.timedelta(seconds=1) < row["run_at"]
    assert row["run_at"] <= utcnow() + dt.timedelta(seconds=60)
    assert jobs.lease("w2") == []  # not due before its backoff


def test_the_backoff_grows_with_each_attempt(engine: sa.Engine) -> None:
    jobs = JobQueue(engine, backoff_seconds=1.0)
    job = Job(
        id=0, kind="k", project_id=None, payload={}, attempts=1, max_attempts=9, leased_by="w"
    )
    bounds = []
    for attempts in (1, 2, 3, 4):
        job_id = jobs.enqueue("k", max_attempts=9)
        assert job_id is not None
        with engine.begin() as conn:  # as if leased for the n-th time
            conn.execute(
                models.jobs.update()
                .where(models.jobs.c.id == job_id)
                .values(state="running", attempts=attempts, leased_by="w")
            )
        random.seed(1)
        before = utcnow()
        jobs.fail(dataclasses.replace(job, id=job_id, attempts=attempts), "boom")
        delay = (jobs.get(job_id)["run_at"] - before).total_seconds()
        bounds.append(delay)
        assert 0 < delay <= 2 ** (attempts - 1) + 0.5
    # the same random draw scaled by a doubling ceiling
    assert bounds == sorted(bounds) and bounds[3] > 4 * bounds[0]


def test_a_job_that_keeps_failing_ends_dead_after_max_attempts(engine: sa.Engine) -> None:
    jobs = JobQueue(engine, backoff_seconds=0.0)  # retries are due at once
    job_id = jobs.enqueue("k", max_attempts=3)
    assert job_id is not None
    states = []
    for attempt in (1, 2, 3):
        (job,) = jobs.lease("w1")
        assert job.attempts == attempt
        states.append(jobs.fail(job, f"error {attempt}"))
    assert states == ["queued", "queued", "dead"]
    row = jobs.get(job_id)
    assert row["state"] == "dead"
    assert row["attempts"] == 3
    assert row["last_error"] == "error 3"
    assert row["finished_at"] is not None
    assert jobs.lease("w1") == []
    assert jobs.counts() == {"dead": 1}


def test_a_long_error_is_truncated(engine: sa.Engine) -> None:
    jobs = JobQueue(engine, backoff_seconds=0.0)
    job_id = jobs.enqueue("k")
    assert job_id is not None
    (job,) = jobs.lease("w1")
    jobs.fail(job, "x" * 10_000)
    assert jobs.get(job_id)["last_error"] == "x" * 4000


def test_an_expired_lease_goes_to_another_worker_and_fences_out_the_first(
    jobs: JobQueue,
) -> None:
    job_id = jobs.enqueue("k")
    assert job_id is not None
    (stale,) = jobs.lease("w1", lease_seconds=EXPIRED)
    expire_leases()

    (fresh,) = jobs.lease("w2")

    assert fresh.id == job_id and fresh.attempts == 2 and fresh.leased_by == "w2"
    assert jobs.complete(stale) is False  # the late first worker cannot finish it
    jobs.fail(stale, "late failure")  # ... nor fail it
    row = jobs.get(job_id)
    assert (row["state"], row["leased_by"], row["last_error"]) == ("running", "w2", None)
    assert jobs.complete(fresh) is True
    assert jobs.get(job_id)["state"] == "done"
    assert jobs.complete(stale) is False


def test_an_expired_lease_on_the_last_attempt_is_buried_as_dead(jobs: JobQueue) -> None:
    job_id = jobs.enqueue("k", max_attempts=1)
    live = jobs.enqueue("k", max_attempts=1)
    assert job_id is not None and live is not None
    (crashed,) = jobs.lease("w1", lease_seconds=EXPIRED)
    (running,) = jobs.lease("w1", lease_seconds=600)
    expire_leases()

    assert jobs.lease("w2") == []  # no attempts left to give
    assert jobs.bury_expired() == 1

    row = jobs.get(job_id)
    assert row["state"] == "dead"
    assert row["last_error"] == "the lease expired on the last attempt"
    assert row["finished_at"] is not None
    assert jobs.get(live)["state"] == "running"  # a live lease is left alone
    assert jobs.complete(crashed) is False
    assert jobs.complete(running) is True
    assert jobs.bury_expired() == 0


# --- the worker --------------------------------------------------------------------------


def test_run_once_runs_the_registered_handler(jobs: JobQueue) -> None:
    seen: list[Job] = []
    worker = Worker(jobs, {"greet": seen.append}, recurring=(), name="w1")
    job_id = jobs.enqueue("greet", {"to": "ada"}, project_id=3)

    assert worker.run_once() == 1

    assert [(j.id, j.payload, j.project_id, j.leased_by) for j in seen] == [
        (job_id, {"to": "ada"}, 3, "w1")
    ]
    assert job_id is not None and jobs.get(job_id)["state"] == "done"
    assert worker.run_once() == 0


def test_run_once_fails_a_job_whose_handler_raises(jobs: JobQueue) -> None:
    def broken(job: Job) -> None:
        raise ValueError("no such report")

    worker = Worker(jobs, {"report": broken}, recurring=(), name="w1")
    job_id = jobs.enqueue("report")
    assert worker.run_once() == 1
    assert job_id is not None
    row = jobs.get(job_id)
    assert row["state"] == "queued"
    assert row["last_error"] == "ValueError: no such report"


def test_a_worker_leaves_a_job_it_has_no_handler_for_to_a_worker_that_has_one(
    jobs: JobQueue,
) -> None:
    app_worker = Worker(jobs, {"enrich": lambda job: None}, recurring=(), name="in-app")
    embedded = jobs.enqueue("embed")
    assert embedded is not None
    assert app_worker.run_once() == 0
    assert jobs.get(embedded)["state"] == "queued" and jobs.get(embedded)["attempts"] == 0
    ran: list[str] = []
    full = Worker(jobs, {"embed": lambda job: ran.append(job.kind)}, recurring=(), name="full")
    assert full.run_once() == 1
    assert ran == ["embed"] and jobs.get(embedded)["state"] == "done"


def test_run_once_buries_jobs_whose_worker_died_on_the_last_attempt(jobs: JobQueue) -> None:
    job_id = jobs.enqueue("k", max_attempts=1)
    jobs.lease("crashed", lease_seconds=EXPIRED)
    expire_leases()
    worker = Worker(jobs, {"k": lambda job: None}, recurring=(), name="w2")
    assert worker.run_once() == 0
    assert job_id is not None and jobs.get(job_id)["state"] == "dead"


def test_schedule_recurring_is_idempotent_within_a_slot(jobs: JobQueue) -> None:
    recurring = (
        Recurring(kind="digest", every_seconds=1e9),
        Recurring(kind="prune", every_seconds=1e9),
    )
    workers = [Worker(jobs, {}, recurring=recurring, name=f"w{i}") for i in range(3)]
    for worker in workers:
        worker.schedule_recurring()
        worker.schedule_recurring()
    with jobs.engine.connect() as conn:
        rows = conn.execute(sa.select(models.jobs.c.kind, models.jobs.c.unique_key)).all()
    slot = int(time.time() // 1e9)
    assert sorted(rows) == [("digest", f"digest@{slot}"), ("prune", f"prune@{slot}")]


def test_schedule_recurring_enqueues_again_in_the_next_slot(jobs: JobQueue) -> None:
    worker = Worker(jobs, {}, recurring=(Recurring(kind="tick", every_seconds=0.05),), name="w")
    worker.schedule_recurring()
    time.sleep(0.12)
    worker.schedule_recurring()
    assert jobs.counts() == {"queued": 2}


# --- ledger.prune ------------------------------------------------------------------------


def prepared(project_id: int, event_id: str, type_: str = "interaction") -> PreparedEvent:
    row = {
        "project_id": project_id,
        "id": event_id,
        "ts": dt.datetime(2026, 3, 1, tzinfo=dt.UTC),
        "body": "{}",
    }
    if type_ == "feedback":
        row |= {"interaction_id": "i", "thumbs": 1, "source": "user"}
    return PreparedEvent(project_id=project_id, event_id=event_id, type=type_, row=row)


def test_ledger_prune_forgets_only_old_ids_whose_rows_are_gone(engine: sa.Engine) -> None:
    acme = Projects(engine).create("acme")[0].id
    globex = Projects(engine).create("globex")[0].id
    with engine.begin() as conn:
        write_events(
            conn,
            [
                prepared(acme, "old-gone"),
                prepared(acme, "old-hot"),
                prepared(acme, "old-hot-feedback", "feedback"),
                prepared(acme, "new-gone"),
                prepared(acme, "shared"),
                prepared(globex, "shared"),
            ],
        )
    ledger, interactions = models.event_ids, models.interactions
    with engine.begin() as conn:
        conn.execute(ledger.update().values(received_at=utcnow() - dt.timedelta(hours=100)))
        conn.execute(
            ledger.update()
            .where(ledger.c.event_id == "new-gone")
            .values(received_at=utcnow() - dt.timedelta(hours=1))
        )
        conn.execute(  # these rows leave the hot store; acme's "shared" stays
            interactions.delete().where(
                interactions.c.id.in_(["old-gone", "new-gone"])
                | ((interactions.c.project_id == globex) & (interactions.c.id == "shared"))
            )
        )

    jobs = JobQueue(engine)
    worker = Worker(jobs, builtin_handlers(engine, replay_window_hours=72), recurring=(), name="w")
    job_id = jobs.enqueue("ledger.prune")
    assert worker.run_once() == 1
    assert job_id is not None and jobs.get(job_id)["state"] == "done"

    with engine.connect() as conn:
        kept = set((r.project_id, r.event_id) for r in conn.execute(sa.select(ledger)))
    assert kept == {
        (acme, "old-hot"),  # still hot: its row's key catches a retry anyway
        (acme, "old-hot-feedback"),  # still hot in the feedback table
        (acme, "new-gone"),  # inside the replay window
        (acme, "shared"),  # hot in acme, whatever happened to globex's copy
    }
    with engine.begin() as conn:  # a forgotten id is new again; a remembered one is not
        assert write_events(conn, [prepared(acme, "old-gone"), prepared(acme, "new-gone")]) == [
            True,
            False,
        ]


def test_the_worker_schedules_the_ledger_and_jobs_prunes_by_default(jobs: JobQueue) -> None:
    worker = Worker(jobs, builtin_handlers(jobs.engine, 72), name="w")
    worker.schedule_recurring()
    worker.schedule_recurring()
    with jobs.engine.connect() as conn:
        kinds = conn.execute(sa.select(models.jobs.c.kind)).scalars().all()
    assert sorted(kinds) == ["jobs.prune", "ledger.prune"]
    assert worker.run_once() == 2
    assert jobs.counts() == {"done": 2}


def test_the_jobs_prune_forgets_finished_jobs_after_a_day_and_keeps_the_rest(
    jobs: JobQueue,
) -> None:
    old, recent, waiting = (jobs.enqueue(k) for k in ("old", "recent", "waiting"))
    worker = Worker(jobs, {"old": lambda job: None, "recent": lambda job: None}, recurring=())
    worker.run_once()  # old and recent are done; waiting has no handler and waits
    with jobs.engine.begin() as conn:
        conn.execute(
            models.jobs.update()
            .where(models.jobs.c.id == old)
            .values(finished_at=utcnow() - dt.timedelta(hours=25))
        )
    prune = builtin_handlers(jobs.engine, 72)["jobs.prune"]
    prune(None)  # type: ignore[arg-type]
    with jobs.engine.connect() as conn:
        left = set(conn.execute(sa.select(models.jobs.c.id)).scalars())
    assert left == {recent, waiting}


def test_timestamps_of_jobs_read_back_as_utc(jobs: JobQueue) -> None:
    job_id = jobs.enqueue("k")
    assert job_id is not None
    row = jobs.get(job_id)
    for key in ("run_at", "created_at"):
        value = utc(row[key])
        assert value is not None and value.tzinfo is dt.UTC
