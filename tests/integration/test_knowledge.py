"""The knowledge base (corrections become recallable entries), its erasure, and documents
flagged for re-indexing with their webhook."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import httpx
import sqlalchemy as sa

from closedloop import make_event
from closedloop.act import knowledge, reindex, review
from closedloop.act.actions import Trigger
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utcnow
from tests.conftest import Tenant


def _ingest(runtime: Runtime, tenant: Tenant, events: list[dict[str, Any]]) -> None:
    raws = [json.dumps(e).encode() for e in events]
    result = runtime.ingestor.ingest(runtime.verify(tenant.secret_key), raws)
    assert all(r.status == "stored" for r in result.results), result


def _corrected(runtime: Runtime, tenant: Tenant) -> None:
    """Two answers users corrected (one with chat input), and one they liked."""
    chat = [
        {"role": "system", "content": "You are the help desk."},
        {"role": "user", "content": "How do I reset my password?"},
    ]
    _ingest(
        runtime,
        tenant,
        [
            make_event("interaction", {"input": chat, "output": "Call us.", "user_id": "u-1"},
                       id="i-pw"),
            make_event("interaction", {"input": "When does the shop open on Sunday?",
                                       "output": "Never."}, id="i-sun"),
            make_event("interaction", {"input": "Do you ship abroad?", "output": "Yes."},
                       id="i-ship"),
            make_event("feedback", {"interaction_id": "i-pw", "thumbs": -1,
                                    "correction": "Open Settings, then Security, then Reset "
                                                  "password."}, id="f-pw"),
            make_event("feedback", {"interaction_id": "i-sun", "thumbs": -1,
                                    "correction": "On Sunday the shop opens at 10."}, id="f-sun"),
            make_event("feedback", {"interaction_id": "i-ship", "thumbs": 1}, id="f-ship"),
        ],
    )  # fmt: skip


def test_a_correction_becomes_an_entry_recalled_by_a_paraphrase(
    runtime: Runtime, tenant: Tenant
) -> None:
    _corrected(runtime, tenant)
    embedder = runtime.embedder()
    written = knowledge.from_corrections(
        runtime.engine, embedder, tenant.project_id, ["i-pw", "i-sun", "i-ship"]
    )
    assert written == 2
    found = knowledge.recall(
        runtime.engine, embedder, tenant.project_id, "how can I reset the password", k=2
    )
    assert [r.answer for r in found][0].startswith("Open Settings")
    assert found[0].query == "How do I reset my password?"  # the last user message
    assert found[0].source == "correction" and found[0].score > found[1].score
    sunday = knowledge.recall(runtime.engine, embedder, tenant.project_id, "shop open sunday?")
    assert sunday[0].answer == "On Sunday the shop opens at 10."
    strict = knowledge.recall(
        runtime.engine, embedder, tenant.project_id, "reset my password", min_score=0.99
    )
    assert strict == []


def test_a_newer_correction_replaces_the_entry_of_its_interaction(
    runtime: Runtime, tenant: Tenant
) -> None:
    _corrected(runtime, tenant)
    embedder = runtime.embedder()
    knowledge.from_corrections(runtime.engine, embedder, tenant.project_id, ["i-pw"])
    later = utcnow() + dt.timedelta(seconds=1)
    fix = {"interaction_id": "i-pw", "correction": "Use the Forgot password link."}
    _ingest(runtime, tenant, [make_event("feedback", fix, id="f-pw-2", timestamp=later)])
    assert knowledge.from_corrections(runtime.engine, embedder, tenant.project_id, ["i-pw"]) == 1
    assert knowledge.from_corrections(runtime.engine, embedder, tenant.project_id, ["i-pw"]) == 1
    active = knowledge.entries(runtime.engine, tenant.project_id)
    assert [e.answer for e in active] == ["Use the Forgot password link."]
    assert len(knowledge.entries(runtime.engine, tenant.project_id, active=None)) == 2


def test_the_knowledge_action_turns_a_triggers_corrections_into_entries(
    runtime: Runtime, tenant: Tenant
) -> None:
    _corrected(runtime, tenant)
    trigger = Trigger(
        project_id=tenant.project_id,
        rule="corrections-to-kb",
        kind="event",
        segment="all",
        fired_at=utcnow(),
        interaction_ids=("i-sun", "i-ship"),
        firing_id=7,
    )
    action = knowledge.KnowledgeAction(knowledge.KnowledgeParams(), runtime.act_context())
    dry = action.run(trigger, dry_run=True)
    assert dry.dry_run and dry.details["entries"] == 1
    assert knowledge.entries(runtime.engine, tenant.project_id) == []
    done = action.run(trigger)
    assert done.ok and done.details["entries"] == 1
    (entry,) = knowledge.entries(runtime.engine, tenant.project_id)
    assert (entry.interaction_id, entry.feedback_id, entry.firing_id) == ("i-sun", "f-sun", 7)
    off = knowledge.KnowledgeAction(
        knowledge.KnowledgeParams(from_corrections=False), runtime.act_context()
    )
    assert off.run(trigger).details["entries"] == 0


async def test_the_api_adds_lists_recalls_and_removes_entries(
    runtime: Runtime, tenant: Tenant, other_tenant: Tenant, client: httpx.AsyncClient
) -> None:
    h = tenant.headers()
    r = await client.post(
        "/v1/knowledge",
        json={"query": "What is the refund window?", "answer": "30 days from delivery."},
        headers=h,
    )
    assert r.status_code == 201, r.text
    entry = r.json()
    assert entry["source"] == "manual" and "vector" not in entry
    r = await client.post("/v1/knowledge", json={"query": "", "answer": "x"}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "query"
    r = await client.post("/v1/knowledge", json={"query": "a\u0000b", "answer": "x"}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "query"
    r = await client.post(
        "/v1/knowledge/recall", json={"query": "refund window", "k": 0}, headers=h
    )
    assert r.status_code == 400 and r.json()["field"] == "k"

    r = await client.post("/v1/knowledge/recall", json={"query": "the refund window?"}, headers=h)
    assert r.status_code == 200
    (hit,) = r.json()["entries"]
    assert hit["id"] == entry["id"] and hit["answer"] == "30 days from delivery."
    assert 0 < hit["score"] <= 1.0001

    theirs = other_tenant.headers()
    r = await client.post("/v1/knowledge/recall", json={"query": "refund window"}, headers=theirs)
    assert r.json()["entries"] == []
    assert (await client.delete(f"/v1/knowledge/{entry['id']}", headers=theirs)).status_code == 404
    r = await client.post(
        "/v1/knowledge/recall", json={"query": "refund"}, headers=tenant.headers("public")
    )
    assert r.status_code == 401

    assert (await client.delete(f"/v1/knowledge/{entry['id']}", headers=h)).status_code == 204
    r = await client.post("/v1/knowledge/recall", json={"query": "the refund window?"}, headers=h)
    assert r.json()["entries"] == []
    r = await client.get("/v1/knowledge", headers=h)
    assert r.json()["entries"] == []
    r = await client.get("/v1/knowledge", params={"include_inactive": True}, headers=h)
    assert [e["active"] for e in r.json()["entries"]] == [False]


def test_entries_of_another_model_are_embedded_again_on_recall(
    runtime: Runtime, tenant: Tenant
) -> None:
    embedder = runtime.embedder()
    entry_id = knowledge.add_entry(
        runtime.engine, embedder, tenant.project_id, query="reset password", answer="Settings",
        source="manual",
    )  # fmt: skip
    t = models.kb_entries
    with runtime.engine.begin() as conn:
        conn.execute(t.update().values(model="old-model", vector=b"\x00" * 12))
    (hit,) = knowledge.recall(runtime.engine, embedder, tenant.project_id, "reset password")
    assert hit.id == entry_id and hit.score > 0.99
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.select(t.c.model)).scalar() == embedder.name


def test_erasing_a_user_removes_their_entries_and_blanks_answers_on_their_interactions(
    runtime: Runtime, tenant: Tenant
) -> None:
    _corrected(runtime, tenant)
    embedder = runtime.embedder()
    knowledge.from_corrections(runtime.engine, embedder, tenant.project_id, ["i-pw", "i-sun"])
    knowledge.add_entry(
        runtime.engine, embedder, tenant.project_id, query="their words", answer="x",
        source="manual", user_id="u-1",
    )  # fmt: skip
    task_id = review.create_task(runtime.engine, tenant.project_id, interaction_id="i-pw")
    review.answer(runtime, tenant.project_id, task_id, reviewer="ann", correction="Settings.")
    assert len(knowledge.entries(runtime.engine, tenant.project_id)) == 3

    receipt = runtime.erase_user(tenant.project_id, "u-1")

    assert receipt.hot["kb_entries"] == 2
    assert receipt.hot["review_answers"] == 1
    (left,) = knowledge.entries(runtime.engine, tenant.project_id, active=None)
    assert left.interaction_id == "i-sun"
    assert review.get_task(runtime.engine, tenant.project_id, task_id).answer is None


# -- re-indexing ------------------------------------------------------------------------------


def _endpoint(runtime: Runtime, project_id: int, name: str, *, enabled: bool = True) -> None:
    with runtime.engine.begin() as conn:
        conn.execute(
            models.webhook_endpoints.insert().values(
                project_id=project_id,
                name=name,
                url="https://hooks.example.org/flagged",
                secret="whsec_dGVzdHRlc3R0ZXN0dGVzdA==",
                format="standard",
                allow_private=False,
                enabled=enabled,
                created_at=utcnow(),
            )
        )


def _rag(runtime: Runtime, tenant: Tenant, n: int, docs: list[str], thumbs: int, tag: str) -> None:
    events = []
    for k in range(n):
        i = f"{tag}-{k}"
        retrieved = [{"id": d, "score": 0.8} for d in docs]
        events.append(make_event("interaction", {"input": f"q {k}", "output": "a",
                                                 "retrieved": retrieved}, id=i))  # fmt: skip
        events.append(make_event("feedback", {"interaction_id": i, "thumbs": thumbs}, id=f"{i}-f"))
    _ingest(runtime, tenant, events)


def _deliveries(runtime: Runtime) -> list[Any]:
    d = models.webhook_deliveries
    with runtime.engine.connect() as conn:
        return list(conn.execute(sa.select(d.c.project_id, d.c.event_type, d.c.payload)))


async def test_a_document_tied_to_three_bad_answers_is_flagged_once_and_announced(
    runtime: Runtime, tenant: Tenant, other_tenant: Tenant, client: httpx.AsyncClient
) -> None:
    _endpoint(runtime, tenant.project_id, "ops")
    _endpoint(runtime, tenant.project_id, "off", enabled=False)
    _endpoint(runtime, other_tenant.project_id, "theirs")
    _rag(runtime, tenant, 3, ["kb-17", "kb-2"], -1, "bad")
    _rag(runtime, tenant, 1, ["kb-2"], 1, "good")
    _rag(runtime, tenant, 2, ["kb-5"], -1, "meh")
    runtime.enricher.run()
    scanner = reindex.ReindexScanner(runtime.engine, runtime.settings, settle_seconds=1.0)
    later = utcnow() + dt.timedelta(seconds=30)

    assert scanner.run(tenant.project_id, now=later) == 2  # kb-17 and kb-2; kb-5 has 2
    assert scanner.run(tenant.project_id, now=later) == 0
    flagged = {f["doc_id"]: f for f in reindex.flags(runtime.engine, tenant.project_id)}
    assert set(flagged) == {"kb-17", "kb-2"}
    assert flagged["kb-17"]["negatives"] == 3 and flagged["kb-17"]["state"] == "notified"
    assert sorted(flagged["kb-17"]["examples"]) == ["bad-0", "bad-1", "bad-2"]
    sent = _deliveries(runtime)
    assert len(sent) == 2
    assert {row.event_type for row in sent} == {reindex.FLAGGED_EVENT}
    assert all(row.project_id == tenant.project_id for row in sent)
    assert any("kb-17" in row.payload for row in sent)

    # more feedback re-enriches the same interactions: they are not counted again
    _ingest(runtime, tenant, [make_event("feedback", {"interaction_id": "bad-0", "comment": "no"},
                                         id="bad-0-c")])  # fmt: skip
    runtime.enricher.run()
    assert scanner.run(tenant.project_id, now=later + dt.timedelta(seconds=30)) == 0
    assert reindex.flags(runtime.engine, tenant.project_id)[0]["negatives"] == 3
    assert len(_deliveries(runtime)) == 2

    h = tenant.headers()
    r = await client.get("/v1/knowledge/reindex", params={"state": "notified"}, headers=h)
    assert {d["doc_id"] for d in r.json()["documents"]} == {"kb-17", "kb-2"}
    r = await client.post("/v1/knowledge/reindex/kb-17/done", headers=other_tenant.headers())
    assert r.status_code == 404
    r = await client.post("/v1/knowledge/reindex/kb-17/done", headers=h)
    assert r.status_code == 200 and r.json()["state"] == "reindexed"
    r = await client.get("/v1/knowledge/reindex", params={"state": "bogus"}, headers=h)
    assert r.status_code == 400 and r.json()["field"] == "state"


def test_rows_an_enrichment_pass_commits_after_a_scan_with_smaller_ids_are_counted(
    runtime: Runtime, tenant: Tenant
) -> None:
    # One pass stamps every row with its start T and commits session chunks one by one: the
    # chunk of z-* commits, a scan runs, then the chunk of a-0 commits - same T, smaller id.
    _rag(runtime, tenant, 2, ["kb-9"], -1, "z")
    _rag(runtime, tenant, 1, ["kb-9"], -1, "a")
    runtime.enricher.run()
    i = models.interactions
    with runtime.engine.begin() as conn:
        stamped = conn.execute(sa.select(i.c.enriched_at).where(i.c.id == "a-0")).scalar_one()
        conn.execute(i.update().values(enriched_at=stamped))  # one pass: one T
        conn.execute(i.update().where(i.c.id == "a-0").values(enriched_at=None))  # uncommitted
    pass_start = utcnow()
    scanner = reindex.ReindexScanner(runtime.engine, runtime.settings)  # the service's settle
    assert scanner.run(tenant.project_id, now=pass_start + dt.timedelta(seconds=30)) == 0

    with runtime.engine.begin() as conn:  # the later chunk commits, stamped T
        conn.execute(i.update().where(i.c.id == "a-0").values(enriched_at=stamped))
    assert scanner.run(tenant.project_id, now=pass_start + dt.timedelta(minutes=10)) == 1
    (flag,) = reindex.flags(runtime.engine, tenant.project_id)
    assert flag["doc_id"] == "kb-9" and sorted(flag["examples"]) == ["a-0", "z-0", "z-1"]
