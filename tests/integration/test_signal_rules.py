"""Event rules on implicit signals (``event: {signal: edit}``), SQLite and PostgreSQL: each
matching signal fires once, in arrival order past a cursor that pending signals hold back, and
an edits-to-kb rule makes the text a user kept recallable.

The recording action and the helpers are those of ``test_rules.py``.
"""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from closedloop.act import knowledge
from closedloop.act.engine import RuleEngine
from closedloop.act.rules import firings, list_rules, parse_rules, put_rule
from closedloop.enrich.job import Enricher, EnrichParams
from closedloop.runtime import Runtime
from closedloop.store.db import utcnow
from tests.conftest import Tenant
from tests.integration.test_rules import RAN, at, engine_of, rule, send

SUPPORT = {"name": "support", "version": "3"}

EDIT_RULE = """
rules:
  - name: edits
    when:
      event: {signal: edit, prompt: support}
    backfill: true
    actions:
      - record: {tag: kb}
"""


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


def _edit(interaction_id: str, text: str) -> dict[str, str]:
    return {"interaction_id": interaction_id, "kind": "edit", "text": text}


async def test_a_signal_rule_fires_once_per_matching_edit_not_for_other_kinds_or_feedback(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t = utcnow() - dt.timedelta(minutes=30)
    sales = {"input": "q3", "output": "a3", "prompt": {"name": "sales"}}
    long_text = "kept " * 500  # 2,500 characters
    await send(
        client,
        tenant,
        [
            at(t, "interaction", {"input": "q1", "output": "a1", "prompt": SUPPORT}, "i1"),
            at(t, "interaction", {"input": "q2", "output": "a2", "prompt": SUPPORT}, "i2"),
            at(t, "interaction", sales, "i3"),
            at(t, "signal", _edit("i1", long_text), "s1"),
            at(t, "signal", {"interaction_id": "i2", "kind": "rephrase", "text": "q2?"}, "s2"),
            at(t, "signal", {"interaction_id": "i2", "kind": "regenerate"}, "s3"),
            at(t, "signal", _edit("i3", "A3"), "s4"),  # another prompt
            at(t, "feedback", {"interaction_id": "i2", "thumbs": -1, "correction": "A2"}, "f1"),
        ],
    )
    Enricher(runtime.engine).run()
    rule(runtime, tenant, EDIT_RULE)
    engine = engine_of(runtime)
    stats = engine.run(tenant.project_id)
    assert (stats.fired, stats.actions_ok) == (1, 1)
    (_, trigger, _), *_ = RAN
    assert trigger.interaction_ids == ("i1",) and trigger.prompt == "support"
    snapshot = trigger.snapshot
    assert (snapshot["signal_id"], snapshot["interaction_id"], snapshot["kind"]) == (
        "s1",
        "i1",
        "edit",
    )
    assert snapshot["text"] == long_text[:2000] and "feedback_id" not in snapshot
    assert snapshot["prompt"] == {"name": "support", "version": "3"}
    (firing,) = firings(runtime.engine, tenant.project_id)
    assert firing["segment"] == "prompt=support@3"
    assert engine.run(tenant.project_id).fired == 0  # the cursor does not fire it again

    await send(
        client,
        tenant,
        [
            at(t, "signal", _edit("i2", "A2, as kept"), "s5"),
            at(t, "feedback", {"interaction_id": "i1", "thumbs": -1}, "f2"),
        ],
    )
    Enricher(runtime.engine).run()
    assert engine.run(tenant.project_id).fired == 1
    assert [r.snapshot["signal_id"] for _, r, _ in RAN] == ["s1", "s5"]
    assert engine.run(tenant.project_id).fired == 0


async def test_a_pending_signal_holds_the_cursor_and_fires_once_joined(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t = utcnow() - dt.timedelta(minutes=5)
    rule(runtime, tenant, EDIT_RULE)
    engine = engine_of(runtime)
    await send(client, tenant, [at(t, "signal", _edit("late", "kept"), "s-early")])
    Enricher(runtime.engine).run()
    assert engine.run(tenant.project_id).fired == 0  # pending: its interaction is not here
    body = {"input": "q", "output": "a", "prompt": SUPPORT}
    await send(
        client,
        tenant,
        [at(t, "interaction", body, "other"), at(t, "signal", _edit("other", "b"), "s2")],
    )
    Enricher(runtime.engine).run()
    assert engine.run(tenant.project_id).fired == 0  # held behind the pending one
    await send(client, tenant, [at(t, "interaction", body, "late")])
    Enricher(runtime.engine).run()
    assert engine.run(tenant.project_id).fired == 2
    assert sorted(r.snapshot["signal_id"] for _, r, _ in RAN) == ["s-early", "s2"]


async def test_a_signal_orphaned_then_joined_late_still_fires_once(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    rule(runtime, tenant, EDIT_RULE)
    engine = engine_of(runtime)
    t = utcnow() - dt.timedelta(minutes=5)
    await send(client, tenant, [at(t, "signal", _edit("late", "kept"), "s-orphan")])
    Enricher(runtime.engine, EnrichParams(join_wait_seconds=0)).run()  # orphaned at once
    engine.run(tenant.project_id)  # the cursor moves past it
    body = {"input": "q", "output": "a", "prompt": SUPPORT}
    await send(client, tenant, [at(t, "interaction", body, "late")])
    Enricher(runtime.engine, EnrichParams(join_wait_seconds=0)).run()  # joined late
    engine.run(tenant.project_id)
    engine.run(tenant.project_id)
    assert [r.snapshot["signal_id"] for _, r, _ in RAN] == ["s-orphan"]


async def test_a_rule_turned_from_feedback_to_signals_starts_at_the_signals_head(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t = utcnow() - dt.timedelta(minutes=5)
    body = {"input": "q", "output": "a", "prompt": SUPPORT}
    await send(
        client,
        tenant,
        [at(t, "interaction", body, "i1"), at(t, "signal", _edit("i1", "old edit"), "s-old")],
    )
    Enricher(runtime.engine).run()
    engine = engine_of(runtime)
    rule(
        runtime,
        tenant,
        "rules:\n  - {name: r, when: {event: {thumbs: down}}, actions: [{record: {}}]}\n",
    )
    engine.run(tenant.project_id)
    rule(
        runtime,
        tenant,
        "rules:\n  - {name: r, when: {event: {signal: edit}}, actions: [{record: {}}]}\n",
    )
    engine.run(tenant.project_id)
    assert RAN == []  # the edit stored before the rule read signals is not replayed
    (stored,) = list_rules(runtime.engine, tenant.project_id)
    assert stored.state["kind"] == "signal:edit"
    assert [t["held"][:10] for t in engine.evaluate(stored).triggers] == ["before the"]
    later = utcnow() - dt.timedelta(seconds=1)
    await send(client, tenant, [at(later, "signal", _edit("i1", "new edit"), "s-new")])
    Enricher(runtime.engine).run()
    engine.run(tenant.project_id)
    assert [r.snapshot["signal_id"] for _, r, dry in RAN if not dry] == ["s-new"]


async def test_a_rule_switched_to_another_signal_kind_starts_at_that_kinds_head(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    # an edit rule's cursor moves past edits only: switched to rephrase, it must not replay
    # the rephrases received before the switch
    t = utcnow() - dt.timedelta(minutes=30)
    engine = engine_of(runtime)
    edits = "rules:\n  - {name: r, when: {event: {signal: edit}}, actions: [{record: {}}]}\n"
    rule(runtime, tenant, edits)
    engine.run(tenant.project_id)
    body = {"input": "q", "output": "a", "prompt": SUPPORT}
    rephrase = [
        at(t, "signal", {"interaction_id": "i1", "kind": "rephrase", "text": f"q{n}"}, f"r{n}")
        for n in range(5)
    ]
    await send(client, tenant, [at(t, "interaction", body, "i1"), *rephrase])
    Enricher(runtime.engine).run()
    engine.run(tenant.project_id)
    assert RAN == []
    (stored,) = list_rules(runtime.engine, tenant.project_id)
    assert stored.state["kind"] == "signal:edit"
    rule(runtime, tenant, edits.replace("signal: edit", "signal: rephrase"))
    engine.run(tenant.project_id)
    assert RAN == [], "rephrases received before the switch were replayed"
    (stored,) = list_rules(runtime.engine, tenant.project_id)
    assert stored.state["kind"] == "signal:rephrase"
    assert [t["held"][:10] for t in engine.evaluate(stored).triggers] == ["before the"] * 5
    later = utcnow() - dt.timedelta(seconds=1)
    new = {"interaction_id": "i1", "kind": "rephrase", "text": "q again"}
    await send(client, tenant, [at(later, "signal", new, "r-new")])
    Enricher(runtime.engine).run()
    engine.run(tenant.project_id)
    assert [r.snapshot["signal_id"] for _, r, dry in RAN if not dry] == ["r-new"]


async def test_an_edits_to_kb_rule_makes_the_kept_text_recallable(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t = utcnow() - dt.timedelta(minutes=5)
    question = {"input": "How do I reset my password?", "output": "Call us.", "prompt": SUPPORT}
    kept = "Open Settings, then Security, then Reset password."
    await send(
        client,
        tenant,
        [at(t, "interaction", question, "i-pw"), at(t, "signal", _edit("i-pw", kept), "s-pw")],
    )
    Enricher(runtime.engine).run()
    rules = (
        "rules:\n  - name: edits-to-kb\n    when:\n      event: {signal: edit}\n"
        "    backfill: true\n    actions:\n      - kb_refresh: {from_edits: true}\n"
    )
    rule_kinds = runtime.action_kinds()
    for spec in parse_rules(rules, kinds=rule_kinds):
        put_rule(runtime.engine, tenant.project_id, spec)
    engine = RuleEngine(runtime.act_context(), rule_kinds, event_settle_seconds=0)
    stats = engine.run(tenant.project_id)
    assert (stats.fired, stats.actions_ok) == (1, 1)
    (firing,) = firings(runtime.engine, tenant.project_id)
    assert firing["actions"][0]["details"]["edits"] == 1
    (hit, *_) = knowledge.recall(
        runtime.engine, runtime.embedder(), tenant.project_id, "reset the password"
    )
    assert (hit.answer, hit.source) == (kept, "edit")


async def test_rules_check_and_put_name_the_field_mixed_with_signal(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    mixed = {"when": {"event": {"signal": "edit", "thumbs": "down"}}, "actions": [{"review": {}}]}
    r = await client.put("/v1/rules/r", json=mixed, headers=tenant.headers())
    assert r.status_code == 400 and r.json()["field"] == "when.event", r.text
    assert "thumbs" in r.json()["detail"]
    check = await client.post(
        "/v1/rules/check",
        content=b"rules:\n  - name: r\n    when:\n      event: {signal: edits}\n"
        b"    actions: [{review: {}}]\n",
        headers={**tenant.headers(), "content-type": "application/yaml"},
    )
    (problem,) = check.json()["problems"]
    assert problem["line"] == 4 and problem["field"] == "rules[0.when.event.signal]"
    assert "rephrase" in problem["message"]  # it lists the kinds
    good = {
        "when": {"event": {"signal": "edit"}},
        "actions": [{"kb_refresh": {"from_edits": True}}],
    }
    r = await client.put("/v1/rules/ok", json=good, headers=tenant.headers())
    assert r.status_code == 200 and r.json()["when"]["event"]["signal"] == "edit", r.text
