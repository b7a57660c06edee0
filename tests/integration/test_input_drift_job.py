"""Input drift from stored inputs: the embedding, topic-mix and emerging-topic tests run by the
analysis job, once per interval, each alarm stored once a day; both backends."""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import httpx
import sqlalchemy as sa

from closedloop import make_event
from closedloop.analyze.job import AnalyzeParams, Analyzer
from closedloop.enrich.job import Enricher
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utcnow
from tests.conftest import Tenant

# Two hours before the end of the UTC day at the latest: the test's "due again the same day"
# run is two hours later, and an input alarm is stored once per day.
NOW = min(utcnow(), utcnow().replace(hour=21, minute=0, second=0)).replace(microsecond=0)
OLD = ["what is the weather in town {k} today", "please refund my order number {k}"]
NEW = "translate the word number {k} into french for me"


def batch(template: str, ks: range, start: dt.datetime, rng: random.Random) -> list[dict[str, Any]]:
    out = []
    for k in ks:
        e = make_event(
            "interaction",
            {"input": template.format(k=k), "output": "ok"},
            id=f"t{len(template)}-{k}",
        )
        e["timestamp"] = (start + dt.timedelta(minutes=rng.randrange(0, 600))).isoformat()
        out.append(e)
    return out


async def ingest(client: httpx.AsyncClient, tenant: Tenant, events: list[dict[str, Any]]) -> None:
    for i in range(0, len(events), 500):
        part = events[i : i + 500]
        r = await client.post("/v1/events", json={"events": part}, headers=tenant.headers())
        assert r.status_code == 200, r.text


def kinds(runtime: Runtime) -> list[str]:
    with runtime.engine.connect() as conn:
        return sorted(conn.execute(sa.select(models.drift_alarms.c.kind)).scalars())


async def test_a_new_kind_of_question_raises_each_input_alarm_once(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    rng = random.Random(1)
    events = []
    for template in OLD:
        events += batch(template, range(60), NOW - dt.timedelta(days=5), rng)
    await ingest(client, tenant, events)
    Enricher(runtime.engine).run(now=utcnow())
    runtime.embedding_job().run()
    analyzer = Analyzer(runtime.engine, runtime.embedder().name, AnalyzeParams())
    # the topics are learned while only the old questions exist, then the world changes
    analyzer.run(tenant.project_id, now=NOW - dt.timedelta(days=2))
    assert kinds(runtime) == [], "one window of data: nothing to compare"

    events = []
    for template in OLD:
        events += batch(template, range(60, 90), NOW - dt.timedelta(hours=12), rng)
    events += batch(NEW, range(60), NOW - dt.timedelta(hours=12), rng)
    await ingest(client, tenant, events)
    Enricher(runtime.engine).run(now=utcnow())
    runtime.embedding_job().run()
    analyzer.run(tenant.project_id, now=NOW)
    assert kinds(runtime) == ["emerging", "input", "topic_mix"]
    with runtime.engine.connect() as conn:
        rows = conn.execute(sa.select(models.drift_alarms)).mappings().all()
    assert all(r["segment"] == "all" and r["project_id"] == tenant.project_id for r in rows)

    analyzer.run(tenant.project_id, now=NOW + dt.timedelta(minutes=5))  # not due yet
    analyzer.run(tenant.project_id, now=NOW + dt.timedelta(hours=2))  # due: same day, same alarms
    assert kinds(runtime) == ["emerging", "input", "topic_mix"]


async def test_the_same_questions_in_both_windows_raise_nothing(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    rng = random.Random(2)
    events = []
    for template in OLD:
        events += batch(template, range(80), NOW - dt.timedelta(days=4), rng)
        events += batch(template, range(80, 120), NOW - dt.timedelta(hours=12), rng)
    await ingest(client, tenant, events)
    Enricher(runtime.engine).run(now=utcnow())
    runtime.embedding_job().run()
    analyzer = Analyzer(runtime.engine, runtime.embedder().name, AnalyzeParams())
    analyzer.run(tenant.project_id, now=NOW - dt.timedelta(days=2))
    analyzer.run(tenant.project_id, now=NOW)
    assert kinds(runtime) == []
