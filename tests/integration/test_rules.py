"""Rules end to end on SQLite and PostgreSQL: feedback in → the rule fires once (cooldown,
de-duplication) → its actions run and are recorded → the effect is reported against a control.

The actions here are a plugin-style kind defined by the test (the engine's contract is the same
for built-in and third-party actions); the built-in actions are exercised in their own tests
and, from a rule, in ``test_act_loop.py``.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, ClassVar

import httpx
import pydantic
import pytest

from closedloop import make_event
from closedloop.act.actions import ActContext, ActionResult, Trigger
from closedloop.act.conditions import Found
from closedloop.act.effect import effect_report, rule_summaries
from closedloop.act.engine import RuleEngine, held_out
from closedloop.act.rules import firings, list_rules, parse_rules, put_rule
from closedloop.enrich.job import Enricher
from closedloop.errors import JobError
from closedloop.runtime import Runtime
from closedloop.store.db import utcnow
from tests.conftest import Tenant

RAN: list[tuple[str, Trigger, bool]] = []


class _Params(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")
    tag: str = "x"


class Record:
    """Records each run (what a webhook or a review action would receive)."""

    name: ClassVar[str] = "record"
    Params: ClassVar[type[pydantic.BaseModel]] = _Params

    def __init__(self, params: _Params, context: ActContext) -> None:
        self.tag = params.tag

    def run(self, trigger: Trigger, *, dry_run: bool = False) -> ActionResult:
        RAN.append((self.tag, trigger, dry_run))
        return ActionResult(action=self.name, ok=True, summary=f"recorded {self.tag}")


class Explode(Record):
    name: ClassVar[str] = "explode"

    def run(self, trigger: Trigger, *, dry_run: bool = False) -> ActionResult:
        raise RuntimeError("the action's own failure")


KINDS = {"record": Record, "explode": Explode}


@pytest.fixture(autouse=True)
def _clear() -> None:
    RAN.clear()


def engine_of(runtime: Runtime) -> RuleEngine:
    return RuleEngine(runtime.act_context(), KINDS, event_settle_seconds=0)


def rule(runtime: Runtime, tenant: Tenant, text: str) -> None:
    for spec in parse_rules(text, kinds=KINDS):
        put_rule(runtime.engine, tenant.project_id, spec)


def at(t: dt.datetime, kind: str, body: dict[str, Any], id: str) -> dict[str, Any]:
    e = make_event(kind, body, id=id)  # type: ignore[arg-type]
    e["timestamp"] = t.isoformat()
    return e


async def send(client: httpx.AsyncClient, tenant: Tenant, events: list[dict[str, Any]]) -> None:
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert all(x["status"] in ("stored", "duplicate") for x in r.json()["results"]), r.text


EVENT_RULE = """
rules:
  - name: corrections
    when:
      event: {thumbs: down, correction: true, prompt: support}
    backfill: true
    actions:
      - record: {tag: kb}
"""


async def test_an_event_rule_fires_once_per_matching_feedback_with_its_snapshot(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t = utcnow() - dt.timedelta(minutes=30)
    support = {"name": "support", "version": "3"}
    await send(
        client,
        tenant,
        [
            at(t, "interaction", {"input": "q1", "output": "a1", "prompt": support}, "i1"),
            at(t, "interaction", {"input": "q2", "output": "a2", "prompt": support}, "i2"),
            at(
                t, "interaction", {"input": "q3", "output": "a3", "prompt": {"name": "sales"}}, "i3"
            ),
            at(t, "feedback", {"interaction_id": "i1", "thumbs": -1, "correction": "A1"}, "f1"),
            at(t, "feedback", {"interaction_id": "i2", "thumbs": -1}, "f2"),  # no correction
            at(t, "feedback", {"interaction_id": "i3", "thumbs": -1, "correction": "A3"}, "f3"),
        ],
    )
    Enricher(runtime.engine).run()
    rule(runtime, tenant, EVENT_RULE)
    engine = engine_of(runtime)
    stats = engine.run(tenant.project_id)
    assert (stats.fired, stats.actions_ok) == (1, 1)
    (_, trigger, dry), *_ = RAN
    assert trigger.interaction_ids == ("i1",) and trigger.prompt == "support" and not dry
    assert trigger.snapshot["correction"] == "A1" and trigger.firing_id is not None
    (firing,) = firings(runtime.engine, tenant.project_id)
    assert firing["segment"] == "prompt=support@3"
    assert firing["trigger"]["snapshot"]["feedback_id"] == "f1"
    assert firing["actions"] == [
        {"action": "record", "ok": True, "summary": "recorded kb", "details": {}, "dry_run": False}
    ]
    # again: nothing new, nothing fires twice
    assert engine.run(tenant.project_id).fired == 0
    # a new matching feedback fires again
    await send(
        client,
        tenant,
        [at(t, "feedback", {"interaction_id": "i2", "thumbs": -1, "correction": "A2"}, "f4")],
    )
    Enricher(runtime.engine).run()
    assert engine.run(tenant.project_id).fired == 1
    assert [r[1].snapshot["feedback_id"] for r in RAN] == ["f1", "f4"]


async def test_feedback_waiting_for_its_interaction_is_not_skipped(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t = utcnow() - dt.timedelta(minutes=5)
    rule(runtime, tenant, EVENT_RULE)
    engine = engine_of(runtime)
    feedback = {"interaction_id": "late", "thumbs": -1, "correction": "fixed"}
    await send(client, tenant, [at(t, "feedback", feedback, "f-early")])
    Enricher(runtime.engine).run()
    assert engine.run(tenant.project_id).fired == 0  # pending: its interaction is not here
    # a later feedback that matches must not move the cursor past the waiting one
    other = {"input": "q", "output": "a", "prompt": {"name": "support"}}
    await send(
        client,
        tenant,
        [
            at(t, "interaction", other, "other"),
            at(t, "feedback", {"interaction_id": "other", "thumbs": -1, "correction": "b"}, "f2"),
        ],
    )
    Enricher(runtime.engine).run()
    engine.run(tenant.project_id)
    body = {"input": "q", "output": "a", "prompt": {"name": "support"}}
    await send(client, tenant, [at(t, "interaction", body, "late")])
    Enricher(runtime.engine).run()
    engine.run(tenant.project_id)
    assert sorted(r[1].snapshot["feedback_id"] for r in RAN) == ["f-early", "f2"]


async def test_a_failing_action_is_recorded_and_the_others_still_run(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t = utcnow() - dt.timedelta(minutes=5)
    await send(
        client,
        tenant,
        [
            at(t, "interaction", {"input": "q", "output": "a"}, "i1"),
            at(t, "feedback", {"interaction_id": "i1", "thumbs": -1}, "f1"),
        ],
    )
    Enricher(runtime.engine).run()
    rule(
        runtime,
        tenant,
        """
rules:
  - name: both
    when: {event: {thumbs: down}}
    backfill: true
    actions: [{explode: {}}, {record: {tag: after}}]
""",
    )
    stats = engine_of(runtime).run(tenant.project_id)
    assert (stats.actions_ok, stats.actions_failed) == (1, 1)
    (firing,) = firings(runtime.engine, tenant.project_id)
    boom, ok = firing["actions"]
    assert not boom["ok"] and "the action's own failure" in boom["summary"]
    assert ok["ok"] and RAN[0][0] == "after"


async def test_a_dry_run_rule_records_its_firing_and_its_actions_change_nothing(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t = utcnow() - dt.timedelta(minutes=5)
    await send(
        client,
        tenant,
        [
            at(t, "interaction", {"input": "q", "output": "a"}, "i1"),
            at(t, "feedback", {"interaction_id": "i1", "thumbs": -1}, "f1"),
        ],
    )
    Enricher(runtime.engine).run()
    rule(
        runtime,
        tenant,
        "rules:\n  - {name: dry, when: {event: {thumbs: down}}, dry_run: true, backfill: true, "
        "actions: [{record: {}}]}\n",
    )
    engine_of(runtime).run(tenant.project_id)
    (firing,) = firings(runtime.engine, tenant.project_id)
    assert firing["dry_run"] is True
    assert [dry for _, _, dry in RAN] == [True]


# -- metric rules: per segment, cooldown, effect against a control -------------------------


def thumbs_events(
    t: dt.datetime, prompt: str, up: int, down: int, tag: str
) -> list[dict[str, Any]]:
    out = []
    for k in range(up + down):
        iid = f"{tag}-{prompt}-{k}"
        when = t + dt.timedelta(seconds=k)
        body = {"input": f"q {k}", "output": f"a {k}", "prompt": {"name": prompt, "version": "1"}}
        out.append(at(when, "interaction", body, iid))
        out.append(
            at(when, "feedback", {"interaction_id": iid, "thumbs": 1 if k < up else -1}, f"f{iid}")
        )
    return out


METRIC_RULE = """
rules:
  - name: positive-rate
    when: {metric: positive_rate, by: prompt, below: 0.6, window: 2h, min_count: 20}
    cooldown: 1h
    actions: [{record: {tag: fix}}]
"""


async def test_a_metric_rule_fires_on_the_low_segment_once_per_cooldown_and_reports_its_effect(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t0 = utcnow().replace(microsecond=0) - dt.timedelta(hours=10)
    # before: A is fine (80 % up), B is low (30 % up)
    await send(client, tenant, thumbs_events(t0, "A", 32, 8, "before"))
    await send(client, tenant, thumbs_events(t0, "B", 12, 28, "before"))
    Enricher(runtime.engine).run()
    rule(runtime, tenant, METRIC_RULE)
    engine = engine_of(runtime)
    fired_at = t0 + dt.timedelta(hours=1)
    stats = engine.run(tenant.project_id, now=fired_at)
    assert stats.fired == 1
    (_, trigger, _), *_ = RAN
    assert trigger.segment == "prompt=B@1" and trigger.prompt == "B"
    assert trigger.snapshot["value"] == pytest.approx(12 / 40) and trigger.snapshot["n"] == 40
    # the thumbs-down interactions of the segment are named for the actions
    assert len(trigger.interaction_ids) == 28 and all("-B-" in i for i in trigger.interaction_ids)
    # still low ten minutes later: held by the cooldown, not fired again
    again = engine.run(tenant.project_id, now=fired_at + dt.timedelta(minutes=10))
    assert (again.fired, again.cooled) == (0, 1)
    # after the fix: B is up to 80 %, A unchanged; the report measures B against A
    after = fired_at + dt.timedelta(minutes=30)
    await send(client, tenant, thumbs_events(after, "A", 32, 8, "after"))
    await send(client, tenant, thumbs_events(after, "B", 32, 8, "after"))
    Enricher(runtime.engine).run()
    (row,) = effect_report(
        runtime.engine,
        runtime.analytics(),
        tenant.project_id,
        now=fired_at + dt.timedelta(hours=3),
    )
    assert row["method"] == "diff_in_diff" and row["complete"]
    assert row["before"]["segment"]["value"] == pytest.approx(0.3)
    assert row["after"]["segment"]["value"] == pytest.approx(0.8)
    assert row["before"]["control"]["value"] == pytest.approx(0.8)
    assert row["effect"] == pytest.approx(0.5)
    assert row["low"] > 0 and row["verdict"] == "improved"


async def test_held_out_segments_are_recorded_not_acted_on_and_are_the_rules_control(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    spec = parse_rules(
        "rules:\n  - {name: low, when: {metric: positive_rate, by: prompt, below: 0.6, "
        "window: 2h, min_count: 10}, holdout: 0.5, actions: [{record: {}}]}\n",
        kinds=KINDS,
    )[0]
    put_rule(runtime.engine, tenant.project_id, spec)
    # prompts chosen so that both sides of the stable hash are present
    names = [f"p{k}" for k in range(40)]
    t0 = utcnow().replace(microsecond=0) - dt.timedelta(hours=10)
    fired_at = t0 + dt.timedelta(hours=1)

    def side(name: str) -> bool:
        segment = f"prompt={name}@1"
        trigger = Trigger(
            project_id=0, rule="low", kind="metric", segment=segment, fired_at=fired_at
        )
        key = f"metric|{segment}|{fired_at.isoformat()}"
        return held_out(spec, Found(trigger=trigger, dedup_key=key))

    held = [n for n in names if side(n)][:2]
    treated = [n for n in names if not side(n)][:2]
    for name in held + treated:
        await send(client, tenant, thumbs_events(t0, name, 3, 9, "before"))
    Enricher(runtime.engine).run()
    stats = engine_of(runtime).run(tenant.project_id, now=fired_at)
    assert (stats.fired, stats.held_out) == (4, 2)
    assert sorted(r[1].segment for r in RAN) == sorted(f"prompt={n}@1" for n in treated)
    # the treated recover to 75 %, the held-out ones to 50 % (regression to the mean alone)
    later = fired_at + dt.timedelta(minutes=30)
    for name in treated:
        await send(client, tenant, thumbs_events(later, name, 9, 3, "after"))
    for name in held:
        await send(client, tenant, thumbs_events(later, name, 6, 6, "after"))
    Enricher(runtime.engine).run()
    rows = effect_report(
        runtime.engine, runtime.analytics(), tenant.project_id, now=fired_at + dt.timedelta(hours=3)
    )
    assert sum(r["held_out"] for r in rows) == 2
    (summary,) = rule_summaries(rows)
    assert summary["method"] == "holdout" and (summary["treated"], summary["held_out"]) == (2, 2)
    assert summary["treated_change"] == pytest.approx(0.5)
    assert summary["held_out_change"] == pytest.approx(0.25)
    assert summary["effect"] == pytest.approx(0.25)  # the naive +0.5 halved


def test_a_failing_rule_does_not_stop_the_others_and_the_job_says_so(
    runtime: Runtime, tenant: Tenant
) -> None:
    # a rule whose action kind has gone (a plugin uninstalled) fails alone
    put_rule(runtime.engine, tenant.project_id, parse_rules(EVENT_RULE, kinds=KINDS)[0])
    engine = RuleEngine(runtime.act_context(), {"explode": Explode})
    with pytest.raises(JobError, match="corrections"):
        engine.run(tenant.project_id)


# -- review fixes: streams, crashes, dry runs, bad input ------------------------------------


async def test_a_new_event_rule_acts_on_what_arrives_from_then_on_unless_it_backfills(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t = utcnow() - dt.timedelta(minutes=5)
    old = [
        at(t, "interaction", {"input": "q", "output": "a"}, "old"),
        at(t, "feedback", {"interaction_id": "old", "thumbs": -1}, "f-old"),
    ]
    await send(client, tenant, old)
    Enricher(runtime.engine).run()
    rule(
        runtime,
        tenant,
        "rules:\n  - {name: fresh, when: {event: {thumbs: down}}, actions: [{record: {}}]}\n"
        "  - {name: history, when: {event: {thumbs: down}}, backfill: true, "
        "actions: [{record: {tag: h}}]}\n",
    )
    engine = engine_of(runtime)
    engine.run(tenant.project_id)
    assert [(tag, r.snapshot["feedback_id"]) for tag, r, _ in RAN] == [("h", "f-old")]
    await send(
        client, tenant, [at(t, "feedback", {"interaction_id": "old", "thumbs": -1}, "f-new")]
    )
    Enricher(runtime.engine).run()
    engine.run(tenant.project_id)
    assert sorted((tag, r.snapshot["feedback_id"]) for tag, r, _ in RAN[1:]) == [
        ("h", "f-new"),
        ("x", "f-new"),
    ]


async def test_feedback_orphaned_then_joined_late_still_fires(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    from closedloop.enrich.job import EnrichParams

    rule(runtime, tenant, EVENT_RULE)
    engine = engine_of(runtime)
    t = utcnow() - dt.timedelta(minutes=5)
    feedback = {"interaction_id": "late", "thumbs": -1, "correction": "fix"}
    await send(client, tenant, [at(t, "feedback", feedback, "f-orphan")])
    Enricher(runtime.engine, EnrichParams(join_wait_seconds=0)).run()  # orphaned at once
    engine.run(tenant.project_id)  # the cursor moves past it
    body = {"input": "q", "output": "a", "prompt": {"name": "support"}}
    await send(client, tenant, [at(t, "interaction", body, "late")])
    Enricher(runtime.engine, EnrichParams(join_wait_seconds=0)).run()  # joined late
    engine.run(tenant.project_id)
    assert [r.snapshot["feedback_id"] for _, r, _ in RAN] == ["f-orphan"]
    engine.run(tenant.project_id)
    assert len(RAN) == 1  # and once only


async def test_a_firing_whose_run_died_before_its_actions_gets_them_on_the_next_run(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t = utcnow() - dt.timedelta(minutes=5)
    await send(
        client,
        tenant,
        [
            at(t, "interaction", {"input": "q", "output": "a"}, "i1"),
            at(t, "feedback", {"interaction_id": "i1", "thumbs": -1}, "f1"),
        ],
    )
    Enricher(runtime.engine).run()
    rule(
        runtime,
        tenant,
        "rules:\n  - {name: r, when: {event: {thumbs: down}}, backfill: true, "
        "actions: [{record: {}}]}\n",
    )
    engine = engine_of(runtime)

    def die(action: Any, trigger: Trigger, *, dry_run: bool) -> ActionResult:
        raise SystemExit("the process died")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(RuleEngine, "_run_action", staticmethod(die))
        with pytest.raises(SystemExit):
            engine.run(tenant.project_id)
    (firing,) = firings(runtime.engine, tenant.project_id)
    assert firing["pending"] and firing["actions"] == [] and RAN == []  # recorded, not acted on
    engine.run(tenant.project_id)
    (firing,) = firings(runtime.engine, tenant.project_id)
    assert [a["ok"] for a in firing["actions"]] == [True] and not firing["pending"]
    assert len(RAN) == 1 and RAN[0][1].firing_id == firing["id"]


async def test_a_resumed_firing_runs_only_the_actions_without_a_result_and_gives_up(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    t = utcnow() - dt.timedelta(minutes=5)
    await send(
        client,
        tenant,
        [
            at(t, "interaction", {"input": "q", "output": "a"}, "i1"),
            at(t, "feedback", {"interaction_id": "i1", "thumbs": -1}, "f1"),
        ],
    )
    Enricher(runtime.engine).run()
    rule(
        runtime,
        tenant,
        "rules:\n  - {name: r, when: {event: {thumbs: down}}, backfill: true, "
        "actions: [{record: {tag: first}}, {record: {tag: second}}]}\n",
    )
    engine = engine_of(runtime)
    original = RuleEngine._run_action

    def second_dies(action: Any, trigger: Trigger, *, dry_run: bool) -> ActionResult:
        if action.tag == "second":
            raise SystemExit("the process died in the second action")
        return original(action, trigger, dry_run=dry_run)

    for _ in range(3):  # the second action kills its run each time
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(RuleEngine, "_run_action", staticmethod(second_dies))
            with pytest.raises(SystemExit):
                engine.run(tenant.project_id)
    assert [tag for tag, _, _ in RAN] == ["first"]  # never repeated on resumption
    engine.run(tenant.project_id)  # the third death: given up, recorded as failed
    (firing,) = firings(runtime.engine, tenant.project_id)
    assert not firing["pending"]
    assert [(a["ok"], a["summary"][:8]) for a in firing["actions"]] == [
        (True, "recorded"),
        (False, "given up"),
    ]


async def test_a_rule_gone_live_after_a_dry_run_fires_for_real_on_the_same_issue(
    runtime: Runtime, tenant: Tenant
) -> None:
    import json as _json

    from closedloop.store import models

    now = utcnow()
    with runtime.engine.begin() as conn:
        conn.execute(
            models.clusters.insert().values(
                project_id=tenant.project_id,
                kind="issue",
                id=1,
                model="m",
                name="refunds",
                centroid=b"",
                size=5,
                state="open",
                stats=_json.dumps({"impact": 3.0}),
                created_at=now,
                updated_at=now,
                last_seen_at=now,
            )
        )
    text = "rules:\n  - {name: i, when: {issue: open}, dry_run: %s, actions: [{record: {}}]}\n"
    rule(runtime, tenant, text % "true")
    engine = engine_of(runtime)
    engine.run(tenant.project_id)
    rule(runtime, tenant, text % "false")
    engine.run(tenant.project_id)
    assert [dry for _, _, dry in RAN] == [True, False]
    assert [f["dry_run"] for f in firings(runtime.engine, tenant.project_id)] == [False, True]


async def test_rule_routes_name_the_bad_field_and_report_failed_rules(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    bad_by = {
        "when": {"metric": "quality", "by": "modle", "below": 0.5},
        "actions": [{"review": {}}],
    }
    r = await client.put("/v1/rules/r", json=bad_by, headers=tenant.headers())
    assert r.status_code == 400 and r.json()["field"] == "when.by", r.text
    check = await client.post(
        "/v1/rules/check",
        content=b"rules:\n  - name: r\n    when: {metric: quality, by: modle, below: 0.5}\n"
        b"    actions: [{review: {}}]\n",
        headers={**tenant.headers(), "content-type": "application/yaml"},
    )
    assert check.json()["valid"] is False and check.json()["problems"][0]["line"] == 3
    good = {"when": {"drift": "any"}, "actions": [{"review": {}}]}
    r = await client.put("/v1/rules/ok", json=good, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["created_at"].endswith("+00:00")  # aware on both backends
    # a rule whose stored action kind is gone fails alone: the answer names it, not a 500
    with runtime.engine.begin() as conn:
        conn.exec_driver_sql(
            "UPDATE rules SET spec = replace(spec, '\"review\"', '\"gone\"') WHERE name = 'ok'"
        )
    ran = await client.post("/v1/act", headers=tenant.headers())
    assert ran.status_code == 200 and "ok" in ran.json()["errors"][0]


async def test_a_rule_changed_to_another_stream_starts_at_that_streams_head(
    runtime: Runtime, tenant: Tenant
) -> None:
    from closedloop.analyze.quality_drift import store_alarm

    now = utcnow()
    with runtime.engine.begin() as conn:
        store_alarm(
            conn,
            project_id=tenant.project_id,
            kind="quality",
            segment="all",
            measure="thumbs",
            since=now - dt.timedelta(hours=1),
            detected_at=now - dt.timedelta(minutes=30),
            before={},
            after={},
            details={},
        )
    engine = engine_of(runtime)
    rule(
        runtime,
        tenant,
        "rules:\n  - {name: r, when: {event: {thumbs: down}}, actions: [{record: {}}]}\n",
    )
    engine.run(tenant.project_id)
    rule(runtime, tenant, "rules:\n  - {name: r, when: {drift: any}, actions: [{record: {}}]}\n")
    engine.run(tenant.project_id)
    assert RAN == []  # the alarm stored before the rule became a drift rule is not replayed
    (stored,) = [r for r in list_rules(runtime.engine, tenant.project_id)]
    evaluation = engine.evaluate(stored)
    assert [t["held"][:10] for t in evaluation.triggers] == ["before the"]
