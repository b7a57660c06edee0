"""The whole storage stage with the lake on S3 (moto's server mode, reached by s3fs over HTTP),
on SQLite and PostgreSQL: tiering, SQL over both tiers, erasure (the user's rows gone from
every object, raw and decoded) and cold retention."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from closedloop import make_event
from closedloop.runtime import Runtime
from closedloop.settings import Settings
from closedloop.store.db import utcnow
from closedloop.store.enforce import enforce_retention
from closedloop.store.lake.tiering import tier
from closedloop.store.olap import Analytics
from closedloop.types import ProjectKey
from tests.integration.conftest import S3Store

VICTIM, OTHER = "victim-s3-91fe", "other-s3-07aa"
CANARY = "narwhal saffron gondola"


@pytest.fixture
def s3_runtime(settings: Settings, moto_s3: S3Store) -> Iterator[Runtime]:
    rt = Runtime.build(
        settings.with_overrides(lake_url=moto_s3.url, lake_options=moto_s3.options),
        load_plugins=False,
    )
    rt.start()
    yield rt
    rt.stop()


def _events(user: str, text: str, days_ago: float) -> list[bytes]:
    out = []
    for n in range(3):
        iid = f"{user}-{days_ago:g}-i{n}"
        i = make_event(
            "interaction", {"input": f"{text} {n}", "output": "ok", "user_id": user}, id=iid
        )
        f = make_event("feedback", {"interaction_id": iid, "comment": text}, id=f"{iid}-f")
        for e in (i, f):
            e["timestamp"] = (utcnow() - dt.timedelta(days=days_ago, minutes=n)).isoformat()
            out.append(json.dumps(e).encode())
    return out


def _objects(rt: Runtime) -> dict[str, bytes]:
    fs = rt.lake.fs
    return {p: fs.cat_file(p) for p in fs.find(rt.lake.root)}


def test_tier_query_erase_and_retention_on_s3(s3_runtime: Runtime) -> None:
    rt = s3_runtime
    project, _, _ = rt.projects.create("shop")
    key = ProjectKey(project_id=project.id, project_name="shop", kind="secret", key_id=0)
    batch = _events(VICTIM, CANARY, 50) + _events(OTHER, "plain words", 50)
    batch += _events(VICTIM, CANARY, 0) + _events(OTHER, "plain words", 0)
    assert rt.ingestor.ingest(key, batch).count("stored") == 24
    rt.enricher.run()
    analytics = Analytics(rt.engine, rt.settings.resolved_lake_url(), rt.settings.lake_options)
    sql = (
        "SELECT i.user_id, count(*) AS n FROM feedback f "
        "JOIN interactions i ON f.interaction_id = i.id GROUP BY 1 ORDER BY 1"
    )
    before = analytics.query(sql, project_id=project.id)

    report = tier(rt.engine, rt.lake, hot_days_of=lambda _pid: 30.0)
    assert report.rows == 12
    objects = _objects(rt)
    assert any(p.endswith(".parquet") for p in objects), objects.keys()
    assert all(p.startswith(rt.lake.root + "/") for p in objects)
    after = analytics.query(sql, project_id=project.id)
    assert after.equals(before), (before, after)

    receipt = rt.erase_user(project.id, VICTIM)
    assert sum(f["removed_rows"] for f in receipt.lake) == 6
    assert receipt.hot["interactions"] == 3
    for path, data in _objects(rt).items():
        decoded = json.dumps(pq.read_table(pa.BufferReader(data)).to_pylist(), default=str)
        for needle in (VICTIM, CANARY.split()[0]):
            assert needle.encode() not in data, (path, needle)
            assert needle not in decoded, (path, needle)
    left = analytics.query(sql, project_id=project.id)
    assert left.to_dict("records") == [{"user_id": OTHER, "n": 6}]

    rt.projects.set_retention(project.id, json.dumps({"hot_days": 30, "cold_days": 40}))
    done = enforce_retention(rt.engine, rt.lake)
    assert done.lake_rows[project.id] == 6, "the other user's 50-day-old rows"
    assert not [p for p in _objects(rt) if p.endswith(".parquet")]
    remaining: Any = analytics.query(
        "SELECT count(*) AS n FROM interactions", project_id=project.id
    )
    assert remaining["n"].tolist() == [3], "the other user's recent interactions, hot"
