"""Erasing a user reaches what the act stage copied of their words: a firing's snapshot of
their feedback or edit, the webhooks carrying it, and prompt versions' examples (SQLite and
PostgreSQL)."""

from __future__ import annotations

import datetime as dt
import json

import httpx
import sqlalchemy as sa

from closedloop import make_event
from closedloop.act.engine import RuleEngine
from closedloop.act.rules import parse_rules, put_rule
from closedloop.act.webhooks.endpoints import Endpoints
from closedloop.act.webhooks.ssrf import SsrfGuard
from closedloop.enrich.job import Enricher
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utcnow
from closedloop.store.lake.tiering import tier
from tests.conftest import Tenant

SECRET_FIX = "the corrected answer only u-1 wrote"


async def test_erasure_removes_the_users_words_from_firings_and_undelivered_webhooks(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    Endpoints(runtime.engine, SsrfGuard()).create(
        tenant.project_id, "ops", "http://93.184.216.34/hook"
    )
    spec = parse_rules(
        "rules:\n  - {name: fixes, when: {event: {correction: true}}, backfill: true, "
        "actions: [{webhook: {endpoint: ops}}]}\n",
        kinds=runtime.action_kinds(),
    )[0]
    put_rule(runtime.engine, tenant.project_id, spec)
    t = (utcnow() - dt.timedelta(minutes=5)).isoformat()
    events = []
    # "_" is a LIKE wildcard: i_1 must not take ix1 with it
    for user, iid in (("u-1", "i_1"), ("u-2", "ix1")):
        i = make_event("interaction", {"input": "q", "output": "a", "user_id": user}, id=iid)
        text = SECRET_FIX if user == "u-1" else "u-2's fix"
        f = make_event("feedback", {"interaction_id": iid, "correction": text}, id=f"f-{iid}")
        i["timestamp"] = f["timestamp"] = t
        events += [i, f]
    # u-1 also corrected u-2's answer
    on_theirs = {"interaction_id": "ix1", "correction": "u-1 on u-2's", "user_id": "u-1"}
    events.append(make_event("feedback", on_theirs, id="f-u1-on-ix1"))
    events[-1]["timestamp"] = t
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    Enricher(runtime.engine).run()
    engine = RuleEngine(runtime.act_context(), runtime.action_kinds(), event_settle_seconds=0)
    assert engine.run(tenant.project_id).fired == 3

    # a prompt candidate learned from both users' corrections
    from closedloop.act.prompts import create_version, get

    examples = [
        {"input": "q", "output": SECRET_FIX, "interaction_id": "i_1", "feedback_id": "f-i_1"},
        {"input": "q", "output": "u-2's fix", "interaction_id": "ix1", "feedback_id": "f-ix1"},
        {
            "input": "q",
            "output": "u-1 on u-2's",
            "interaction_id": "ix1",
            "feedback_id": "f-u1-on-ix1",
        },
    ]
    create_version(runtime.engine, tenant.project_id, "support", "Answer.", examples=examples)

    def stored() -> str:
        with runtime.engine.connect() as conn:
            rows = conn.execute(sa.select(models.firings.c.trigger)).scalars().all()
            rows += conn.execute(sa.select(models.webhook_deliveries.c.payload)).scalars().all()
            rows += conn.execute(sa.select(models.prompts.c.examples)).scalars().all()
        return json.dumps(rows)

    assert SECRET_FIX in stored() and "u-2's fix" in stored()
    receipt = runtime.erase_user(tenant.project_id, "u-1")
    assert receipt.hot["firings"] == 2 and receipt.hot["webhook_deliveries"] == 2
    assert receipt.hot["prompt_examples"] == 2
    assert "u-1 on u-2's" not in stored()
    kept = get(runtime.engine, tenant.project_id, "support").examples
    assert [e["output"] for e in kept] == ["u-2's fix"]
    assert SECRET_FIX not in stored()
    assert "u-2's fix" in stored()  # the other user's firing and webhook are untouched
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(models.firings)).scalar() == 3


SECRET_EDIT = "the answer only u-1 kept"


async def test_erasure_removes_the_users_edits_from_signal_rule_firings_and_webhooks(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    Endpoints(runtime.engine, SsrfGuard()).create(
        tenant.project_id, "ops", "http://93.184.216.34/hook"
    )
    # the live rule queues webhooks; the dry run's results hold the body it would send
    for spec in parse_rules(
        "rules:\n"
        "  - {name: edits, when: {event: {signal: edit}}, backfill: true, "
        "actions: [{webhook: {endpoint: ops}}]}\n"
        "  - {name: edits-dry, when: {event: {signal: edit}}, backfill: true, dry_run: true, "
        "actions: [{webhook: {endpoint: ops}}]}\n",
        kinds=runtime.action_kinds(),
    ):
        put_rule(runtime.engine, tenant.project_id, spec)
    t = (utcnow() - dt.timedelta(minutes=5)).isoformat()
    events = []
    for user, iid in (("u-1", "i_1"), ("u-2", "ix1")):
        i = make_event("interaction", {"input": "q", "output": "a", "user_id": user}, id=iid)
        text = SECRET_EDIT if user == "u-1" else "u-2's kept answer"
        s = make_event(
            "signal", {"interaction_id": iid, "kind": "edit", "text": text}, id=f"s-{iid}"
        )
        events += [i, s]
    # u-1 also edited u-2's answer
    on_theirs = {"interaction_id": "ix1", "kind": "edit", "text": "u-1 on u-2's", "user_id": "u-1"}
    events.append(make_event("signal", on_theirs, id="s-u1-on-ix1"))
    for e in events:
        e["timestamp"] = t
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    Enricher(runtime.engine).run()
    engine = RuleEngine(runtime.act_context(), runtime.action_kinds(), event_settle_seconds=0)
    assert engine.run(tenant.project_id).fired == 6
    fr, wd = models.firings, models.webhook_deliveries
    with runtime.engine.begin() as conn:  # the webhook of u-1's edit on u-2's answer was sent
        conn.execute(
            wd.update().where(wd.c.payload.contains("s-u1-on-ix1")).values(state="delivered")
        )

    def column(c: sa.Column[str]) -> str:
        with runtime.engine.connect() as conn:
            return json.dumps(conn.execute(sa.select(c)).scalars().all())

    secrets = (SECRET_EDIT, "u-1 on u-2's")
    for c in (fr.c.trigger, fr.c.actions, wd.c.payload):
        assert all(s in column(c) for s in secrets)
    receipt = runtime.erase_user(tenant.project_id, "u-1")
    assert receipt.hot["signals"] == 2
    assert receipt.hot["firings"] == 4 and receipt.hot["webhook_deliveries"] == 2
    for c in (fr.c.trigger, fr.c.actions, wd.c.payload):
        assert not any(s in column(c) for s in secrets), c
        assert "u-2's kept answer" in column(c)  # the other user's edit is untouched
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(fr)).scalar() == 6
        kept = conn.execute(sa.select(wd.c.state, wd.c.payload).order_by(wd.c.id)).all()
    assert sorted((state, payload == "{}") for state, payload in kept) == [
        ("delivered", True),  # u-1's edit of u-2's answer: sent, so emptied
        ("pending", False),  # u-2's own edit (u-1's pending one is deleted)
    ]


async def test_erasure_blanks_the_firings_of_the_users_edits_already_moved_to_the_lake(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    Endpoints(runtime.engine, SsrfGuard()).create(
        tenant.project_id, "ops", "http://93.184.216.34/hook"
    )
    spec = parse_rules(
        "rules:\n  - {name: edits, when: {event: {signal: edit}}, backfill: true, "
        "actions: [{webhook: {endpoint: ops}}]}\n",
        kinds=runtime.action_kinds(),
    )[0]
    put_rule(runtime.engine, tenant.project_id, spec)
    old = (utcnow() - dt.timedelta(days=60)).isoformat()
    edits = (
        ("i-1", "s-1", SECRET_EDIT),
        ("i-2", "s-on-2", "u-1 on u-2's"),
        ("i-2", "s-2", "u-2 kept this"),
    )
    events = [
        make_event("interaction", {"input": "q", "output": "a", "user_id": user}, id=iid)
        for user, iid in (("u-1", "i-1"), ("u-2", "i-2"))
    ] + [
        make_event("signal", {"interaction_id": iid, "kind": "edit", "text": text}, id=sid)
        for iid, sid, text in edits
    ]
    events[3]["body"]["user_id"] = "u-1"  # u-1 edited u-2's answer
    for e in events:
        e["timestamp"] = old
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    Enricher(runtime.engine).run()
    engine = RuleEngine(runtime.act_context(), runtime.action_kinds(), event_settle_seconds=0)
    assert engine.run(tenant.project_id).fired == 3
    assert tier(runtime.engine, runtime.lake, hot_days_of=30.0).rows == 5
    with runtime.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(models.signals)).scalar() == 0

    receipt = runtime.erase_user(tenant.project_id, "u-1")
    assert sum(f["removed_rows"] for f in receipt.lake) == 3  # i-1, s-1 and s-on-2
    assert receipt.hot["firings"] == 2 and receipt.hot["webhook_deliveries"] == 2
    fr, wd = models.firings, models.webhook_deliveries
    with runtime.engine.connect() as conn:
        stored = json.dumps(
            conn.execute(sa.select(fr.c.trigger)).scalars().all()
            + conn.execute(sa.select(wd.c.payload)).scalars().all()
        )
    assert SECRET_EDIT not in stored and "u-1 on u-2's" not in stored
    assert "u-2 kept this" in stored  # u-2's own edit is untouched
