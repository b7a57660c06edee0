"""Erasing a user reaches what the act stage copied of their words: a firing's snapshot of
their feedback, the webhooks carrying it, and prompt versions' examples (SQLite and
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
