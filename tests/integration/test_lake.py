"""The cold lake on a local folder and on S3 (moto's server), over SQLite and PostgreSQL:
tiering moves exactly the settled old rows into verified, zstd Parquet files partitioned by
project and day; retention drops whole days; erasure rewrites files through the same verified
publish."""

from __future__ import annotations

import io
import re
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from closedloop.errors import LakeError
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.lake import manifest
from closedloop.store.lake.files import Lake
from closedloop.store.lake.layout import SCHEMA_VERSION, arrow_schema
from closedloop.store.lake.publish import META_CHECKSUM, META_SCHEMA_VERSION
from closedloop.store.lake.tiering import (
    InjectedFailure,
    drop_before,
    read_file,
    rewrite,
    tier,
)
from tests.conftest import Tenant
from tests.integration.conftest import (
    assert_exactly_once,
    hot_rows,
    seed_lake_rows,
)

PART = re.compile(
    r"^(interactions|feedback|signals)/project=(\d+)/day=(\d{4}-\d{2}-\d{2})/part-[0-9a-f]{32}"
    r"\.parquet$"
)


def published(runtime: Runtime) -> list[manifest.LakeFile]:
    with runtime.engine.connect() as conn:
        return manifest.published(conn)


@pytest.mark.parametrize(
    ("backend", "lake"),
    [("sqlite", "local"), ("postgresql", "local"), ("postgresql", "s3")],
    indirect=["lake"],
)
def test_tiering_round_trips_every_column_through_parquet_read_by_duckdb(
    runtime: Runtime, tenant: Tenant, other_tenant: Tenant, lake: Lake
) -> None:
    seed_lake_rows(runtime, tenant, other_tenant, days=2)
    before = hot_rows(runtime.engine)

    report = tier(runtime.engine, lake)

    # 2 projects x 2 seeded days from 22:00 crossing UTC midnight: 3 UTC days each
    assert report.files == 3 * 2 * 3
    assert report.rows == 3 * 16
    assert report.by_entity == {"interactions": 16, "feedback": 16, "signals": 16}
    hot, cold = assert_exactly_once(runtime.engine, lake, before)
    assert cold == 48
    stayed = {k[2] for k in hot_rows(runtime.engine)}
    for name in ("acme", "globex"):
        assert {f"{name}-i-new", f"{name}-f-wait", f"{name}-i-late"} <= stayed

    files = published(runtime)
    for f in files:
        match = PART.match(f.path)
        assert match, f.path
        assert (match[1], int(match[2]), match[3]) == (f.entity, f.project_id, f.day.isoformat())
        assert f.min_ts.date() == f.day == f.max_ts.date()
        assert f.schema_version == SCHEMA_VERSION
        with lake.open(f.path) as fh:
            meta = pq.ParquetFile(io.BytesIO(fh.read())).metadata
        assert meta.num_rows == f.rows
        assert meta.metadata[META_SCHEMA_VERSION] == str(SCHEMA_VERSION).encode()
        assert meta.metadata[META_CHECKSUM] == f.checksum.encode()
        for rg in range(meta.num_row_groups):
            codecs = {meta.row_group(rg).column(c).compression for c in range(meta.num_columns)}
            assert codecs == {"ZSTD"}

    # DuckDB reads the files through fsspec (no extension download): every column is back
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    if not lake.local:
        con.register_filesystem(lake.fs)
    for entity in ("interactions", "feedback", "signals"):
        where = [lake.full(f.path) if lake.local else lake.uri(f.path) for f in files]
        mine = [w for w, f in zip(where, files, strict=True) if f.entity == entity]
        listed = ", ".join("'" + w.replace("'", "''") + "'" for w in mine)
        query = f"SELECT * FROM read_parquet([{listed}], hive_partitioning = false)"
        got = con.sql(query).to_arrow_table()
        assert got.column_names == arrow_schema(entity).names
        rows = got.cast(arrow_schema(entity)).to_pylist()
        want = [v for k, v in before.items() if k[0] == entity and k[2] not in stayed]
        key = lambda r: (r["project_id"], r["id"])  # noqa: E731
        assert sorted(rows, key=key) == sorted(want, key=key)
    con.close()

    # a second run finds nothing more to move
    again = tier(runtime.engine, lake)
    assert (again.files, again.rows, again.recovered) == (0, 0, 0)


def test_files_hold_at_most_file_rows_in_ts_order_and_each_project_has_its_window(
    runtime: Runtime, tenant: Tenant, other_tenant: Tenant, tmp_path: Any
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    seed_lake_rows(runtime, tenant, other_tenant, days=1, per_day=8)
    before = hot_rows(runtime.engine)
    report = tier(runtime.engine, lake, file_rows=3, hot_days_of={other_tenant.project_id: 90.0})
    # acme: 8 rows over two UTC days (3 before midnight, 5 after): files of 3, 3 and 2
    assert report.files == 3 * 3
    assert assert_exactly_once(runtime.engine, lake, before)[1] == 24
    assert all(f.project_id == tenant.project_id for f in published(runtime))
    for f in published(runtime):
        assert f.rows <= 3
        table = read_file(lake, f)
        ts = table.column("ts").to_pylist()
        assert ts == sorted(ts)


def test_rows_that_change_while_tiered_stay_hot_and_their_file_is_deleted(
    runtime: Runtime, tenant: Tenant, tmp_path: Any
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    seed_lake_rows(runtime, tenant, days=1, per_day=2)

    edits = [
        models.interactions.update().values(model_name="edited"),
        models.feedback.update().values(comment="edited"),
        models.signals.update().values(session_id="edited"),
    ]

    def touch(step: str) -> None:
        if step == "move":  # a file is verified: now its rows change in the hot store
            with runtime.engine.begin() as conn:
                conn.execute(edits.pop(0))  # entities go in order: the one being tiered

    report = tier(runtime.engine, lake, on_step=touch)
    assert report.conflicts == 3  # one per entity: its file rolls back
    assert published(runtime) == [] and lake.list() == []
    before = hot_rows(runtime.engine)
    assert {r["comment"] for k, r in before.items() if k[0] == "feedback"} == {"edited"}
    assert tier(runtime.engine, lake).files == 3
    assert_exactly_once(runtime.engine, lake, before)


def test_a_staged_file_that_fails_verification_raises_and_deletes_nothing(
    runtime: Runtime, tenant: Tenant, tmp_path: Any
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    seed_lake_rows(runtime, tenant, days=1)
    before = hot_rows(runtime.engine)

    def garbage(path: str) -> None:
        lake.write(path, lambda f: f.write(b"PAR1 not parquet at all"))

    def other_rows(path: str) -> None:  # a valid file with the same metadata, one id changed
        with lake.open(path) as fh:
            table = pq.read_table(io.BytesIO(fh.read()))
        ids = pc.utf8_upper(table.column("id"))
        table = table.set_column(table.schema.get_field_index("id"), "id", ids)
        lake.write(path, lambda f: pq.write_table(table, f, compression="zstd"))

    def truncated(path: str) -> None:
        with lake.open(path) as fh:
            data = fh.read()
        lake.write(path, lambda f: f.write(data[: len(data) // 2]))

    for corrupt in (garbage, other_rows, truncated):

        def hook(step: str, corrupt: Any = corrupt) -> None:
            if step == "verify":
                (path,) = lake.list("_staging")
                corrupt(path)

        with pytest.raises(LakeError):
            tier(runtime.engine, lake, on_step=hook)
        assert hot_rows(runtime.engine) == before, corrupt.__name__
        assert published(runtime) == [] and lake.list() == [], corrupt.__name__


def test_drop_before_removes_whole_days_then_recovery_finishes_a_crashed_drop(
    runtime: Runtime, tenant: Tenant, other_tenant: Tenant, tmp_path: Any
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    seed_lake_rows(runtime, tenant, other_tenant, days=2)
    tier(runtime.engine, lake)
    days = sorted({f.day for f in published(runtime) if f.project_id == tenant.project_id})
    assert len(days) == 3
    cut = days[1]
    doomed = [f for f in published(runtime) if f.project_id == tenant.project_id and f.day < cut]

    with pytest.raises(InjectedFailure):
        drop_before(runtime.engine, lake, tenant.project_id, cut, fail_at="commit")
    assert len(published(runtime)) == 18, "a failed transaction drops nothing"

    with pytest.raises(InjectedFailure):
        drop_before(runtime.engine, lake, tenant.project_id, cut, fail_at="cleanup")
    left = published(runtime)
    assert {f.path for f in doomed} & {f.path for f in left} == set()
    assert all(lake.exists(f.path) for f in doomed), "unlisted files wait for recovery"
    assert tier(runtime.engine, lake).recovered == len(doomed)
    assert set(lake.list()) == {f.path for f in left}

    later = drop_before(runtime.engine, lake, tenant.project_id, days[2])
    mine = [f for f in left if f.project_id == tenant.project_id and f.day < days[2]]
    assert later == sum(f.rows for f in mine) == 3 * 4
    remaining = published(runtime)
    assert {f.project_id for f in remaining if f.day < days[2]} == {other_tenant.project_id}
    assert set(lake.list()) == {f.path for f in remaining}


def _without_user(user: str) -> Any:
    def keep(table: pa.Table) -> pa.Table:
        return table.filter(pc.fill_null(pc.not_equal(table.column("user_id"), user), True))

    return keep


@pytest.mark.parametrize(
    ("backend", "lake"),
    [("sqlite", "local"), ("postgresql", "local"), ("sqlite", "s3")],
    indirect=["lake"],
)
def test_rewrite_removes_rows_through_a_verified_new_file(
    runtime: Runtime, tenant: Tenant, lake: Lake
) -> None:
    seed_lake_rows(runtime, tenant, days=1)
    tier(runtime.engine, lake)
    old = next(f for f in published(runtime) if f.entity == "interactions" and f.rows == 3)
    rows = read_file(lake, old).to_pylist()
    assert [r["user_id"] for r in rows] == ["u-0", "u-1", "u-0"]

    removed, new = rewrite(runtime.engine, lake, old, _without_user("u-1"))
    assert removed == 1 and new is not None
    assert new.path != old.path and new.day == old.day and new.rows == 2
    assert not lake.exists(old.path)
    assert read_file(lake, new).to_pylist() == [r for r in rows if r["user_id"] != "u-1"]
    listed = published(runtime)
    assert new in listed and old.id not in {f.id for f in listed}
    assert set(lake.list()) == {f.path for f in listed}

    assert rewrite(runtime.engine, lake, new, _without_user("nobody")) == (0, new)
    assert rewrite(runtime.engine, lake, new, _without_user("u-0")) == (2, None)
    assert not lake.exists(new.path) and new.id not in {f.id for f in published(runtime)}


def test_a_rewrite_that_fails_at_any_step_leaves_the_old_file_or_the_new_one_listed(
    runtime: Runtime, tenant: Tenant, tmp_path: Any
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    seed_lake_rows(runtime, tenant, days=1)
    tier(runtime.engine, lake)
    old = next(f for f in published(runtime) if f.entity == "interactions" and f.rows == 3)
    for step in ("read", "write", "verify", "move", "commit", "cleanup"):
        with pytest.raises(InjectedFailure):
            rewrite(runtime.engine, lake, old, _without_user("u-1"), fail_at=step)
        listed = published(runtime)
        assert read_file(lake, old).num_rows == 3, f"{step}: the old file is intact"
        if step == "cleanup":  # committed: the new file is listed, the old one is garbage
            assert old.id not in {f.id for f in listed}
        else:
            assert old in listed, step
        assert tier(runtime.engine, lake).files == 0
        listed = published(runtime)
        assert set(lake.list()) == {f.path for f in listed}, f"{step}: leftovers remain"
        total = sum(f.rows for f in listed if f.entity == "interactions")
        assert total == (3 if step == "cleanup" else 4), step


def test_rewrite_refuses_a_file_that_no_longer_matches_its_checksum(
    runtime: Runtime, tenant: Tenant, tmp_path: Any
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    seed_lake_rows(runtime, tenant, days=1)
    tier(runtime.engine, lake)
    old = published(runtime)[0]
    lake.write(old.path, lambda f: f.write(b"bit rot"))
    with pytest.raises(LakeError):
        rewrite(runtime.engine, lake, old, _without_user("u-1"))
    assert old in published(runtime)


def test_the_lake_on_s3_is_listed_and_moved_through_fsspec(moto_s3: Any) -> None:
    lake = Lake(moto_s3.url, moto_s3.options)
    assert lake.list() == []
    lake.write("_staging/a.parquet", lambda f: pq.write_table(pa.table({"x": [1]}), f))
    lake.move("_staging/a.parquet", "signals/project=1/day=2026-01-01/part-a.parquet")
    assert lake.list() == ["signals/project=1/day=2026-01-01/part-a.parquet"]
    assert lake.uri(lake.list()[0]).startswith("s3://")
    modified = lake.modified(lake.list()[0])
    assert modified is not None and modified.tzinfo is not None
    assert lake.delete(lake.list()[0]) and lake.list() == []
