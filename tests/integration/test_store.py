"""The hot store: migrations, the effectively-once writer, timestamps and SQLite durability."""

from __future__ import annotations

import datetime as dt
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from closedloop import make_event
from closedloop.errors import ConfigError
from closedloop.runtime import Runtime
from closedloop.settings import Settings
from closedloop.store import migrate, models
from closedloop.store.db import create_engine, utc
from closedloop.store.projects import Projects
from closedloop.store.writer import write_events
from closedloop.types import PreparedEvent
from tests.conftest import Tenant

TS = dt.datetime(2026, 3, 1, 9, 30, 15, 123456, tzinfo=dt.UTC)


def interaction(project_id: int, event_id: str, ts: dt.datetime = TS) -> PreparedEvent:
    """A prepared interaction with the columns the pipeline would fill."""
    return PreparedEvent(
        project_id=project_id,
        event_id=event_id,
        type="interaction",
        row={
            "project_id": project_id,
            "id": event_id,
            "ts": ts,
            "body": json.dumps({"input": f"question {event_id}"}),
        },
    )


def new_project(engine: sa.Engine, name: str) -> int:
    project, _, _ = Projects(engine).create(name)
    return project.id


def stored_ids(engine: sa.Engine, table: sa.Table, project_id: int) -> set[str]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(table.c.id).where(table.c.project_id == project_id))
        return {row.id for row in rows}


def ledger_ids(engine: sa.Engine, project_id: int) -> set[str]:
    ledger = models.event_ids
    with engine.connect() as conn:
        rows = conn.execute(sa.select(ledger.c.event_id).where(ledger.c.project_id == project_id))
        return {row.event_id for row in rows}


# --- migrations --------------------------------------------------------------------------


def test_the_migration_graph_has_exactly_one_head() -> None:
    assert len(migrate.heads()) == 1, f"several heads: {migrate.heads()}; merge them"


def test_the_migrated_schema_matches_the_models(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(context, models.metadata)
    assert diffs == []


def test_the_migrated_schema_has_every_model_table_and_the_version_table(
    engine: sa.Engine,
) -> None:
    tables = set(sa.inspect(engine).get_table_names())
    assert tables == set(models.metadata.tables) | {"alembic_version"}
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    assert [version] == migrate.heads()


def test_upgrading_twice_changes_nothing(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, models.metadata) == []


# --- write_events ------------------------------------------------------------------------


def test_write_events_stores_new_ids_and_reports_resent_ids_as_not_new(
    engine: sa.Engine,
) -> None:
    project_id = new_project(engine, "acme")
    with engine.begin() as conn:
        first = write_events(conn, [interaction(project_id, "a"), interaction(project_id, "b")])
        again = write_events(conn, [interaction(project_id, "b"), interaction(project_id, "c")])
    assert first == [True, True]
    assert again == [False, True]
    assert stored_ids(engine, models.interactions, project_id) == {"a", "b", "c"}


def test_write_events_reports_duplicates_across_two_transactions(engine: sa.Engine) -> None:
    project_id = new_project(engine, "acme")
    with engine.begin() as conn:
        assert write_events(conn, [interaction(project_id, "a")]) == [True]
    with engine.begin() as conn:
        fresh = write_events(
            conn,
            [
                interaction(project_id, "x"),
                interaction(project_id, "a"),
                interaction(project_id, "y"),
            ],
        )
    assert fresh == [True, False, True]
    with engine.connect() as conn:
        count = conn.execute(
            sa.select(sa.func.count()).select_from(models.interactions)
        ).scalar_one()
    assert count == 3


def test_a_duplicate_keeps_the_first_copy_of_the_row(engine: sa.Engine) -> None:
    project_id = new_project(engine, "acme")
    first = interaction(project_id, "a")
    changed = PreparedEvent(
        project_id=project_id,
        event_id="a",
        type="interaction",
        row={**first.row, "body": json.dumps({"input": "changed"})},
    )
    with engine.begin() as conn:
        write_events(conn, [first])
    with engine.begin() as conn:
        assert write_events(conn, [changed]) == [False]
    with engine.connect() as conn:
        body = conn.execute(sa.select(models.interactions.c.body)).scalar_one()
    assert json.loads(body) == {"input": "question a"}


def test_write_events_stores_each_type_in_its_table(engine: sa.Engine) -> None:
    project_id = new_project(engine, "acme")
    feedback = PreparedEvent(
        project_id=project_id,
        event_id="f-1",
        type="feedback",
        row={
            "project_id": project_id,
            "id": "f-1",
            "ts": TS,
            "interaction_id": "i-1",
            "thumbs": 1,
            "source": "user",
            "body": "{}",
        },
    )
    signal = PreparedEvent(
        project_id=project_id,
        event_id="s-1",
        type="signal",
        row={
            "project_id": project_id,
            "id": "s-1",
            "ts": TS,
            "interaction_id": "i-1",
            "kind": "copy",
            "body": "{}",
        },
    )
    with engine.begin() as conn:
        assert write_events(conn, [interaction(project_id, "i-1"), feedback, signal]) == [
            True,
            True,
            True,
        ]
    assert stored_ids(engine, models.interactions, project_id) == {"i-1"}
    assert stored_ids(engine, models.feedback, project_id) == {"f-1"}
    assert stored_ids(engine, models.signals, project_id) == {"s-1"}
    with engine.connect() as conn:
        rows = conn.execute(sa.select(models.event_ids.c.event_id, models.event_ids.c.type))
        types = {row.event_id: row.type for row in rows}
    assert types == {"i-1": "interaction", "f-1": "feedback", "s-1": "signal"}


def test_write_events_of_nothing_writes_nothing(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        assert write_events(conn, []) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(models.event_ids)).scalar() == 0


def test_event_ids_are_per_project(engine: sa.Engine) -> None:
    acme = new_project(engine, "acme")
    globex = new_project(engine, "globex")
    with engine.begin() as conn:
        assert write_events(conn, [interaction(acme, "same")]) == [True]
    with engine.begin() as conn:
        assert write_events(conn, [interaction(globex, "same")]) == [True]
    with engine.begin() as conn:
        assert write_events(conn, [interaction(acme, "same"), interaction(globex, "same")]) == [
            False,
            False,
        ]
    assert stored_ids(engine, models.interactions, acme) == {"same"}
    assert stored_ids(engine, models.interactions, globex) == {"same"}
    assert ledger_ids(engine, acme) == ledger_ids(engine, globex) == {"same"}


def test_the_ledger_remembers_an_id_after_its_row_left_the_hot_store(
    engine: sa.Engine,
) -> None:
    project_id = new_project(engine, "acme")
    with engine.begin() as conn:
        write_events(conn, [interaction(project_id, "gone"), interaction(project_id, "kept")])
    with engine.begin() as conn:  # the row leaves the hot store (retention, archiving)
        conn.execute(models.interactions.delete().where(models.interactions.c.id == "gone"))
    assert stored_ids(engine, models.interactions, project_id) == {"kept"}
    assert ledger_ids(engine, project_id) == {"gone", "kept"}

    with engine.begin() as conn:
        fresh = write_events(conn, [interaction(project_id, "gone")])

    assert fresh == [False]
    assert stored_ids(engine, models.interactions, project_id) == {"kept"}


# --- timestamps --------------------------------------------------------------------------


def test_timestamps_round_trip_as_utc_aware_values(engine: sa.Engine) -> None:
    project_id = new_project(engine, "acme")
    before = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        write_events(conn, [interaction(project_id, "a")])
    after = dt.datetime.now(dt.UTC)
    with engine.connect() as conn:
        row = conn.execute(sa.select(models.interactions)).one()
        ledger = conn.execute(sa.select(models.event_ids)).one()
    ts, received_at = utc(row.ts), utc(row.received_at)
    assert ts == TS
    assert ts is not None and ts.utcoffset() == dt.timedelta(0)
    assert received_at is not None and before <= received_at <= after
    assert utc(ledger.received_at) == received_at


def test_a_timestamp_sent_with_an_offset_is_stored_as_the_same_instant_in_utc(
    runtime: Runtime, tenant: Tenant
) -> None:
    sent = dt.datetime(2026, 3, 1, 12, 0, 0, 250000, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    key = runtime.verify(tenant.secret_key)
    event = make_event("interaction", {"input": "hi"}, id="i-1", timestamp=sent)
    result = runtime.ingestor.ingest(key, [json.dumps(event).encode()])
    assert result.all_stored
    with runtime.engine.connect() as conn:
        raw = conn.execute(sa.select(models.interactions.c.ts)).scalar_one()
        # the stored value sorts and compares as UTC on both databases
        later = conn.execute(
            sa.select(sa.func.count())
            .select_from(models.interactions)
            .where(models.interactions.c.ts > dt.datetime(2026, 3, 1, 10, 30, tzinfo=dt.UTC))
        ).scalar_one()
    assert utc(raw) == dt.datetime(2026, 3, 1, 10, 0, 0, 250000, tzinfo=dt.UTC)
    assert later == 0


# --- SQLite durability pragmas -----------------------------------------------------------


def pragmas(conn: sa.Connection) -> tuple[Any, Any]:
    synchronous = conn.exec_driver_sql("PRAGMA synchronous").scalar()
    journal_mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
    return synchronous, journal_mode


def hold_every_connection(engine: sa.Engine, n: int) -> list[tuple[int, Any, Any]]:
    """Check out ``n`` connections at once, each from its own thread; read their pragmas."""
    barrier = threading.Barrier(n, timeout=30)
    seen: list[tuple[int, Any, Any]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def check_out() -> None:
        try:
            with engine.connect() as conn:
                synchronous, journal_mode = pragmas(conn)
                dbapi = conn.connection.dbapi_connection
                with lock:
                    seen.append((id(dbapi), synchronous, journal_mode))
                barrier.wait()  # every connection is held at this point
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=check_out) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return seen


def test_every_pooled_sqlite_connection_is_synchronous_full_in_wal_mode(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}", pool_size=3, max_overflow=5)
    try:
        capacity = 3 + 5
        for _ in range(2):  # new connections, then the same ones handed out again
            seen = hold_every_connection(engine, capacity)
            assert len({dbapi for dbapi, _, _ in seen}) == capacity
            assert [(s, j) for _, s, j in seen] == [(2, "wal")] * capacity
        with engine.connect() as conn:
            assert pragmas(conn) == (2, "wal")
    finally:
        engine.dispose()


def test_the_default_sqlite_pool_applies_the_pragmas_to_every_connection(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'a.db'}")
    try:
        pool = engine.pool
        assert isinstance(pool, sa.pool.QueuePool)
        capacity = pool.size() + pool._max_overflow
        seen = hold_every_connection(engine, capacity)
        assert [(s, j) for _, s, j in seen] == [(2, "wal")] * capacity
    finally:
        engine.dispose()


def test_sqlite_synchronous_normal_sets_the_pragma_to_1(tmp_path: Path) -> None:
    engine = create_engine(
        f"sqlite:///{tmp_path / 'a.db'}", sqlite_synchronous="NORMAL", pool_size=2, max_overflow=2
    )
    try:
        seen = hold_every_connection(engine, 4)
        assert [(s, j) for _, s, j in seen] == [(1, "wal")] * 4
    finally:
        engine.dispose()


def test_the_runtime_engine_honours_the_sqlite_synchronous_setting(
    tmp_path: Path,
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'a.db'}",
        sqlite_synchronous="NORMAL",
        run_worker=False,
        _env_file=None,  # type: ignore[call-arg]
    )
    runtime = Runtime.build(settings, load_plugins=False)
    try:
        with runtime.engine.connect() as conn:
            assert pragmas(conn) == (1, "wal")
    finally:
        runtime.engine.dispose()


@pytest.mark.parametrize("level", ["OFF", "full; DROP TABLE projects", ""])
def test_an_unsafe_sqlite_synchronous_level_is_refused(tmp_path: Path, level: str) -> None:
    with pytest.raises(ConfigError, match="FULL, EXTRA or NORMAL"):
        create_engine(f"sqlite:///{tmp_path / 'a.db'}", sqlite_synchronous=level)
