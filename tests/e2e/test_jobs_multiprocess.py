"""The job queue across worker OS processes: no job runs twice, and a job whose worker dies
is taken again once its lease expires.

Workers are ``multiprocessing`` processes (spawn) running :class:`closedloop.worker.Worker`
with a handler that records ``(job id, worker, attempt)`` in a table of the same database.
"""

from __future__ import annotations

import collections
import multiprocessing
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

import pytest
import sqlalchemy as sa

from closedloop.store import migrate
from closedloop.store.db import create_engine
from closedloop.store.jobs import Job, JobQueue
from closedloop.worker import Worker

SPAWN = multiprocessing.get_context("spawn")

_meta = sa.MetaData()
RUNS = sa.Table(
    "e2e_job_runs",
    _meta,
    sa.Column("n", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.BigInteger, nullable=False),
    sa.Column("worker", sa.String(128), nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("started_at", sa.Float, nullable=False),  # epoch seconds
)


def run_worker(
    database_url: str, name: str, lease_seconds: float, go: MpEvent, limit: int = 1
) -> None:
    """A worker process: wait for ``go``, then run jobs until none is queued or running.

    The handler records its run, then sleeps ``payload["sleep_first"]`` seconds on the first
    attempt and ``payload["sleep"]`` on later ones.
    """
    engine = create_engine(database_url)
    queue = JobQueue(engine)

    def record(job: Job) -> None:
        with engine.begin() as conn:
            conn.execute(
                RUNS.insert().values(
                    job_id=job.id, worker=name, attempt=job.attempts, started_at=time.time()
                )
            )
        key = "sleep_first" if job.attempts == 1 else "sleep"
        time.sleep(float(job.payload.get(key, 0.0)))

    worker = Worker(
        queue,
        {"record": record},
        recurring=(),
        lease_seconds=lease_seconds,
        poll_seconds=0.05,
        name=name,
    )
    go.wait(120)
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            if worker.run_once(limit=limit):
                continue
            counts = queue.counts()
            if not counts.get("queued") and not counts.get("running"):
                return
            time.sleep(0.05)
        raise TimeoutError(f"{name}: jobs were still waiting after 120 s")
    finally:
        engine.dispose()


@pytest.fixture
def store(database_url: str) -> Iterator[sa.Engine]:
    """A migrated database with the runs table."""
    engine = create_engine(database_url)
    migrate.upgrade(engine)
    _meta.create_all(engine)
    yield engine
    engine.dispose()


def _start(database_url: str, name: str, lease_seconds: float, go: MpEvent) -> Any:
    process = SPAWN.Process(
        target=run_worker, args=(database_url, name, lease_seconds, go), name=name, daemon=True
    )
    process.start()
    return process


def _enqueue(queue: JobQueue, payload: dict[str, Any]) -> int:
    job_id = queue.enqueue("record", payload)
    assert job_id is not None
    return job_id


def _runs(engine: sa.Engine) -> list[sa.Row[Any]]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(RUNS).order_by(RUNS.c.n)))


@pytest.mark.slow
def test_two_worker_processes_run_each_of_200_jobs_exactly_once(
    store: sa.Engine, database_url: str
) -> None:
    queue = JobQueue(store)
    ids = [_enqueue(queue, {"n": i, "sleep_first": 0.002}) for i in range(200)]
    go = SPAWN.Event()
    workers = [_start(database_url, f"w{i}", 60.0, go) for i in (1, 2)]
    try:
        go.set()
        for process in workers:
            process.join(120)
        assert [p.exitcode for p in workers] == [0, 0]
    finally:
        for process in workers:
            if process.is_alive():
                process.kill()
                process.join()

    runs = _runs(store)
    per_job = collections.Counter(r.job_id for r in runs)
    assert sorted(per_job) == sorted(ids), "some jobs never ran"
    assert [j for j, n in per_job.items() if n > 1] == [], "a job ran twice"
    assert {r.attempt for r in runs} == {1}
    per_worker = collections.Counter(r.worker for r in runs)
    assert set(per_worker) == {"w1", "w2"}, f"one worker took every job: {per_worker}"
    assert queue.counts() == {"done": 200}
    assert {queue.get(i)["leased_by"] for i in ids} == {"w1", "w2"}


@pytest.mark.slow
def test_a_job_whose_worker_is_killed_is_taken_again_after_its_lease_expires(
    store: sa.Engine, database_url: str
) -> None:
    lease = 2.0
    queue = JobQueue(store)
    job_id = _enqueue(queue, {"sleep_first": 120.0, "sleep": 0.0})
    go = SPAWN.Event()
    go.set()
    first = _start(database_url, "doomed", lease, go)
    try:
        deadline = time.monotonic() + 60
        while not _runs(store) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _runs(store), "the first worker never started the job"
        first.kill()  # SIGKILL, mid-job
        first.join(30)
        assert first.exitcode == -9
    finally:
        if first.is_alive():
            first.kill()
            first.join()

    row = queue.get(job_id)
    assert (row["state"], row["leased_by"], row["attempts"]) == ("running", "doomed", 1)
    lease_until = row["lease_until"]

    second = _start(database_url, "rescuer", lease, go)
    try:
        second.join(60)
        assert second.exitcode == 0
    finally:
        if second.is_alive():
            second.kill()
            second.join()

    row = queue.get(job_id)
    assert (row["state"], row["leased_by"], row["attempts"]) == ("done", "rescuer", 2)
    runs = _runs(store)
    assert [(r.job_id, r.worker, r.attempt) for r in runs] == [
        (job_id, "doomed", 1),
        (job_id, "rescuer", 2),
    ]
    assert runs[1].started_at >= lease_until.timestamp(), "taken before the lease expired"
