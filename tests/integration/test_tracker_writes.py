"""The trackers' writes are batched and their kept naming background never changes a name.

A run writes its clusters in a few statements however many clusters it touches, rewrites an
issue's rank only when it changed, and names clusters as if the background were counted
afresh, even when another worker changed stored keywords in between. On SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import sqlalchemy as sa

from closedloop import make_event
from closedloop.analyze import tracker as tracker_module
from closedloop.analyze.tracker import ClusterTracker
from closedloop.enrich.job import Enricher
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utcnow
from tests.conftest import Tenant

NOW = utcnow().replace(microsecond=0)

# twelve themes with no word in common, so each opens its own cluster
WORDS = (
    "refund cancelled order money",
    "password reset account locked",
    "parcel delivery courier late",
    "weather forecast rain tomorrow",
    "invoice billing vat receipt",
    "camera photo upload blurry",
    "flight booking seat airport",
    "recipe dinner pasta sauce",
    "football match score league",
    "printer paper jam toner",
    "holiday hotel beach pool",
    "guitar chord string tuning",
)


def theme_events(
    words: str, ks: range, *, hours_ago: float, text: str | None = None
) -> list[dict[str, Any]]:
    """Interactions about ``words`` (``text``, when given, instead), each with a thumbs down."""
    out = []
    key = words.split()[0]
    for k in ks:
        iid = f"{key}-{k}"
        ts = (NOW - dt.timedelta(hours=hours_ago, minutes=k)).isoformat()
        body = {"input": text or f"{words} {key} again", "output": "ok"}
        out.append(make_event("interaction", body, id=iid) | {"timestamp": ts})
        f = make_event("feedback", {"interaction_id": iid, "thumbs": -1}, id=f"f-{iid}")
        out.append(f | {"timestamp": ts})
    return out


async def ingest(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, events: list[dict[str, Any]]
) -> None:
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    Enricher(runtime.engine).run(now=utcnow())
    runtime.embedding_job().run()


@contextmanager
def cluster_writes(engine: sa.Engine) -> Iterator[list[str]]:
    """The statements sent to the database that write the clusters table."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(("UPDATE CLUSTERS", "INSERT INTO CLUSTERS")):
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def stored(runtime: Runtime, project_id: int, kind: str) -> dict[int, dict[str, Any]]:
    c = models.clusters
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.select(c).where(c.c.project_id == project_id, c.c.kind == kind)
        ).mappings()
        return {r["id"]: dict(r) for r in rows}


async def test_a_run_writes_its_clusters_in_a_few_statements_however_many_it_touches(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    events = [e for words in WORDS for e in theme_events(words, range(4), hours_ago=30)]
    await ingest(client, runtime, tenant, events)
    issues = ClusterTracker(runtime.engine, "issue", runtime.embedder().name)
    with cluster_writes(runtime.engine) as writes:
        assert issues.run(tenant.project_id, now=NOW).opened == len(WORDS)
    # the new clusters in one insert, their names in one update, their ranks in one update
    assert len(writes) == 3, writes
    assert all(
        c["name"] != f"issue {cid}"
        for cid, c in stored(runtime, tenant.project_id, "issue").items()
    )

    more = [e for words in WORDS for e in theme_events(words, range(4, 8), hours_ago=2)]
    await ingest(client, runtime, tenant, more)
    with cluster_writes(runtime.engine) as writes:
        assert issues.run(tenant.project_id, now=NOW).joined == 4 * len(WORDS)
    # the grown centroids, the names again (each cluster doubled), the ranks
    assert len(writes) == 3, writes
    assert {c["size"] for c in stored(runtime, tenant.project_id, "issue").values()} == {8}


async def test_an_issue_rank_is_written_only_when_it_changed(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    events = [e for words in WORDS[:3] for e in theme_events(words, range(4), hours_ago=30)]
    await ingest(client, runtime, tenant, events)
    issues = ClusterTracker(runtime.engine, "issue", runtime.embedder().name)
    issues.run(tenant.project_id, now=NOW)
    with cluster_writes(runtime.engine) as writes:
        issues.run(tenant.project_id, now=NOW)
    assert writes == [], "nothing new, the same clock: nothing to write"

    later = NOW + dt.timedelta(days=15)
    with cluster_writes(runtime.engine) as writes:
        issues.run(tenant.project_id, now=later)
    assert len(writes) == 1, writes
    found = stored(runtime, tenant.project_id, "issue").values()
    assert {c["state"] for c in found} == {"resolved"}
    assert all(json.loads(c["stats"])["recent"] == 0 for c in found)


async def test_names_are_those_of_a_background_counted_afresh_each_run(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    """Two projects with the same data: one keeps its naming background between runs, the
    other's is dropped before each; another worker rewrites stored keywords in between."""
    model = runtime.embedder().name
    kept, fresh = tenant.project_id, other_tenant.project_id
    topics = ClusterTracker(runtime.engine, "topic", model)
    by_engine = tracker_module._backgrounds

    def run_both() -> None:
        topics.run(kept, now=NOW)
        by_engine.get(runtime.engine, {}).pop((fresh, "topic"), None)
        topics.run(fresh, now=NOW)

    events = [e for words in WORDS[:6] for e in theme_events(words, range(5), hours_ago=30)]
    for t in (tenant, other_tenant):
        await ingest(client, runtime, t, events)
    run_both()  # every topic new: each is named, against nothing
    weather = theme_events(WORDS[3], range(5, 10), hours_ago=20)
    for t in (tenant, other_tenant):
        await ingest(client, runtime, t, weather)
    run_both()  # the weather topic is named again, against the others' keywords
    assert len(by_engine[runtime.engine][(kept, "topic")]) == 5

    # another worker names the password topic "refund" a hundred times over (in both
    # projects), then the refund topic grows and is named again: against the new words
    c = models.clusters
    with runtime.engine.begin() as conn:
        for pid in (kept, fresh):
            conn.execute(
                c.update()
                .where(c.c.project_id == pid, c.c.kind == "topic", c.c.name.contains("password"))
                .values(keywords=json.dumps(["refund"] * 100))
            )
    refunds = theme_events(
        WORDS[0], range(5, 10), hours_ago=2, text="refund money refund order cancelled late"
    )
    for t in (tenant, other_tenant):
        await ingest(client, runtime, t, refunds)
    before = stored(runtime, kept, "topic")
    run_both()
    after = stored(runtime, kept, "topic")
    (refund,) = [cid for cid, r in before.items() if "cancelled" in json.loads(r["keywords"])]
    assert json.loads(before[refund]["keywords"])[0] == "refund"
    assert json.loads(after[refund]["keywords"])[0] != "refund", "common everywhere now"
    assert {cid: (r["name"], r["keywords"]) for cid, r in after.items()} == {
        cid: (r["name"], r["keywords"]) for cid, r in stored(runtime, fresh, "topic").items()
    }


async def test_an_erased_users_words_leave_the_kept_background_with_the_names(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    events = [e for words in WORDS[:3] for e in theme_events(words, range(5), hours_ago=30)]
    for e in events:
        if e["type"] == "interaction":
            gone = e["id"] in ("refund-0", "refund-1")
            e["body"]["user_id"] = "gone" if gone else "stays"
            if gone:
                e["body"]["input"] += " zebulon zebulon zebulon"
    await ingest(client, runtime, tenant, events)
    topics = ClusterTracker(runtime.engine, "topic", runtime.embedder().name)
    topics.run(tenant.project_id)
    await ingest(client, runtime, tenant, theme_events(WORDS[1], range(5, 10), hours_ago=20))
    topics.run(tenant.project_id)  # the password topic named again, against the others
    background = tracker_module._backgrounds[runtime.engine][(tenant.project_id, "topic")]
    assert "zebulon" in background.frequency

    runtime.erase_user(tenant.project_id, "gone")
    topics.run(tenant.project_id)  # names the refund topic again, against the others
    assert not any("zebulon" in term for term in background.frequency)
    assert "password" in background.frequency, "the others' keywords stay"
