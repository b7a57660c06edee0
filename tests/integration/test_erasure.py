"""Erasure of one end user across every tier, on SQLite and PostgreSQL: afterwards the user's
id and texts appear nowhere (the raw bytes of the SQLite files, every row of every PostgreSQL
table, the raw and decoded bytes of every lake file, the index and export folders), other
users' data is intact, and their later events are refused or dropped and counted."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
import sqlalchemy as sa
from prometheus_client import generate_latest

from closedloop import make_event
from closedloop.enrich.privacy import pseudonym
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import is_sqlite, utcnow
from closedloop.store.exports import record_export
from closedloop.store.lake import manifest
from closedloop.store.lake.tiering import tier
from closedloop.types import ProjectKey
from tests.conftest import Tenant

VICTIM = "victim-7c1e9a"
BYSTANDER = "bystander-41d2"
# lower-case nonsense words: nothing the PII redactor would mask, so they reach the store
CANARIES = ("quokka marmalade zeppelin", "wombat tangerine dirigible", "axolotl paprika blimp")
OTHER_TEXT = "pelican lavender hovercraft"


def _events(user: str, prefix: str, texts: tuple[str, ...], when: dt.datetime) -> list[Any]:
    out: list[Any] = []
    for n, text in enumerate(texts):
        ts = (when + dt.timedelta(minutes=n)).isoformat()
        iid = f"{prefix}-i{n}"
        interaction = make_event(
            "interaction",
            {
                "input": f"how do I fix {text}",
                "output": "try this",
                "user_id": user,
                "session_id": f"{prefix}-s",
            },
            id=iid,
        )
        feedback = make_event(
            "feedback",
            {
                "interaction_id": iid,
                "thumbs": -1,
                "correction": f"the fix for {text}",
                "comment": f"wrong about {text}",
                "user_id": user,
            },
            id=f"{prefix}-f{n}",
        )
        signal = make_event(
            "signal", {"interaction_id": iid, "kind": "copy", "user_id": user}, id=f"{prefix}-x{n}"
        )
        for e in (interaction, feedback, signal):
            e["timestamp"] = ts
        out += [interaction, feedback, signal]
    return out


def _needles(runtime: Runtime, tenant: Tenant) -> list[bytes]:
    _, secret = runtime.projects.pii(tenant.project_id)
    assert secret is not None
    words = [VICTIM, pseudonym(secret, VICTIM), *(c.split()[0] for c in CANARIES)]
    return [w.encode() for w in words]


def _scan_files(folder: Path, needles: list[bytes]) -> list[str]:
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found += [f"{path.name}: {n.decode()}" for n in needles if n in data]
        if path.suffix == ".parquet":  # compressed pages: scan the decoded rows too
            decoded = json.dumps(pq.read_table(path).to_pylist(), default=str).encode()
            found += [f"{path.name} (rows): {n.decode()}" for n in needles if n in decoded]
    return found


def _scan_database(runtime: Runtime, needles: list[bytes]) -> list[str]:
    engine = runtime.engine
    if is_sqlite(engine):
        db = Path(engine.url.database or "")
        files = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]
        return [
            f"{f.name}: {n.decode()}"
            for f in files
            if f.exists()
            for n in needles
            if n in f.read_bytes()
        ]
    # PostgreSQL: every row of every table, as text (dead tuples and WAL keep their bytes until
    # VACUUM and WAL recycling; see closedloop.store.erasure)
    found = []
    with engine.connect() as conn:
        for table in models.metadata.sorted_tables:
            rows = conn.execute(sa.text(f"SELECT t::text FROM {table.name} t")).scalars().all()
            blob = "\n".join(rows).encode()
            found += [f"{table.name}: {n.decode()}" for n in needles if n in blob]
    return found


def _counts(runtime: Runtime, project_id: int) -> dict[str, int]:
    out = {}
    with runtime.engine.connect() as conn:
        for t in (models.interactions, models.feedback, models.signals, models.vectors):
            out[t.name] = conn.execute(
                sa.select(sa.func.count()).where(t.c.project_id == project_id)
            ).scalar_one()
    return out


async def _world(client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant) -> dict[str, Any]:
    old = utcnow() - dt.timedelta(days=60)
    recent = utcnow() - dt.timedelta(hours=2)
    batch = (
        _events(VICTIM, "v-old", CANARIES, old)
        + _events(VICTIM, "v-new", CANARIES, recent)
        + _events(BYSTANDER, "b-old", (OTHER_TEXT,) * 3, old)
        + _events(BYSTANDER, "b-new", (OTHER_TEXT,) * 3, recent)
    )
    # a bystander's feedback on the victim's answer goes with the victim's interaction
    on_victim = make_event(
        "feedback", {"interaction_id": "v-new-i0", "thumbs": 1, "user_id": BYSTANDER}, id="b-on-v"
    )
    r = await client.post(
        "/v1/events", json={"events": [*batch, on_victim]}, headers=tenant.headers()
    )
    assert r.status_code == 200, r.text
    runtime.enricher.run()
    runtime.embedding_job().run()
    moved = tier(runtime.engine, runtime.lake, hot_days_of=lambda _pid: 30.0)
    assert moved.rows == 18, "the 60-day-old rows of both users moved to the lake"
    # the index exists on disk before the erasure
    r = await client.get("/v1/search", params={"q": CANARIES[0]}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert any(h["interaction_id"].startswith("v-") for h in r.json()["hits"])
    runtime.indexes.save_all()
    # an export holding both users, and one holding only the bystander
    exports = runtime.settings.resolved_export_dir()
    exports.mkdir(parents=True, exist_ok=True)
    both, only_b = exports / "sft-both.jsonl", exports / "sft-bystander.jsonl"
    both.write_text(json.dumps({"user": VICTIM, "text": CANARIES[0]}) + "\n")
    only_b.write_text(json.dumps({"user": BYSTANDER, "text": OTHER_TEXT}) + "\n")
    _, secret = runtime.projects.pii(tenant.project_id)
    with runtime.engine.begin() as conn:
        record_export(
            conn,
            tenant.project_id,
            kind="sft",
            url=str(both),
            rows=1,
            user_ids=[VICTIM, BYSTANDER],
            secret=secret,
        )
        record_export(
            conn,
            tenant.project_id,
            kind="sft",
            url=str(only_b),
            rows=1,
            user_ids=[BYSTANDER],
            secret=secret,
        )
    return {"exports": (both, only_b)}


async def test_erasing_a_user_removes_every_trace_from_every_tier(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    world = await _world(client, runtime, tenant)
    needles = _needles(runtime, tenant)
    data_dir = runtime.settings.data_dir
    assert _scan_files(data_dir / "lake", needles), "positive control: the lake holds the victim"
    assert _scan_database(runtime, needles), "positive control: the store holds the victim"

    r = await client.delete(f"/v1/users/{VICTIM}", headers=tenant.headers())
    assert r.status_code == 200, r.text
    receipt = r.json()
    assert receipt["hot"]["interactions"] == 3
    assert receipt["hot"]["feedback"] == 4, "their 3 and the bystander's on their answer"
    assert receipt["hot"]["signals"] == 3
    assert receipt["hot"]["vectors"] >= 3 + 6
    assert {f["entity"] for f in receipt["lake"]} == {"interactions", "feedback", "signals"}
    assert sum(f["removed_rows"] for f in receipt["lake"]) == 9
    assert [e["url"] for e in receipt["exports"]] == [str(world["exports"][0])]
    assert receipt["indexes_dropped"] is True

    assert _scan_database(runtime, needles) == []
    assert _scan_files(data_dir / "lake", needles) == []
    assert _scan_files(runtime.settings.resolved_index_dir(), needles) == []
    assert _scan_files(runtime.settings.resolved_export_dir(), needles) == []
    assert not world["exports"][0].exists() and world["exports"][1].exists()

    # the bystander's rows are all still there, hot and cold
    hot = _counts(runtime, tenant.project_id)
    assert (hot["interactions"], hot["feedback"], hot["signals"]) == (3, 3, 3)
    with runtime.engine.connect() as conn:
        files = manifest.published(conn, tenant.project_id)
    assert sum(f.rows for f in files) == 9
    # search no longer finds the victim: the index was rebuilt from the table without them
    r = await client.get("/v1/search", params={"q": CANARIES[0]}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert not [h for h in r.json()["hits"] if h["interaction_id"].startswith("v-")]
    assert r.json()["hits"], "the bystander's texts are still searchable"

    # erasing again finds nothing left
    again = (await client.delete(f"/v1/users/{VICTIM}", headers=tenant.headers())).json()
    assert again["total_removed"] == 0 and again["lake"] == [] and again["exports"] == []


@pytest.mark.parametrize("mode", ["refuse", "drop"])
async def test_events_for_an_erased_user_are_refused_or_dropped_and_counted(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, mode: str
) -> None:
    r = await client.put(
        "/v1/project/retention", json={"erased_events": mode}, headers=tenant.headers()
    )
    assert r.status_code == 200, r.text
    first = _events(VICTIM, "v", CANARIES[:1], utcnow())
    r = await client.post("/v1/events", json={"events": first}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    r = await client.delete(f"/v1/users/{VICTIM}", headers=tenant.headers())
    assert r.json()["hot"]["interactions"] == 1

    later = _events(VICTIM, "v2", CANARIES[1:2], utcnow()) + _events(
        BYSTANDER, "b2", (OTHER_TEXT,), utcnow()
    )
    r = await client.post("/v1/events", json={"events": later}, headers=tenant.headers())
    assert r.status_code == 207, r.text
    statuses = [x["status"] for x in r.json()["results"]]
    expected = "rejected" if mode == "refuse" else "dropped"
    assert statuses == [expected] * 3 + ["stored"] * 3
    if mode == "refuse":
        assert r.json()["results"][0]["error"]["field"] == "body.user_id"
    text = generate_latest(runtime.metrics.registry).decode()
    label = (
        'rejected_total{reason="erased_user"}'
        if mode == "refuse"
        else ('dropped_total{reason="erased_user"}')
    )
    assert any(label in line and line.endswith(" 3.0") for line in text.splitlines()), text
    assert _counts(runtime, tenant.project_id)["interactions"] == 1, "only the bystander's"


async def test_a_project_storing_hashed_ids_is_erased_by_the_id_the_app_sends(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    r = await client.put("/v1/project/pii", json={"ids": "hash"}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    batch = _events(VICTIM, "v", CANARIES[:1], utcnow())
    r = await client.post("/v1/events", json={"events": batch}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    r = await client.delete(f"/v1/users/{VICTIM}", headers=tenant.headers())
    assert r.json()["hot"]["interactions"] == 1 and r.json()["hot"]["feedback"] == 1
    assert _scan_database(runtime, _needles(runtime, tenant)) == []
    later = _events(VICTIM, "v2", CANARIES[1:2], utcnow())
    r = await client.post("/v1/events", json={"events": later}, headers=tenant.headers())
    assert [x["status"] for x in r.json()["results"]] == ["rejected"] * 3


async def test_feedback_sent_later_on_an_erased_users_answer_is_kept_out(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    batch = _events(VICTIM, "v", CANARIES[:1], utcnow())
    r = await client.post("/v1/events", json={"events": batch}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    r = await client.delete(f"/v1/users/{VICTIM}", headers=tenant.headers())
    assert r.status_code == 200, r.text
    by_reviewer = make_event(
        "feedback",
        {"interaction_id": "v-i0", "comment": f"about {CANARIES[0]}", "given_by": "reviewer"},
        id="review-1",
    )
    elsewhere = make_event(
        "feedback", {"interaction_id": "someone-else", "thumbs": 1, "given_by": "reviewer"}
    )
    r = await client.post(
        "/v1/events", json={"events": [by_reviewer, elsewhere]}, headers=tenant.headers()
    )
    assert [x["status"] for x in r.json()["results"]] == ["rejected", "stored"], r.text


def test_vectors_of_texts_erased_while_they_were_embedded_are_not_stored(
    runtime: Runtime, tenant: Tenant
) -> None:
    from closedloop.embed.base import text_hash
    from closedloop.store.vectors.table import NewVector, insert_vectors

    key = ProjectKey(project_id=tenant.project_id, project_name="acme", kind="secret", key_id=0)
    raws = [json.dumps(e).encode() for e in _events(VICTIM, "v", CANARIES[:1], utcnow())]
    assert runtime.ingestor.ingest(key, raws).count("stored") == 3
    embedder = runtime.embedder()
    # the job read the text, then the user was erased, then the job stores the vector
    vector = embedder.embed([CANARIES[0]])[0]
    runtime.erase_user(tenant.project_id, VICTIM)
    late = NewVector(
        project_id=tenant.project_id,
        model=embedder.name,
        kind="input",
        ref_id="v-i0",
        interaction_id="v-i0",
        user_id=VICTIM,
        ts=utcnow(),
        vector=vector,
        text_hash=text_hash(CANARIES[0]),
    )
    with runtime.engine.begin() as conn:
        assert insert_vectors(conn, [late], require_source=True) == 0
    assert _counts(runtime, tenant.project_id)["vectors"] == 0
