"""Fixtures of the integration tests: an S3 store (moto's server mode, a real HTTP endpoint
that s3fs talks to as it would to AWS) and lakes on a local folder or on S3."""

from __future__ import annotations

import collections
import datetime as dt
import json
import logging
import socket
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from closedloop import make_event
from closedloop.runtime import Runtime
from closedloop.store.db import utcnow
from closedloop.store.lake import manifest
from closedloop.store.lake.files import Lake
from closedloop.store.lake.layout import ENTITIES, table_of
from closedloop.store.lake.tiering import read_file, to_arrow
from tests.conftest import Tenant


@dataclass(frozen=True)
class S3Store:
    """A bucket on the test S3 server."""

    url: str  # s3://bucket/prefix
    options: dict[str, Any]  # fsspec storage options


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's S3 server on a free port of the loopback interface (as s3fs's own tests run it)."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def moto_s3(moto_endpoint: str) -> S3Store:
    """A fresh bucket: its ``s3://bucket/prefix`` URL and the storage options to reach it."""
    import s3fs

    options: dict[str, Any] = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": moto_endpoint, "region_name": "eu-west-1"},
        # a fresh instance per bucket: fsspec caches instances (and their listings) by options
        "skip_instance_cache": True,
    }
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(**options).mkdir(bucket)
    return S3Store(url=f"s3://{bucket}/closedloop", options=options)


@pytest.fixture(params=["local", "s3"])
def lake(request: pytest.FixtureRequest, tmp_path: Path) -> Lake:
    """A lake on a local folder, then on S3."""
    if request.param == "local":
        return Lake(str(tmp_path / "lake"))
    store: S3Store = request.getfixturevalue("moto_s3")
    return Lake(store.url, store.options)


# -- rows across the hot store and the lake --------------------------------------------------

#: The seeded events' first day: well outside a 30-day hot window.
OLD = (utcnow() - dt.timedelta(days=60)).replace(hour=22, minute=0, second=0, microsecond=0)


def _event(kind: str, body: dict[str, Any], id: str, ts: dt.datetime) -> bytes:
    return json.dumps(make_event(kind, body, id=id, timestamp=ts)).encode()  # type: ignore[arg-type]


def seed_lake_rows(runtime: Runtime, *tenants: Tenant, days: int = 3, per_day: int = 4) -> None:
    """For each tenant: old, settled interactions with feedback and signals over ``days`` days
    (from 22:00 in 47-minute steps: each day's rows cross UTC midnight), plus rows that must
    stay hot: a recent interaction, pending feedback, and an old interaction not enriched."""
    for tenant in tenants:
        events: list[bytes] = []
        for d in range(days):
            for k in range(per_day):
                ts = OLD + dt.timedelta(days=d, minutes=47 * k)
                i = f"{tenant.name}-i-{d}-{k}"
                body = {
                    "input": f"question {d}.{k}",
                    "output": f"answer {d}.{k}",
                    "session_id": f"s-{d}",
                    "user_id": f"u-{k % 2}",
                    "model": {"name": "m", "version": "1", "provider": "p"},
                    "prompt": {"name": "support", "version": str(k)},
                    "latency_ms": 12.5 * k,
                    "tokens": {"input": 10 + k, "output": 20 + k},
                    "cost_usd": 0.001 * k,
                }
                events.append(_event("interaction", body, i, ts))
                fb: dict[str, Any] = {
                    "interaction_id": i,
                    "thumbs": 1 if k % 2 else -1,
                    "comment": f"note {k}",
                }
                if k == 0:
                    fb = {"interaction_id": i, "rating": 4.0, "label": "ok", "correction": "x"}
                events.append(_event("feedback", fb, f"{i}-f", ts + dt.timedelta(seconds=5)))
                copy = {"interaction_id": i, "kind": "copy"}
                events.append(_event("signal", copy, f"{i}-s", ts + dt.timedelta(seconds=7)))
        recent = utcnow() - dt.timedelta(days=1)
        new = {"input": "new", "output": "a"}
        events.append(_event("interaction", new, f"{tenant.name}-i-new", recent))
        wait = {"interaction_id": "ghost", "thumbs": 1}
        events.append(_event("feedback", wait, f"{tenant.name}-f-wait", OLD))
        _ingest(runtime, tenant, events)
    runtime.enricher.run()
    for tenant in tenants:
        late = {"input": "late", "output": "a"}
        _ingest(runtime, tenant, [_event("interaction", late, f"{tenant.name}-i-late", OLD)])


def _ingest(runtime: Runtime, tenant: Tenant, events: list[bytes]) -> None:
    result = runtime.ingestor.ingest(runtime.verify(tenant.secret_key), events)
    assert all(r.status == "stored" for r in result.results), result


Key = tuple[str, int, str]


def hot_rows(engine: sa.Engine) -> dict[Key, dict[str, Any]]:
    """Every row of the hot tables that tiering moves, by (entity, project, id)."""
    rows: dict[Key, dict[str, Any]] = {}
    with engine.connect() as conn:
        for entity in ENTITIES:
            t = table_of(entity)
            found = conn.execute(sa.select(*t.c)).all()
            for row in to_arrow(entity, found).to_pylist():
                rows[(entity, row["project_id"], row["id"])] = row
    return rows


def cold_rows(engine: sa.Engine, lake: Lake) -> list[tuple[Key, dict[str, Any]]]:
    """Every row of the files the manifest lists (verified), with repeats if any."""
    with engine.connect() as conn:
        files = manifest.published(conn)
    out = []
    for f in files:
        for row in read_file(lake, f).to_pylist():
            assert row["project_id"] == f.project_id
            out.append(((f.entity, row["project_id"], row["id"]), row))
    return out


def assert_exactly_once(
    engine: sa.Engine, lake: Lake, before: dict[Key, dict[str, Any]], *, strays: bool = False
) -> tuple[int, int]:
    """Every row of ``before`` is once across hot and cold, unchanged; unless ``strays``,
    the lake holds no file the manifest does not list. Returns (hot, cold) row counts."""
    hot = hot_rows(engine)
    cold = cold_rows(engine, lake)
    seen = collections.Counter([*hot, *(k for k, _ in cold)])
    twice = [k for k, n in seen.items() if n > 1]
    assert not twice, f"rows in both tiers or twice in the lake: {twice[:5]}"
    assert set(seen) == set(before), "rows lost or invented"
    for key, row in [*hot.items(), *cold]:
        assert row == before[key], key
    if not strays:
        with engine.connect() as conn:
            listed = {f.path for f in manifest.published(conn)}
        assert set(lake.list()) == listed, "stray files in the lake"
    return len(hot), len(cold)
