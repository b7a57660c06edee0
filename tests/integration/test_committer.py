"""The group committer: grouping, backpressure, draining, outages and the ingest balance."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from closedloop import make_event
from closedloop.errors import QueueFull, StorageUnavailable
from closedloop.ingest.committer import GroupCommitter
from closedloop.runtime import Runtime
from closedloop.settings import Settings
from closedloop.store import migrate, models
from closedloop.store.db import create_engine
from closedloop.store.projects import Projects
from closedloop.store.writer import write_events
from closedloop.types import PreparedEvent

WRITER_THREAD = "closedloop-commit"
WAIT = 30.0
TS = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)


def interaction(project_id: int, event_id: str) -> PreparedEvent:
    return PreparedEvent(
        project_id=project_id,
        event_id=event_id,
        type="interaction",
        row={
            "project_id": project_id,
            "id": event_id,
            "ts": TS,
            "body": json.dumps({"input": event_id}),
        },
    )


class WriterGate:
    """Holds the committer's writer thread at the start of its transactions until released."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self.entered = threading.Event()
        self.released = threading.Event()
        sa.event.listen(engine, "begin", self._begin)

    def _begin(self, _conn: sa.Connection) -> None:
        if threading.current_thread().name == WRITER_THREAD and not self.released.is_set():
            self.entered.set()
            self.released.wait(WAIT)

    def wait_until_held(self) -> None:
        assert self.entered.wait(WAIT), "the writer thread never began a transaction"

    def release(self) -> None:
        self.released.set()


class Recorder:
    """Counts commits and statements on an engine, with the thread that ran them."""

    def __init__(self, engine: sa.Engine) -> None:
        self.commits: list[str] = []
        self.statements: list[tuple[str, str]] = []
        sa.event.listen(engine, "commit", self._commit)
        sa.event.listen(engine, "before_cursor_execute", self._statement)

    def _commit(self, _conn: sa.Connection) -> None:
        self.commits.append(threading.current_thread().name)

    def _statement(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.statements.append((threading.current_thread().name, statement))


@pytest.fixture
def project_id(engine: sa.Engine) -> int:
    project, _, _ = Projects(engine).create("acme")
    return project.id


@pytest.fixture
def committer(engine: sa.Engine) -> Iterator[GroupCommitter]:
    c = GroupCommitter(engine, max_queue_events=10_000, max_group_events=4_000)
    c.start()
    yield c
    c.stop()


def ledger(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(models.event_ids.c.event_id)).scalars())


def rows(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(models.interactions.c.id)).scalars())


def submit_from_threads(
    committer: GroupCommitter, batches: list[list[PreparedEvent]]
) -> list[Future[list[bool]]]:
    """Submit each batch from its own thread, all released at once; return the futures."""
    start = threading.Barrier(len(batches), timeout=WAIT)
    futures: list[Future[list[bool]] | None] = [None] * len(batches)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            start.wait()
            futures[i] = committer.submit(batches[i])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    assert not errors, errors
    assert all(f is not None for f in futures)
    return [f for f in futures if f is not None]


# --- grouping ----------------------------------------------------------------------------


def test_concurrent_submits_share_transactions_and_get_their_own_freshness(
    engine: sa.Engine, project_id: int, committer: GroupCommitter
) -> None:
    with engine.begin() as conn:
        write_events(conn, [interaction(project_id, f"old-{i}") for i in range(40)])
    recorder = Recorder(engine)
    gate = WriterGate(engine)
    first = committer.submit([interaction(project_id, "first")])
    gate.wait_until_held()  # the writer is busy: every batch below waits in the queue
    batches = [
        [
            interaction(project_id, f"new-{i}"),
            interaction(project_id, f"old-{i}"),
            interaction(project_id, "shared"),
        ]
        for i in range(40)
    ]
    futures = submit_from_threads(committer, batches)
    assert committer.depth == 1 + 3 * 40
    gate.release()

    results = [f.result(WAIT) for f in futures]
    assert first.result(WAIT) == [True]
    assert [r[:2] for r in results] == [[True, False]] * 40
    assert sum(r[2] for r in results) == 1, "exactly one copy of a shared id is new"
    submits = 1 + len(batches)
    writer_commits = [name for name in recorder.commits if name == WRITER_THREAD]
    assert len(writer_commits) < submits
    assert len(writer_commits) == 2  # the held transaction, then one for all the rest
    assert rows(engine) == {"first", "shared"} | {f"new-{i}" for i in range(40)} | {
        f"old-{i}" for i in range(40)
    }
    assert committer.depth == 0


def test_free_running_concurrent_submits_all_resolve_correctly(
    engine: sa.Engine, project_id: int, committer: GroupCommitter
) -> None:
    recorder = Recorder(engine)
    batches = [
        [interaction(project_id, f"t{i}-e{j}") for j in range(5)] + [interaction(project_id, "x")]
        for i in range(32)
    ]
    futures = submit_from_threads(committer, batches)
    results = [f.result(WAIT) for f in futures]
    assert [r[:5] for r in results] == [[True] * 5] * 32
    assert sum(r[5] for r in results) == 1
    assert 1 <= len(recorder.commits) <= len(batches)
    assert len(rows(engine)) == 32 * 5 + 1


def test_a_group_never_exceeds_max_group_events_by_more_than_one_batch(
    engine: sa.Engine, project_id: int
) -> None:
    committer = GroupCommitter(engine, max_group_events=10)
    committer.start()
    try:
        recorder = Recorder(engine)
        gate = WriterGate(engine)
        committer.submit([interaction(project_id, "first")])
        gate.wait_until_held()
        futures = [
            committer.submit([interaction(project_id, f"b{i}-e{j}") for j in range(3)])
            for i in range(40)
        ]
        gate.release()
        assert all(f.result(WAIT) == [True, True, True] for f in futures)
    finally:
        committer.stop()
    # 120 queued events in groups of at most 10 + 3 - 1 events: at least 10 transactions
    assert len([n for n in recorder.commits if n == WRITER_THREAD]) - 1 >= 10


# --- backpressure ------------------------------------------------------------------------


def test_a_full_queue_raises_queue_full_without_touching_the_database(
    engine: sa.Engine, project_id: int
) -> None:
    committer = GroupCommitter(engine, max_queue_events=10)
    committer.start()
    gate = WriterGate(engine)
    try:
        held = committer.submit([interaction(project_id, f"a{i}") for i in range(4)])
        gate.wait_until_held()
        queued = committer.submit([interaction(project_id, f"b{i}") for i in range(6)])
        assert committer.depth == 10 and committer.at_capacity

        recorder = Recorder(engine)
        with pytest.raises(QueueFull) as refused:
            committer.submit([interaction(project_id, "refused")])
        assert recorder.statements == []
        assert recorder.commits == []
        assert refused.value.retry_after > 0
        assert committer.depth == 10
    finally:
        gate.release()
        committer.stop()
    assert held.result(WAIT) == [True] * 4
    assert queued.result(WAIT) == [True] * 6
    assert "refused" not in ledger(engine)
    assert len(ledger(engine)) == 10


def test_the_queue_takes_batches_again_once_it_drains(engine: sa.Engine, project_id: int) -> None:
    committer = GroupCommitter(engine, max_queue_events=3)
    committer.start()
    gate = WriterGate(engine)
    try:
        held = committer.submit([interaction(project_id, f"a{i}") for i in range(3)])
        gate.wait_until_held()
        with pytest.raises(QueueFull):
            committer.submit([interaction(project_id, "later")])
        gate.release()
        assert held.result(WAIT) == [True] * 3
        assert committer.submit([interaction(project_id, "later")]).result(WAIT) == [True]
    finally:
        gate.release()
        committer.stop()


# --- stopping ----------------------------------------------------------------------------


def test_stop_commits_every_queued_batch_before_returning(
    engine: sa.Engine, project_id: int
) -> None:
    committer = GroupCommitter(engine, max_group_events=5)
    committer.start()
    gate = WriterGate(engine)
    futures = [committer.submit([interaction(project_id, "first")])]
    gate.wait_until_held()
    futures += [
        committer.submit([interaction(project_id, f"b{i}-e{j}") for j in range(2)])
        for i in range(25)
    ]
    assert not any(f.done() for f in futures)  # all of them wait behind the held writer
    releaser = threading.Timer(0.2, gate.release)  # lets the writer go while stop() waits
    releaser.start()
    try:
        committer.stop()
    finally:
        gate.release()
        releaser.join(WAIT)
    assert all(f.done() for f in futures)  # resolved before stop() returned
    assert [f.result(0) for f in futures] == [[True]] + [[True, True]] * 25
    assert rows(engine) == {"first"} | {f"b{i}-e{j}" for i in range(25) for j in range(2)}
    assert committer.depth == 0


def test_submit_before_start_or_after_stop_is_refused(engine: sa.Engine, project_id: int) -> None:
    committer = GroupCommitter(engine)
    with pytest.raises(RuntimeError, match="not running"):
        committer.submit([interaction(project_id, "a")])
    committer.start()
    committer.stop()
    with pytest.raises(RuntimeError, match="not running"):
        committer.submit([interaction(project_id, "a")])
    assert ledger(engine) == set()


# --- outages -----------------------------------------------------------------------------


def unreachable_engine(backend: str, tmp_path: Path) -> sa.Engine:
    if backend == "postgresql":
        return create_engine("postgresql+psycopg://postgres@127.0.0.1:1/x")
    gone = tmp_path / "gone"
    engine = create_engine(f"sqlite:///{gone / 'closedloop.db'}")  # creates the folder
    gone.rmdir()  # ... which then disappears, as an unmounted volume would
    return engine


def test_futures_fail_with_storage_unavailable_when_the_database_is_unreachable(
    backend: str, tmp_path: Path
) -> None:
    engine = unreachable_engine(backend, tmp_path)
    committer = GroupCommitter(engine)
    committer.start()
    try:
        for attempt in range(2):  # the writer survives the outage and keeps answering
            future = committer.submit([interaction(1, f"a{attempt}"), interaction(1, "b")])
            exc = future.exception(WAIT)
            assert isinstance(exc, StorageUnavailable), repr(exc)
            assert exc.retry_after > 0
            assert isinstance(exc.__cause__, sa.exc.DBAPIError)
        assert committer.depth == 0
    finally:
        committer.stop()
        engine.dispose()


def test_the_committer_recovers_when_the_sqlite_folder_returns(tmp_path: Path) -> None:
    engine = unreachable_engine("sqlite", tmp_path)
    committer = GroupCommitter(engine)
    committer.start()
    try:
        future = committer.submit([interaction(1, "a")])
        assert isinstance(future.exception(WAIT), StorageUnavailable)
        (tmp_path / "gone").mkdir()
        migrate.upgrade(engine)
        assert committer.submit([interaction(1, "a")]).result(WAIT) == [True]
    finally:
        committer.stop()
        engine.dispose()


# --- the ingest balance ------------------------------------------------------------------


def raw(event_id: str, **body: Any) -> bytes:
    return json.dumps(make_event("interaction", body or {"input": "hi"}, id=event_id)).encode()


def malformed(event_id: str) -> bytes:
    return json.dumps({"id": event_id, "type": "interaction", "timestamp": "yesterday"}).encode()


def test_the_ingest_counters_balance_after_stored_duplicate_rejected_and_dropped_events(
    settings: Settings,
) -> None:
    runtime = Runtime.build(settings.with_overrides(write_queue_events=5), load_plugins=False)
    runtime.start()
    gate: WriterGate | None = None
    try:
        project, _, secret = runtime.projects.create("acme")
        key = runtime.verify(secret)
        ingestor = runtime.ingestor

        first = ingestor.ingest(
            key, [raw("i-1"), raw("i-2"), raw("i-3"), malformed("x-1"), raw("i-1")]
        )
        assert [r.status for r in first.results] == [
            "stored",
            "stored",
            "stored",
            "rejected",
            "duplicate",
        ]
        second = ingestor.ingest(key, [raw("i-1"), raw("i-2"), raw("i-4")])
        assert [r.status for r in second.results] == ["duplicate", "duplicate", "stored"]

        # the writer is held, so four events fill the queue and the next batch is dropped
        gate = WriterGate(runtime.engine)
        pending = ingestor.prepare(key, [raw(f"q-{i}") for i in range(4)])
        held = ingestor.submit(pending)
        gate.wait_until_held()
        with pytest.raises(QueueFull):
            ingestor.ingest(key, [raw("d-1"), raw("d-2"), malformed("x-2")])
        gate.release()
        third = ingestor.finish(pending, held.result(WAIT))
        assert third.all_stored

        totals = runtime.metrics.totals()
        assert totals == {
            "received": 15.0,
            "stored": 8.0,
            "duplicate": 3.0,
            "rejected": 2.0,
            "dropped": 2.0,
        }
        assert totals["received"] == (
            totals["stored"] + totals["duplicate"] + totals["rejected"] + totals["dropped"]
        )
        assert len(ledger(runtime.engine)) == totals["stored"]
        assert project.id == key.project_id
    finally:
        if gate is not None:
            gate.release()
        runtime.stop()
