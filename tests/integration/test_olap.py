"""Queries over both tiers on the real store (SQLite and PostgreSQL): the same answer whether
rows are hot, in the lake or split between them; one project's rows only; reads only."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from closedloop import make_event
from closedloop.errors import QueryError
from closedloop.runtime import Runtime
from closedloop.store import olap
from closedloop.store.db import utcnow
from closedloop.store.lake import manifest
from closedloop.store.lake.files import Lake
from closedloop.store.lake.tiering import tier
from closedloop.store.olap import Analytics
from tests.conftest import Tenant

NOW = utcnow().replace(microsecond=0)
DAYS = 8

SEGMENTS = """
WITH f AS (
    SELECT interaction_id, avg(CASE WHEN thumbs > 0 THEN 1.0 ELSE 0.0 END) AS positive
    FROM feedback WHERE thumbs IS NOT NULL GROUP BY interaction_id
)
SELECT date_trunc('day', i.ts) AS day, i.model_version, i.prompt_version,
       count(*) AS interactions, avg(f.positive) AS positive_rate, avg(i.quality) AS quality
FROM interactions i LEFT JOIN f ON f.interaction_id = i.id
GROUP BY ALL ORDER BY ALL
"""


def events(prefix: str, n: int) -> list[dict[str, Any]]:
    """``n`` interactions over the last DAYS days, most with thumbs, some with a signal."""
    out = []
    for k in range(n):
        at = NOW - dt.timedelta(days=DAYS) + dt.timedelta(hours=k * DAYS * 24 / n, microseconds=k)
        iid = f"{prefix}-i{k}"
        body = {
            "input": f'question {k}\nwith a newline, a comma and a "quote"',
            "output": "" if k % 7 == 0 else f"answer {k}",
            "session_id": f"{prefix}-s{k % 5}",
            "user_id": f"{prefix}-u{k % 3}",
            "model": {"name": "gpt", "version": f"v{k % 2}", "provider": "openai"},
            "prompt": {"name": "support", "version": f"p{k % 3}"},
            "latency_ms": 100.0 + k / 3,
            "tokens": {"input": 10 + k, "output": 20},
        }
        interaction = make_event("interaction", body, id=iid)
        interaction["timestamp"] = at.isoformat()
        out.append(interaction)
        if k % 4 != 3:
            fb = make_event(
                "feedback",
                {
                    "interaction_id": iid,
                    "thumbs": 1 if k % 3 else -1,
                    "comment": f'c{k}\nsecond, "line"',
                },
                id=f"{prefix}-f{k}",
            )
            fb["timestamp"] = (at + dt.timedelta(seconds=30)).isoformat()
            out.append(fb)
        if k % 5 == 0:
            sig = make_event("signal", {"interaction_id": iid, "kind": "copy"}, id=f"{prefix}-g{k}")
            sig["timestamp"] = (at + dt.timedelta(seconds=40)).isoformat()
            out.append(sig)
    return out


async def ingest(client: httpx.AsyncClient, tenant: Tenant, batch: list[dict[str, Any]]) -> None:
    for start in range(0, len(batch), 100):
        r = await client.post(
            "/v1/events", json={"events": batch[start : start + 100]}, headers=tenant.headers()
        )
        assert r.status_code == 200, r.text


def analytics(runtime: Runtime) -> Analytics:
    return Analytics(runtime.engine, runtime.settings.resolved_lake_url())


def move(runtime: Runtime, hot_days: float) -> int:
    """Tier every settled row older than ``hot_days``; returns the rows moved."""
    lake = Lake(runtime.settings.resolved_lake_url())
    report = tier(runtime.engine, lake, now=NOW, hot_days_of=hot_days, file_rows=7, wait=True)
    return report.rows


def frame(a: Analytics, sql: str, tenant: Tenant, **kw: Any) -> pd.DataFrame:
    df = a.query(sql, project_id=tenant.project_id, **kw)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


def counts(runtime: Runtime, tenant: Tenant) -> tuple[int, int]:
    """(files of the tenant in the manifest, rows in them)."""
    with runtime.engine.connect() as conn:
        files = manifest.published(conn, tenant.project_id)
    return len(files), sum(f.rows for f in files)


@pytest.fixture
async def loaded(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> Analytics:
    await ingest(client, tenant, events("a", 60))
    await ingest(client, other_tenant, events("b", 20))
    runtime.enricher.run(now=NOW + dt.timedelta(days=1))
    return analytics(runtime)


QUERIES = [
    SEGMENTS,
    "SELECT * FROM feedback",
    "SELECT * FROM interactions",
    "SELECT s.*, i.model_version FROM signals s JOIN interactions i ON i.id = s.interaction_id",
    "SELECT count(*) AS n, min(ts) AS first, max(ts) AS last FROM feedback",
]


@pytest.fixture(params=["adbc", "portable"])
def staging(
    request: pytest.FixtureRequest, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> str:
    """The path hot rows are staged by: ADBC on PostgreSQL (its driver is installed in the test
    environment), else the portable one (the sqlite3 cursor, psycopg's COPY); SQLite never
    takes ADBC (its driver's own copy of SQLite would break the stdlib's WAL locks)."""
    if request.param == "portable":
        monkeypatch.setattr(olap, "USE_ADBC", False)
    fast = request.param == "adbc" and runtime.engine.dialect.name == "postgresql"
    assert (olap._adbc_driver(runtime.engine) is not None) == fast
    return "adbc" if fast else "portable"


async def test_answers_are_the_same_hot_split_and_cold(
    loaded: Analytics, runtime: Runtime, tenant: Tenant, staging: str
) -> None:
    hot = [frame(loaded, q, tenant) for q in QUERIES]
    assert len(hot[1]) == 45 and len(hot[2]) == 60
    assert hot[0]["positive_rate"].notna().any() and hot[0]["quality"].notna().any()

    assert move(runtime, hot_days=DAYS / 2) > 0
    files, rows = counts(runtime, tenant)
    assert 0 < rows < 60 + 45 + 12, "split: some rows in the lake, some hot"
    for q, expected in zip(QUERIES, hot, strict=True):
        pd.testing.assert_frame_equal(frame(loaded, q, tenant), expected)

    move(runtime, hot_days=0)
    assert counts(runtime, tenant)[1] == 60 + 45 + 12, "cold: every row in the lake"
    for q, expected in zip(QUERIES, hot, strict=True):
        pd.testing.assert_frame_equal(frame(loaded, q, tenant), expected)


async def test_both_staging_paths_give_the_same_tables(
    loaded: Analytics, runtime: Runtime, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    move(runtime, hot_days=DAYS / 2)
    since, until = NOW - dt.timedelta(days=6), NOW - dt.timedelta(days=1)
    sqls = [*(f"SELECT * FROM {v}" for v in olap.VIEWS), "SELECT id, ts FROM feedback"]
    for window in ({}, {"since": since}, {"since": since, "until": until}):
        fast = [loaded.arrow(q, project_id=tenant.project_id, **window) for q in sqls]
        monkeypatch.setattr(olap, "USE_ADBC", False)
        portable = [loaded.arrow(q, project_id=tenant.project_id, **window) for q in sqls]
        monkeypatch.setattr(olap, "USE_ADBC", True)
        for q, a, b in zip(sqls, fast, portable, strict=True):
            assert a.schema == b.schema, q
            key = [(c, "ascending") for c in a.column_names]
            assert a.sort_by(key).equals(b.sort_by(key)), q
            assert a.num_rows > 0 or "until" in window, q
    table = loaded.arrow("SELECT * FROM interactions", project_id=tenant.project_id)
    assert table.column("enriched_at").null_count == 0 and table.column("ts").type.tz == "UTC"
    feedback = loaded.arrow("SELECT * FROM feedback", project_id=tenant.project_id)
    assert feedback.column("rating").null_count == feedback.num_rows, "NULLs stay NULL"
    assert str(feedback.schema.field("thumbs").type) == "int16"


async def test_rows_tiered_during_a_query_are_counted_once(
    loaded: Analytics,
    runtime: Runtime,
    tenant: Tenant,
    staging: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tiering commits between the query's manifest read and its hot-row read: the query still
    sees the store as of one instant (the rows hot, the files not yet listed)."""
    sql = "SELECT (SELECT count(*) FROM interactions) AS i, (SELECT count(*) FROM feedback) AS f"
    cls = olap._AdbcSnapshot if staging == "adbc" else olap._PortableSnapshot
    original = cls.rows
    moved: list[int] = []

    def rows(self: Any, *args: Any) -> Any:
        if not moved:  # after the first view's manifest read
            moved.append(move(runtime, hot_days=0))
        return original(self, *args)

    monkeypatch.setattr(cls, "rows", rows)
    df = loaded.query(sql, project_id=tenant.project_id)
    assert moved and moved[0] > 0 and counts(runtime, tenant)[1] == 60 + 45 + 12
    assert (df["i"].iloc[0], df["f"].iloc[0]) == (60, 45)
    monkeypatch.setattr(cls, "rows", original)
    df = loaded.query(sql, project_id=tenant.project_id)  # now from the lake
    assert (df["i"].iloc[0], df["f"].iloc[0]) == (60, 45)


async def test_time_window_cuts_hot_and_cold_rows_alike(
    loaded: Analytics, runtime: Runtime, tenant: Tenant
) -> None:
    since, until = NOW - dt.timedelta(days=6), NOW - dt.timedelta(days=2, hours=3)
    sql = "SELECT id, ts, thumbs FROM feedback"
    expected = frame(loaded, sql, tenant, since=since, until=until)
    everything = frame(loaded, sql, tenant)
    inside = (everything["ts"] >= since) & (everything["ts"] < until)
    pd.testing.assert_frame_equal(expected, everything[inside].reset_index(drop=True))
    move(runtime, hot_days=4)
    pd.testing.assert_frame_equal(frame(loaded, sql, tenant, since=since, until=until), expected)


async def test_timestamps_and_types_survive_both_tiers(
    loaded: Analytics, runtime: Runtime, tenant: Tenant
) -> None:
    move(runtime, hot_days=DAYS / 2)
    sql = "SELECT id, ts, received_at, thumbs, comment FROM feedback ORDER BY ts"
    table = loaded.arrow(sql, project_id=tenant.project_id)
    assert str(table.schema.field("ts").type) == "timestamp[us, tz=UTC]"
    assert str(table.schema.field("thumbs").type) == "int16"
    df = loaded.query(sql, project_id=tenant.project_id)
    assert str(df["ts"].dtype) == "datetime64[us, UTC]"
    first = df.iloc[0]
    assert (
        first["id"] == "a-f0" and first["thumbs"] == -1 and first["comment"] == 'c0\nsecond, "line"'
    )
    assert first["ts"].to_pydatetime() == NOW - dt.timedelta(days=DAYS) + dt.timedelta(seconds=30)
    i = loaded.query(
        "SELECT body, output_empty, enriched_at FROM (SELECT body, "
        "json_extract_string(body, '$.output') = '' AS output_empty, enriched_at "
        "FROM interactions WHERE id = 'a-i0')",
        project_id=tenant.project_id,
    ).iloc[0]
    assert "a newline" in i["body"] and bool(i["output_empty"])
    assert i["enriched_at"].tzinfo is not None


async def test_a_project_never_sees_another_projects_rows(
    loaded: Analytics, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    move(runtime, hot_days=DAYS / 2)  # both projects: some rows hot, some cold
    for who, prefix, n in ((tenant, "a", 60), (other_tenant, "b", 20)):
        df = loaded.query(
            "SELECT id, project_id FROM interactions UNION ALL SELECT interaction_id, "
            "project_id FROM feedback",
            project_id=who.project_id,
        )
        assert set(df["project_id"]) == {who.project_id}
        assert all(x.startswith(f"{prefix}-") for x in df["id"])
        assert df["id"].nunique() == n and len(df) > n
    with runtime.engine.connect() as conn:
        theirs = manifest.published(conn, other_tenant.project_id)
    assert theirs, "the other project has lake files"
    path = Lake(runtime.settings.resolved_lake_url()).full(theirs[0].path)
    with pytest.raises(QueryError, match="Permission"):
        loaded.query(f"SELECT * FROM read_parquet('{path}')", project_id=tenant.project_id)


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE x AS SELECT 1",
        "INSERT INTO feedback (id) VALUES ('x')",
        "DROP VIEW feedback",
        "COPY (SELECT 1) TO '{out}'",
        "ATTACH '{out}' AS other",
        "INSTALL httpfs",
        "LOAD httpfs",
        "SET enable_external_access = true",
        "SELECT 1; DROP VIEW feedback",
        "PRAGMA version",
    ],
)
async def test_statements_other_than_reads_are_refused(
    loaded: Analytics, tenant: Tenant, tmp_path: Path, statement: str
) -> None:
    out = tmp_path / "written.csv"
    with pytest.raises(QueryError, match="only reads|exactly one statement"):
        loaded.query(statement.format(out=out), project_id=tenant.project_id)
    assert not out.exists()


async def test_a_select_cannot_reach_files_or_settings(
    loaded: Analytics, tenant: Tenant, tmp_path: Path
) -> None:
    secret = tmp_path / "secret.csv"
    secret.write_text("a\n1\n")
    for sql in (
        f"SELECT * FROM read_csv('{secret}')",
        f"SELECT * FROM read_text('{secret}')",
        f"SELECT * FROM glob('{tmp_path}/*')",
    ):
        with pytest.raises(QueryError, match="Permission|disabled"):
            loaded.query(sql, project_id=tenant.project_id)


async def test_bad_sql_names_the_problem_and_the_views(loaded: Analytics, tenant: Tenant) -> None:
    with pytest.raises(QueryError, match="nope") as info:
        loaded.query("SELECT nope FROM feedback", project_id=tenant.project_id)
    assert "interactions, feedback, signals" in str(info.value)
    with pytest.raises(QueryError, match="parse"):
        loaded.query("SELEC 1", project_id=tenant.project_id)
    with pytest.raises(QueryError, match="users"):
        loaded.query("SELECT * FROM users", project_id=tenant.project_id)


async def test_parameters_sessions_and_whole_rows(
    loaded: Analytics, runtime: Runtime, tenant: Tenant
) -> None:
    move(runtime, hot_days=DAYS / 2)
    pid = tenant.project_id
    df = loaded.query(
        "SELECT count(*) AS n FROM feedback WHERE thumbs = ?", project_id=pid, params=[1]
    )
    assert df["n"].iloc[0] == 30
    sessions = loaded.query("SELECT session_id, turns FROM sessions ORDER BY 1", project_id=pid)
    assert list(sessions["session_id"]) == [f"a-s{k}" for k in range(5)]
    row = loaded.query("SELECT f FROM feedback f WHERE f.id = 'a-f0'", project_id=pid)["f"].iloc[0]
    assert row["comment"].startswith("c0") and "body" in row, "a whole row keeps every column"


async def test_a_remote_lake_is_read_through_fsspec(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await ingest(client, tenant, events("a", 12))
    runtime.enricher.run(now=NOW + dt.timedelta(days=1))
    url = f"memory://olap-{uuid.uuid4().hex}"
    remote = Analytics(runtime.engine, url)
    expected = frame(remote, SEGMENTS, tenant)
    report = tier(runtime.engine, Lake(url), now=NOW, hot_days_of=DAYS / 2, wait=True)
    assert report.files > 0
    pd.testing.assert_frame_equal(frame(remote, SEGMENTS, tenant), expected)
    pd.testing.assert_frame_equal(
        frame(remote, "SELECT * FROM feedback", tenant),
        frame(Analytics(runtime.engine, url), "SELECT * FROM feedback", tenant),
    )


async def test_query_by_project_name_with_settings(loaded: Analytics, runtime: Runtime) -> None:
    df = olap.query(
        "SELECT count(*) AS n FROM interactions", project="acme", settings=runtime.settings
    )
    assert df["n"].iloc[0] == 60
