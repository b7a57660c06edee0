"""Retention per project, on SQLite and PostgreSQL: the API validates it naming the field,
and the retention job deletes lake files, sessions and vectors past their days, only in the
project whose retention says so."""

from __future__ import annotations

import datetime as dt
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from closedloop import make_event
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utcnow
from closedloop.store.enforce import enforce_retention
from closedloop.store.lake import manifest
from closedloop.store.lake.tiering import tier
from tests.conftest import Tenant


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"hot_days": 0}, "hot_days"),
        ({"hot_days": -3}, "hot_days"),
        ({"hot_days": 30, "cold_days": 10}, "cold_days"),
        ({"vector_days": 0}, "vector_days"),
        ({"erased_events": "ignore"}, "erased_events"),
        ({"hot_days": "a month"}, "hot_days"),
        ({"colour": "red"}, "colour"),
        ({"cold_days": 1e9}, "cold_days"),
    ],
)
async def test_a_bad_retention_is_refused_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient, tenant: Tenant, body: dict[str, Any], field: str
) -> None:
    before = (await client.get("/v1/project/retention", headers=tenant.headers())).json()
    r = await client.put("/v1/project/retention", json=body, headers=tenant.headers())
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["field"] == field, r.text
    after = (await client.get("/v1/project/retention", headers=tenant.headers())).json()
    assert after == before


async def test_retention_round_trips_with_null_meaning_keep(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = {"hot_days": 7, "cold_days": None, "vector_days": 14, "erased_events": "drop"}
    r = await client.put("/v1/project/retention", json=body, headers=tenant.headers())
    assert r.status_code == 200, r.text
    got = (await client.get("/v1/project/retention", headers=tenant.headers())).json()
    assert got == {"hot_days": 7.0, "cold_days": None, "vector_days": 14.0, "erased_events": "drop"}


def _batch(prefix: str, days_ago: float) -> list[dict[str, Any]]:
    when = (utcnow() - dt.timedelta(days=days_ago)).isoformat()
    out = []
    for n in range(3):
        i = make_event(
            "interaction",
            {"input": f"question {prefix} {n}", "output": "answer", "session_id": f"{prefix}-s{n}"},
            id=f"{prefix}-i{n}",
        )
        f = make_event(
            "feedback", {"interaction_id": f"{prefix}-i{n}", "comment": "meh"}, id=f"{prefix}-f{n}"
        )
        i["timestamp"] = f["timestamp"] = when
        out += [i, f]
    return out


def _count(runtime: Runtime, table: sa.Table, project_id: int) -> int:
    with runtime.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).where(table.c.project_id == project_id)
            ).scalar_one()
        )


async def test_the_job_deletes_what_is_past_each_projects_days_and_nothing_else(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    for who in (tenant, other_tenant):
        events = _batch("old", 100) + _batch("mid", 40) + _batch("new", 1)
        r = await client.post("/v1/events", json={"events": events}, headers=who.headers())
        assert r.status_code == 200, r.text
    runtime.enricher.run()
    runtime.embedding_job().run()
    report = tier(runtime.engine, runtime.lake, hot_days_of=lambda _pid: 30.0)
    assert report.rows == 2 * 12, "old and mid rows of both projects moved"
    body = {"hot_days": 30, "cold_days": 60, "vector_days": 20}
    r = await client.put("/v1/project/retention", json=body, headers=tenant.headers())
    assert r.status_code == 200, r.text

    done = enforce_retention(runtime.engine, runtime.lake)
    a, b = tenant.project_id, other_tenant.project_id
    assert done.lake_rows[a] == 6, "the 100-day-old interactions and feedback of A"
    assert done.lake_rows.get(b, 0) == 0, "B keeps its lake for the default 730 days"
    with runtime.engine.connect() as conn:
        a_days = {f.day for f in manifest.published(conn, a)}
        b_files = manifest.published(conn, b)
    assert a_days == {(utcnow() - dt.timedelta(days=40)).date()}
    assert sum(f.rows for f in b_files) == 12
    assert all(runtime.lake.exists(f.path) for f in b_files), "B's files are untouched"
    assert _count(runtime, models.sessions, a) == 6, "the 100-day-old sessions of A went"
    assert _count(runtime, models.sessions, b) == 9
    # vectors: A keeps only the texts of the last 20 days (3 inputs, 3 comments)
    assert _count(runtime, models.vectors, a) == 6
    assert _count(runtime, models.vectors, b) == 18
    again = enforce_retention(runtime.engine, runtime.lake)
    assert again.lake_rows[a] == 0 and again.vectors[a] == 0, "a second run finds nothing"
