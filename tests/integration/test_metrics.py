"""Metrics per segment, checked against values computed by hand, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import httpx
import pandas as pd
import pyarrow as pa
import pytest

from closedloop import make_event
from closedloop.analyze.drift.base import wilson_interval
from closedloop.analyze.metrics import metrics, wide
from closedloop.enrich.job import Enricher
from closedloop.enrich.measures import edit_similarity
from closedloop.errors import ConfigError
from closedloop.runtime import Runtime
from closedloop.store.db import utcnow
from closedloop.store.olap import Analytics
from tests.conftest import Tenant

T0 = utcnow().replace(microsecond=0) - dt.timedelta(hours=3)


def event(kind: str, body: dict[str, Any], id: str, seconds: float) -> dict[str, Any]:
    e = make_event(kind, body, id=id)  # type: ignore[arg-type]
    e["timestamp"] = (T0 + dt.timedelta(seconds=seconds)).isoformat()
    return e


def interaction(id: str, seconds: float, **extra: Any) -> dict[str, Any]:
    body = {"input": f"question {id}", "output": f"the answer to {id} is forty-two", **extra}
    return event("interaction", body, id, seconds)


EVENTS = [
    interaction(
        "i1",
        0,
        session_id="s1",
        model={"name": "m", "version": "1"},
        latency_ms=100,
        cost_usd=0.01,
        tags=["a"],
        metadata={"plan": "pro", "account": {"tier": "gold"}},
    ),
    interaction(
        "i2",
        10,
        session_id="s2",
        model={"name": "m", "version": "1"},
        latency_ms=200,
        cost_usd=0.03,
        tags=["a", "b"],
        metadata={"plan": "free"},
    ),
    interaction("i3", 20, session_id="s2", model={"name": "m", "version": "2"}, latency_ms=300),
    interaction("i4", 30, model={"name": "m", "version": "2"}, latency_ms=400, cost_usd=0.02),
    interaction("i5", 35, session_id="s3"),  # nothing follows it: abandoned
    event("feedback", {"interaction_id": "i1", "thumbs": 1}, "f1", 40),
    event("feedback", {"interaction_id": "i1", "thumbs": -1}, "f2", 50),
    event("feedback", {"interaction_id": "i2", "rating": 4, "correction": "fixed"}, "f3", 60),
    event("feedback", {"interaction_id": "i4", "thumbs": 1}, "f4", 70),
    # a reviewer's thumbs is not a user's: it counts in no user measure
    event("feedback", {"interaction_id": "i3", "thumbs": -1, "source": "reviewer"}, "f5", 80),
    event(
        "signal",
        {"interaction_id": "i3", "kind": "edit", "text": "the answer to i3 is forty-three"},
        "g1",
        90,
    ),
]


@pytest.fixture
async def seeded(client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant) -> Analytics:
    r = await client.post("/v1/events", json={"events": EVENTS}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    Enricher(runtime.engine).run(now=utcnow())
    return Analytics(runtime.engine, runtime.settings.resolved_lake_url())


def pick(frame: pd.DataFrame, segment: str, measure: str) -> pd.Series:
    rows = frame[(frame.segment == segment) & (frame.measure == measure)]
    assert len(rows) == 1, f"{segment}/{measure}: {len(rows)} rows"
    return rows.iloc[0]


def assert_rate(frame: pd.DataFrame, segment: str, measure: str, hits: int, n: int) -> None:
    row = pick(frame, segment, measure)
    assert row.n == n
    assert row.value == pytest.approx(hits / n)
    low, high = wilson_interval(hits, n)
    assert (row.low, row.high) == pytest.approx((low, high))


async def test_every_measure_over_all_interactions_matches_a_hand_count(
    seeded: Analytics, tenant: Tenant, runtime: Runtime
) -> None:
    m = metrics(seeded, tenant.project_id)
    assert pick(m, "all", "volume").value == 5
    assert_rate(m, "all", "feedback_rate", 3, 5)  # i1, i2, i4 (the reviewer's does not count)
    assert_rate(m, "all", "positive_rate", 1, 2)  # i1's latest thumbs is down, i4 up
    assert_rate(m, "all", "correction_rate", 1, 3)  # i2, of the three with feedback
    # s1 ends on i1, followed up by thumbs; s2 goes on after i2 and i3 was edited; s3 ends
    assert_rate(m, "all", "abandonment", 1, 4)
    rating = pick(m, "all", "rating")
    assert (rating.value, rating.n) == (pytest.approx(0.75), 1)
    assert math.isinf(rating.low), "one observation has no interval"
    latency = pick(m, "all", "latency_ms")
    assert (latency.value, latency.n) == (pytest.approx(250.0), 4)
    # t interval by hand: sd of 100..400 is 129.1; t(0.975, 3) = 3.182
    assert latency.high - latency.value == pytest.approx(3.182446 * 129.0994 / 2, rel=1e-4)
    cost = pick(m, "all", "cost_usd")
    assert (cost.value, cost.n) == (pytest.approx(0.02), 3)
    edit = pick(m, "all", "edit_similarity")
    kept = edit_similarity("the answer to i3 is forty-two", "the answer to i3 is forty-three")
    assert (edit.n, edit.value) == (1, pytest.approx(kept))
    quality = pick(m, "all", "quality")
    with runtime.engine.connect() as conn:
        sql = "SELECT quality FROM interactions WHERE quality IS NOT NULL"
        stored = [q for (q,) in conn.exec_driver_sql(sql)]
    assert quality.n == len(stored) and quality.value == pytest.approx(sum(stored) / len(stored))


async def test_observed_quality_leaves_out_estimates_resting_on_the_prior_alone(
    seeded: Analytics, tenant: Tenant, runtime: Runtime
) -> None:
    with runtime.engine.begin() as conn:  # i5 as if nothing had been seen of it
        conn.exec_driver_sql(
            "UPDATE interactions SET quality = 0.7, quality_basis = 'prior' WHERE id = 'i5'"
        )
        sql = "SELECT quality FROM interactions WHERE quality_basis IN ('explicit', 'implicit')"
        evidenced = [q for (q,) in conn.exec_driver_sql(sql)]
    m = metrics(seeded, tenant.project_id, measures=["quality", "observed_quality"])
    observed = pick(m, "all", "observed_quality")
    assert len(evidenced) == 4 and pick(m, "all", "quality").n == 5
    assert observed.n == 4
    assert observed.value == pytest.approx(sum(evidenced) / len(evidenced))


async def test_segments_split_the_same_counts(seeded: Analytics, tenant: Tenant) -> None:
    by_model = metrics(seeded, tenant.project_id, by="model")
    assert set(by_model.segment) == {"m@1", "m@2", "(none)"}
    assert_rate(by_model, "m@1", "positive_rate", 0, 1)
    assert_rate(by_model, "m@2", "positive_rate", 1, 1)
    assert pick(by_model, "m@1", "latency_ms").value == pytest.approx(150)

    by_tag = metrics(seeded, tenant.project_id, by="tag", measures=["volume"])
    assert {r.segment: r.value for r in by_tag.itertuples()} == {"a": 2, "b": 1, "(none)": 3}

    by_plan = metrics(seeded, tenant.project_id, by="cohort:plan", measures=["volume"])
    assert {r.segment: r.value for r in by_plan.itertuples()} == {
        "pro": 1,
        "free": 1,
        "(none)": 3,
    }
    nested = metrics(seeded, tenant.project_id, by="cohort:account.tier", measures=["volume"])
    assert {r.segment: r.value for r in nested.itertuples()} == {"gold": 1, "(none)": 4}

    topics = pa.table({"ref_id": ["i1", "i2"], "topic": ["billing", "billing"]})
    by_topic = metrics(seeded, tenant.project_id, by="topic", topics=topics)
    assert pick(by_topic, "billing", "volume").value == 2
    assert pick(by_topic, "(no topic)", "volume").value == 3


async def test_window_and_buckets(seeded: Analytics, tenant: Tenant) -> None:
    late = metrics(seeded, tenant.project_id, since=T0 + dt.timedelta(seconds=15))
    assert pick(late, "all", "volume").value == 3  # i3, i4, i5
    early = metrics(seeded, tenant.project_id, until=T0 + dt.timedelta(seconds=15))
    assert pick(early, "all", "volume").value == 2  # i1, i2
    # feedback counts with its interaction, even when it came after the window's end
    assert_rate(early, "all", "positive_rate", 0, 1)
    hourly = metrics(seeded, tenant.project_id, bucket="hour", measures=["volume"])
    assert hourly.value.sum() == 5 and hourly.bucket.notna().all()
    table = wide(metrics(seeded, tenant.project_id, by="model"))
    assert list(table.segment) == ["m@1", "m@2", "(none)"] and "positive_rate" in table.columns


async def test_other_projects_rows_are_never_counted(
    seeded: Analytics, other_tenant: Tenant
) -> None:
    m = metrics(seeded, other_tenant.project_id)
    assert m.empty


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"by": "colour"}, "by"),
        ({"by": "cohort:x'; DROP"}, "by"),
        ({"bucket": "fortnight"}, "bucket"),
        ({"measures": ["happiness"]}, "measures"),
    ],
)
async def test_bad_arguments_name_their_field(
    seeded: Analytics, tenant: Tenant, kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigError) as info:
        metrics(seeded, tenant.project_id, **kwargs)
    assert info.value.field == field


async def test_feedback_stamped_before_its_interaction_and_repeated_tags_count_once(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    """A browser's clock a little behind the server's stamps feedback before its interaction;
    a window starting between the two still counts it. A tag sent twice counts once."""
    events = [
        interaction("j1", 10, tags=["a", "a"]),
        event("feedback", {"interaction_id": "j1", "thumbs": 1}, "g-f1", 8),
    ]
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    analytics = Analytics(runtime.engine, runtime.settings.resolved_lake_url())
    m = metrics(analytics, tenant.project_id, since=T0 + dt.timedelta(seconds=9))
    assert pick(m, "all", "volume").value == 1
    assert_rate(m, "all", "positive_rate", 1, 1)
    by_tag = metrics(analytics, tenant.project_id, by="tag", measures=["volume"])
    assert {r.segment: r.value for r in by_tag.itertuples()} == {"a": 1}
