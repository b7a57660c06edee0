"""Topics and issues from stored interactions: clustered, named, ranked, ids stable across runs.

Real embedding job (the lexical embedder: tests run offline and fast), real enrichment, on
SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import numpy as np
import sqlalchemy as sa

from closedloop import make_event
from closedloop.analyze import read
from closedloop.analyze.tracker import ClusterTracker, TrackerParams, topic_table
from closedloop.enrich.job import Enricher
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utcnow
from tests.conftest import Tenant

NOW = utcnow().replace(microsecond=0)

THEMES = {
    "refund": "please refund my cancelled order number {k} to my card",
    "password": "reset the password of my account login {k} it is locked",
    "delivery": "my parcel delivery {k} is late where is the courier",
    "weather": "what is the weather forecast for tomorrow in city {k}",
}


def interactions(theme: str, ks: range, *, hours_ago: float, bad: bool) -> list[dict[str, Any]]:
    out = []
    for k in ks:
        iid = f"{theme}-{k}"
        ts = (NOW - dt.timedelta(hours=hours_ago, minutes=k)).isoformat()
        e = make_event("interaction", {"input": THEMES[theme].format(k=k), "output": "ok"}, id=iid)
        e["timestamp"] = ts
        out.append(e)
        f = make_event(
            "feedback", {"interaction_id": iid, "thumbs": -1 if bad else 1}, id=f"f-{iid}"
        )
        f["timestamp"] = ts
        out.append(f)
    return out


async def ingest(client: httpx.AsyncClient, tenant: Tenant, events: list[dict[str, Any]]) -> None:
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text


def settle(runtime: Runtime) -> None:
    Enricher(runtime.engine).run(now=utcnow())
    runtime.embedding_job().run()


def clusters(runtime: Runtime, kind: str) -> dict[int, dict[str, Any]]:
    c = models.clusters
    with runtime.engine.connect() as conn:
        rows = conn.execute(sa.select(c).where(c.c.kind == kind)).mappings().all()
    return {r["id"]: dict(r) for r in rows}


def members(runtime: Runtime, kind: str) -> dict[str, int | None]:
    m = models.cluster_members
    with runtime.engine.connect() as conn:
        rows = conn.execute(sa.select(m.c.ref_id, m.c.cluster_id).where(m.c.kind == kind)).all()
    return {ref: cid for ref, cid in rows}


def by_theme(found: dict[str, int | None]) -> dict[str, set[int | None]]:
    out: dict[str, set[int | None]] = {}
    for ref, cid in found.items():
        out.setdefault(ref.split("-")[0], set()).add(cid)
    return out


async def test_topics_group_inputs_and_keep_their_ids_as_more_arrive(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    model = runtime.embedder().name
    tracker = ClusterTracker(runtime.engine, "topic", model)
    events = interactions("refund", range(8), hours_ago=30, bad=True)
    events += interactions("password", range(8), hours_ago=30, bad=False)
    await ingest(client, tenant, events)
    settle(runtime)
    stats = tracker.run(tenant.project_id)
    assert stats.added == 16 and stats.opened == 2
    first = by_theme(members(runtime, "topic"))
    assert all(len(ids) == 1 and None not in ids for ids in first.values()), first
    assert first["refund"] != first["password"]
    keywords = {cid: json.loads(c["keywords"]) for cid, c in clusters(runtime, "topic").items()}
    (refund_id,) = first["refund"]
    assert "refund" in keywords[refund_id] and "password" not in keywords[refund_id]

    await ingest(
        client,
        tenant,
        interactions("refund", range(8, 12), hours_ago=2, bad=True)
        + interactions("weather", range(6), hours_ago=2, bad=False),
    )
    settle(runtime)
    stats = tracker.run(tenant.project_id)
    second = by_theme(members(runtime, "topic"))
    assert second["refund"] == first["refund"], "new refunds join the refund topic"
    assert second["password"] == first["password"], "an old topic keeps its id"
    assert len(second["weather"]) == 1 and second["weather"].isdisjoint(
        first["refund"] | first["password"]
    ), "a new theme opens a new topic"
    assert stats.opened == 1

    table = topic_table(runtime.engine, tenant.project_id)
    assert table.num_rows == 16 + 4 + 6
    assert tracker.run(tenant.project_id).added == 0, "a member is taken once"


async def test_issues_hold_only_negative_interactions_and_are_ranked_by_impact(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    model = runtime.embedder().name
    tracker = ClusterTracker(runtime.engine, "issue", model)
    # refunds: failing for two weeks, steady; deliveries: few last week, many now
    events = interactions("refund", range(6), hours_ago=24 * 9, bad=True)
    events += interactions("refund", range(6, 12), hours_ago=24 * 2, bad=True)
    events += interactions("delivery", range(2), hours_ago=24 * 9, bad=True)
    events += interactions("delivery", range(2, 14), hours_ago=10, bad=True)
    events += interactions("password", range(8), hours_ago=10, bad=False)
    await ingest(client, tenant, events)
    settle(runtime)
    tracker.run(tenant.project_id, now=NOW)
    found = by_theme(members(runtime, "issue"))
    assert "password" not in found, "liked answers are no issue"
    assert len(found["refund"]) == 1 and len(found["delivery"]) == 1
    issues = clusters(runtime, "issue")
    (refund,) = found["refund"]
    (delivery,) = found["delivery"]
    stats = {cid: json.loads(c["stats"]) for cid, c in issues.items()}
    assert stats[delivery]["recent"] == 12 and stats[delivery]["prior"] == 2
    assert stats[refund]["recent"] == 6 and stats[refund]["prior"] == 6
    assert issues[delivery]["state"] == "growing" and issues[refund]["state"] == "open"
    assert stats[delivery]["impact"] > stats[refund]["impact"]
    assert "growth" in stats[delivery]["explanation"]
    examples = json.loads(issues[delivery]["examples"])
    assert examples and all(e.startswith("delivery-") for e in examples)
    trend = read.issue(runtime.engine, tenant.project_id, delivery, now=NOW)["trend"]
    assert len(trend) == 14 and sum(d["members"] for d in trend) == 14
    assert trend[-1]["day"] == NOW.date().isoformat(), "oldest first, ending today"

    # two quiet weeks later both are resolved, and keep their ids
    tracker.run(tenant.project_id, now=NOW + dt.timedelta(days=15))
    issues = clusters(runtime, "issue")
    assert {issues[refund]["state"], issues[delivery]["state"]} == {"resolved"}


async def test_erasing_a_user_removes_their_memberships_and_examples(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    events = interactions("refund", range(6), hours_ago=5, bad=True)
    for e in events:
        if e["type"] == "interaction":
            gone = e["id"] in ("refund-0", "refund-1")
            e["body"]["user_id"] = "gone" if gone else "stays"
            if gone:
                words = e["body"]["input"].replace("cancelled", "zebulon zebulon zebulon")
                e["body"]["input"] = words
    await ingest(client, tenant, events)
    settle(runtime)
    trackers = [
        ClusterTracker(runtime.engine, kind, runtime.embedder().name)  # type: ignore[arg-type]
        for kind in ("topic", "issue")
    ]
    for tracker in trackers:
        tracker.run(tenant.project_id)
    assert {"refund-0", "refund-1"} <= set(members(runtime, "issue"))
    assert all("zebulon" in c["keywords"] for c in clusters(runtime, "issue").values())
    receipt = runtime.erase_user(tenant.project_id, "gone")
    assert receipt.hot["cluster_members"] == 4  # two interactions, as topic and issue members
    for kind in ("topic", "issue"):
        left = members(runtime, kind)
        assert set(left) == {f"refund-{k}" for k in range(2, 6)}
        for cluster in clusters(runtime, kind).values():
            assert not {"refund-0", "refund-1"} & set(json.loads(cluster["examples"]))
    for tracker in trackers:  # nothing new: the next run only names again what lost members
        assert tracker.run(tenant.project_id).added == 0
    for kind in ("topic", "issue"):
        for cluster in clusters(runtime, kind).values():
            assert "zebulon" not in cluster["keywords"] + cluster["name"]
            assert "refund" in cluster["keywords"]


async def test_topics_take_every_input_once_across_runs_of_a_small_batch(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    events = interactions("refund", range(9), hours_ago=3, bad=False)
    events += interactions("weather", range(8), hours_ago=3, bad=False)
    await ingest(client, tenant, events)
    settle(runtime)
    tracker = ClusterTracker(
        runtime.engine, "topic", runtime.embedder().name, TrackerParams(batch=5)
    )
    added = [tracker.run(tenant.project_id).added for _ in range(5)]
    assert added == [5, 5, 5, 2, 0]
    assert len(members(runtime, "topic")) == 17
    found = by_theme(members(runtime, "topic"))
    assert all(len(ids) == 1 and None not in ids for ids in found.values()), found


async def test_after_an_embedder_change_an_erasure_leaves_the_old_models_clusters_alone(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    """Clusters are per embedder: naming those of the current one never reads another's
    vectors, even when an erasure asks for names again."""
    events = interactions("refund", range(6), hours_ago=5, bad=True)
    for e in events:
        if e["type"] == "interaction":
            e["body"]["user_id"] = "gone" if e["id"] == "refund-0" else "stays"
    await ingest(client, tenant, events)
    settle(runtime)
    old = runtime.embedder().name
    ClusterTracker(runtime.engine, "topic", old).run(tenant.project_id)
    v = models.vectors
    with runtime.engine.begin() as conn:  # the operator switches to a 16-dimension model
        rows = conn.execute(sa.select(v).where(v.c.model == old)).mappings().all()
        rng = np.random.default_rng(0)
        base = rng.normal(size=16)
        for row in rows:
            new = {k: val for k, val in row.items() if k != "seq"}
            vector = (base + 0.01 * rng.normal(size=16)).astype(np.float32)
            new.update(model="other", dim=16, vector=vector.tobytes())
            conn.execute(v.insert().values(**new))
    # inputs already in a topic stay in the old model's: the new one clusters new inputs
    tracker = ClusterTracker(runtime.engine, "topic", "other")
    assert tracker.run(tenant.project_id).added == 0
    runtime.erase_user(tenant.project_id, "gone")  # asks for the old cluster's name again
    tracker.run(tenant.project_id)  # names only its own clusters: no 16- vs 256-d mix-up
    ClusterTracker(runtime.engine, "topic", old).run(tenant.project_id)  # the old one renames
    with runtime.engine.connect() as conn:
        got = conn.execute(sa.select(models.clusters.c.model, models.clusters.c.keywords)).all()
    assert [(model, "refund" in json.loads(words)) for model, words in got] == [(old, True)]


async def test_an_input_the_embedder_cannot_read_is_set_aside_not_a_failure(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    """A one-letter input embeds (lexically) to a zero vector: it has no direction, so it
    joins no topic; the others are clustered and the run does not fail."""
    events = interactions("refund", range(4), hours_ago=3, bad=True)
    odd = make_event("interaction", {"input": "a", "output": "ok"}, id="odd-1")
    odd["timestamp"] = (NOW - dt.timedelta(hours=3)).isoformat()
    await ingest(client, tenant, [*events, odd])
    settle(runtime)
    tracker = ClusterTracker(runtime.engine, "topic", runtime.embedder().name)
    assert tracker.run(tenant.project_id).added == 5
    found = members(runtime, "topic")
    assert found["odd-1"] == -1 and len({found[f"refund-{k}"] for k in range(4)}) == 1
    assert tracker.run(tenant.project_id).added == 0, "set aside once, not taken again"
