"""The prompt registry, candidates from corrections, the A/B evaluator and the prompt routes,
on SQLite and PostgreSQL.

Issues are made by hand here: one ``clusters`` row (kind ``issue``) and its
``cluster_members`` rows, as the analyzer writes them (``cluster_id`` = the issue's id,
``ref_id`` = the interaction's id), so the test does not depend on clustering choices.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from closedloop import make_event
from closedloop.act import ab
from closedloop.act import prompts as registry
from closedloop.act.actions import Trigger
from closedloop.act.candidates import PromptCandidateAction, PromptCandidateParams, build_candidate
from closedloop.act.effect import Scope, baseline, effect_report
from closedloop.errors import ConfigError, NotFound
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utcnow
from tests.conftest import Tenant


async def post(client: httpx.AsyncClient, tenant: Tenant, *events: dict[str, Any]) -> None:
    r = await client.post("/v1/events", json={"events": list(events)}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert all(x["status"] == "stored" for x in r.json()["results"]), r.text


def interaction(iid: str, text: str, version: str, **extra: Any) -> dict[str, Any]:
    body = {"input": text, "output": "a", "prompt": {"name": "support", "version": version}}
    return make_event("interaction", {**body, **extra}, id=iid)


def feedback(fid: str, iid: str, *, seconds: float = 0, **body: Any) -> dict[str, Any]:
    when = utcnow() + dt.timedelta(seconds=seconds)
    return make_event("feedback", {"interaction_id": iid, **body}, id=fid, timestamp=when)


def make_issue(runtime: Runtime, project_id: int, issue_id: int, members: list[str]) -> None:
    now = utcnow()
    with runtime.engine.begin() as conn:
        conn.execute(
            models.clusters.insert().values(
                project_id=project_id,
                kind="issue",
                id=issue_id,
                model="lexical",
                name="wrong refund policy",
                centroid=b"\x00" * 8,
                size=len(members),
                state="open",
                created_at=now,
                updated_at=now,
                last_seen_at=now,
            )
        )
        for ref in members:
            conn.execute(
                models.cluster_members.insert().values(
                    project_id=project_id,
                    kind="issue",
                    ref_id=ref,
                    cluster_id=issue_id,
                    ts=now,
                    assigned_at=now,
                )
            )


def test_versions_and_labels(runtime: Runtime, tenant: Tenant) -> None:
    engine, pid = runtime.engine, tenant.project_id
    first = registry.create_version(engine, pid, "support", "You help. {q}")
    second = registry.create_version(engine, pid, "support", "You help well. {q}", label="staging")
    assert (first.version, second.version) == (1, 2)
    assert registry.labels(engine, pid, "support") == {"production": 1, "staging": 2}
    assert registry.get(engine, pid, "support").template == "You help. {q}"
    registry.set_label(engine, pid, "support", "production", 2)
    assert registry.get(engine, pid, "support").version == 2
    assert registry.resolve(engine, pid, "support").to_json()["production"]["version"] == "2"
    assert [v.version for v in registry.versions(engine, pid, "support")] == [1, 2]
    with pytest.raises(ConfigError) as bad_name:
        registry.create_version(engine, pid, "no spaces", "t")
    assert bad_name.value.field == "name"
    with pytest.raises(ConfigError) as bad_label:
        registry.set_label(engine, pid, "support", "Prod!", 1)
    assert bad_label.value.field == "label"
    with pytest.raises(NotFound):
        registry.set_label(engine, pid, "support", "production", 9)
    with pytest.raises(NotFound):
        registry.get(engine, pid + 1, "support")  # another project's prompt


async def test_a_candidate_learns_the_issue_corrections(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    engine, pid = runtime.engine, tenant.project_id
    registry.create_version(
        engine, pid, "support", "Answer: {q}", examples=[{"input": "hi", "output": "Hello!"}]
    )
    await post(
        client,
        tenant,
        interaction("i-1", "refund after 40 days?", "1"),
        interaction("i-2", "refund without receipt?", "1"),
        interaction("i-3", "opening hours?", "1"),
        feedback("f-1", "i-1", correction="Refunds are possible within 30 days."),
        feedback("f-1b", "i-1", seconds=1, correction="No: refunds only within 30 days."),
        feedback("f-2", "i-2", seconds=2, correction="A receipt is required."),
        feedback("f-3", "i-3", seconds=3, correction="See the hours page."),
    )
    runtime.enricher.run()
    make_issue(runtime, pid, 7, ["i-1", "i-2"])

    built = build_candidate(engine, pid, "support", issue_id=7)
    assert list(built.examples) == [
        {"input": "refund without receipt?", "output": "A receipt is required."}
        | {"interaction_id": "i-2", "feedback_id": "f-2"},
        {"input": "refund after 40 days?", "output": "No: refunds only within 30 days."}
        | {"interaction_id": "i-1", "feedback_id": "f-1b"},
        {"input": "hi", "output": "Hello!"},
    ], "latest correction per interaction, newest first, then production's examples"
    assert (built.source, built.parent_version, built.template) == ("candidate", 1, "Answer: {q}")
    assert registry.labels(engine, pid, "support") == {"production": 1, "candidate": 2}
    with pytest.raises(ConfigError, match="no corrections"):
        build_candidate(engine, pid, "support", issue_id=99)

    action = PromptCandidateAction(
        PromptCandidateParams(share=0.9, max_examples=2), runtime.act_context()
    )
    trigger = Trigger(
        project_id=pid,
        rule="bad-refunds",
        kind="issue",
        segment="issue=7",
        fired_at=utcnow(),
        issue_id=7,
        prompt="support",
    )
    dry = action.run(trigger, dry_run=True)
    assert dry.ok and len(dry.details["examples"]) == 2
    assert len(registry.versions(engine, pid, "support")) == 2, "a dry run writes nothing"
    done = action.run(trigger)
    assert done.ok, done.summary
    resolved = registry.resolve(engine, pid, "support")
    assert resolved.candidate is not None and resolved.candidate.version == 3
    assert resolved.share == runtime.settings.ab_max_share, "the share is capped"
    assert len(resolved.candidate.examples) == 2
    assert ab.list_tests(engine, pid, "support", state="running")[0]["id"] == resolved.test_id

    # without an issue: the corrections of the prompt's negatively rated interactions
    on_segment = Trigger(**{**trigger.__dict__, "issue_id": None, "prompt": None})
    on_segment = Trigger(**{**on_segment.__dict__, "segment": "prompt=support@1"})
    outputs = [e["output"] for e in action.run(on_segment, dry_run=True).details["examples"]]
    assert outputs == ["See the hours page.", "A receipt is required."]

    none = action.run(Trigger(**{**trigger.__dict__, "issue_id": 99}))
    assert not none.ok and "no corrections" in none.summary
    missing = PromptCandidateAction(PromptCandidateParams(prompt="nope"), runtime.act_context())
    assert "no production version" in missing.run(trigger).summary


async def _corrected_support(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> Trigger:
    """Prompt ``support`` v1 with one corrected thumbs-down, and a rule's trigger on it."""
    registry.create_version(runtime.engine, tenant.project_id, "support", "Answer: {q}")
    await post(
        client,
        tenant,
        interaction("i-1", "refund after 40 days?", "1"),
        feedback("f-1", "i-1", thumbs=-1, correction="Refunds only within 30 days."),
    )
    runtime.enricher.run()
    return Trigger(
        project_id=tenant.project_id,
        rule="corrections-to-prompt",
        kind="event",
        segment="prompt=support@1",
        fired_at=utcnow(),
        prompt="support",
    )


async def test_a_candidate_action_leaves_a_running_test_to_decide_unless_told_to_replace_it(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    engine, pid = runtime.engine, tenant.project_id
    trigger = await _corrected_support(client, runtime, tenant)

    def action(**params: Any) -> PromptCandidateAction:
        return PromptCandidateAction(PromptCandidateParams(**params), runtime.act_context())

    first = action(share=0.5, max_samples=500, max_days=14).run(trigger)
    assert first.ok, first.summary
    (test,) = ab.list_tests(engine, pid, "support")
    assert (test["params"]["max_samples"], test["params"]["max_days"]) == (500, 14)

    kept = action(share=0.5).run(trigger)
    assert kept.ok and kept.details["running_test_id"] == test["id"], kept.summary
    assert "left to decide" in kept.summary
    assert len(registry.versions(engine, pid, "support")) == 2, "no candidate was built"
    assert [t["state"] for t in ab.list_tests(engine, pid, "support")] == ["running"]

    replaced = action(share=0.5, replace_running=True).run(trigger)
    assert replaced.ok, replaced.summary
    states = [(t["candidate_version"], t["state"]) for t in ab.list_tests(engine, pid, "support")]
    assert states == [(3, "running"), (2, "stopped")]


async def test_a_candidate_action_whose_max_samples_the_settings_refuse_builds_nothing(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    engine, pid = runtime.engine, tenant.project_id
    trigger = await _corrected_support(client, runtime, tenant)
    least = runtime.settings.ab_min_samples

    def action(max_samples: int) -> PromptCandidateAction:
        params = PromptCandidateParams(max_samples=max_samples)
        return PromptCandidateAction(params, runtime.act_context())

    dry = action(least - 1).run(trigger, dry_run=True)
    assert not dry.ok and "max_samples must be >= min_samples" in dry.summary, dry.summary
    assert f"CLOSEDLOOP_AB_MIN_SAMPLES is {least}" in dry.summary
    for _ in range(2):  # every firing fails the same way, leaving nothing behind
        done = action(least - 1).run(trigger)
        assert not done.ok and done.summary == dry.summary
    assert [v.version for v in registry.versions(engine, pid, "support")] == [1]
    assert ab.list_tests(engine, pid, "support") == []
    assert registry.labels(engine, pid, "support") == {"production": 1}

    fine = action(least).run(trigger)
    assert fine.ok, fine.summary
    (test,) = ab.list_tests(engine, pid, "support")
    assert test["params"]["max_samples"] == least


@pytest.mark.parametrize(
    ("better", "state", "production"), [(True, "promoted", 2), (False, "rolled_back", 1)]
)
async def test_the_evaluator_decides_on_rated_interactions(
    client: httpx.AsyncClient,
    runtime: Runtime,
    tenant: Tenant,
    better: bool,
    state: str,
    production: int,
) -> None:
    engine, pid = runtime.engine, tenant.project_id
    settings = runtime.settings.with_overrides(ab_min_samples=20)
    registry.create_version(engine, pid, "support", "v1 {q}")
    registry.create_version(engine, pid, "support", "v2 {q}")
    early = []
    for n in range(10):  # rated, but received before the test started
        early += [interaction(f"e-{n}", f"q{n}", "2"), feedback(f"fe-{n}", f"e-{n}", thumbs=1)]
    await post(client, tenant, *early)
    test = ab.start_test(engine, pid, "support", 2, share=0.5, settings=settings)
    good, bad = ("2", "1") if better else ("1", "2")
    events = []
    for n in range(60):
        events.append(interaction(f"g-{n}", f"q{n}", good))
        events.append(feedback(f"fg-{n}", f"g-{n}", thumbs=-1 if n % 20 == 0 else 1))
        events.append(interaction(f"b-{n}", f"q{n}", bad))
        events.append(feedback(f"fb-{n}", f"b-{n}", thumbs=1 if n % 5 < 2 else -1))
    for n in range(30):  # unrated: the prior alone is no evidence
        events.append(interaction(f"u-{n}", f"q{n}", "2"))
    await post(client, tenant, *events)
    runtime.enricher.run()

    stats = ab.ABEvaluator(engine, settings).run(pid)
    assert stats.tests == 1
    (after,) = ab.list_tests(engine, pid, "support")
    assert after["id"] == test["id"] and after["state"] == state
    evidence = after["evidence"]
    assert evidence["arms"]["candidate"]["n"] == 60 and evidence["arms"]["control"]["n"] == 60
    assert evidence["p_value"] <= settings.ab_alpha
    assert registry.labels(engine, pid, "support") == {"production": production}
    assert registry.resolve(engine, pid, "support").candidate is None
    assert ab.ABEvaluator(engine, settings).run(pid).tests == 0, "an ended test stays ended"


async def test_a_test_counts_the_interactions_received_since_it_started_whatever_their_ts(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    # an event's ts is the client's clock (skewed, replayed, or a simulation's virtual day):
    # what was served under the test is what arrived after it started
    engine, pid = runtime.engine, tenant.project_id
    registry.create_version(engine, pid, "support", "v1 {q}")
    registry.create_version(engine, pid, "support", "v2 {q}")
    later = (utcnow() + dt.timedelta(hours=12)).isoformat()
    await post(  # received before the start, though stamped after it
        client,
        tenant,
        *[
            e
            for n in range(4)
            for e in (
                {**interaction(f"r-{n}", f"q{n}", "2"), "timestamp": later},
                feedback(f"fr-{n}", f"r-{n}", thumbs=1),
            )
        ],
    )
    test = ab.start_test(engine, pid, "support", 2, share=0.5, settings=runtime.settings)
    stamped = dt.datetime.fromisoformat(test["started_at"]) - dt.timedelta(days=3)
    await post(  # received after the start, though stamped three days before it
        client,
        tenant,
        *[
            e
            for n in range(3)
            for version in ("1", "2")
            for e in (
                {
                    **interaction(f"s{version}-{n}", f"q{n}", version),
                    "timestamp": stamped.isoformat(),
                },
                make_event(
                    "feedback",
                    {"interaction_id": f"s{version}-{n}", "thumbs": 1},
                    id=f"fs{version}-{n}",
                    timestamp=stamped + dt.timedelta(seconds=5),
                ),
            )
        ],
    )
    runtime.enricher.run()
    ab.ABEvaluator(engine, runtime.settings).run(pid)
    (after,) = ab.list_tests(engine, pid, "support")
    assert after["evidence"]["arms"]["candidate"]["n"] == 3, "only those received after"
    assert after["evidence"]["arms"]["control"]["n"] == 3


@pytest.mark.parametrize("measure", ["quality", "positive_rate", "rating"])
async def test_the_effect_report_counts_the_arms_by_arrival_as_the_test_does(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, measure: str
) -> None:
    engine, pid = runtime.engine, tenant.project_id
    registry.create_version(engine, pid, "support", "v1 {q}")
    registry.create_version(engine, pid, "support", "v2 {q}")
    later = (utcnow() + dt.timedelta(hours=12)).isoformat()
    await post(  # received before the start, though stamped after it: counted by neither
        client,
        tenant,
        *[
            e
            for n in range(4)
            for e in (
                {**interaction(f"r-{n}", f"q{n}", "2"), "timestamp": later},
                feedback(f"fr-{n}", f"r-{n}", thumbs=1, rating=5),
            )
        ],
    )
    fired_at = utcnow()
    scope = Scope(measure=measure, by="prompt", value="support@1", window=3600.0)
    with engine.begin() as conn:
        firing_id = conn.execute(
            models.firings.insert()
            .values(
                project_id=pid,
                rule_id=1,
                rule_name="weak-prompt",
                dedup_key="metric|prompt=support@1",
                segment="prompt=support@1",
                fired_at=fired_at,
                dry_run=False,
                baseline=json.dumps(baseline(runtime.analytics(), engine, pid, scope, fired_at)),
            )
            .returning(models.firings.c.id)
        ).scalar_one()
    test = ab.start_test(
        engine, pid, "support", 2, share=0.5, firing_id=firing_id, settings=runtime.settings
    )
    stamped = dt.datetime.fromisoformat(test["started_at"]) - dt.timedelta(days=3)
    up = {"1": [1, -1, -1], "2": [1, 1, 1]}
    await post(  # received after the start, though stamped three days before it: counted
        client,
        tenant,
        *[
            e
            for version in ("1", "2")
            for n, thumbs in enumerate(up[version])
            for e in (
                {
                    **interaction(f"s{version}-{n}", f"q{n}", version),
                    "timestamp": stamped.isoformat(),
                },
                make_event(
                    "feedback",
                    {
                        "interaction_id": f"s{version}-{n}",
                        "thumbs": thumbs,
                        "rating": 5 if thumbs > 0 else 1,
                    },
                    id=f"fs{version}-{n}",
                    timestamp=stamped + dt.timedelta(seconds=5),
                ),
            )
        ],
    )
    runtime.enricher.run()
    ab.ABEvaluator(engine, runtime.settings).run(pid)
    (after,) = ab.list_tests(engine, pid, "support")
    evidence = after["evidence"]["arms"]
    (row,) = effect_report(engine, runtime.analytics(), pid)
    assert row["method"] == "ab_holdout", row
    arms = row["ab"]
    assert arms["test_id"] == test["id"]
    assert arms["candidate"]["n"] == evidence["candidate"]["n"] == 3
    assert arms["control"]["n"] == evidence["control"]["n"] == 3
    if measure != "quality":  # the latest thumbs, or the rating scaled to [0, 1]
        assert arms["candidate"]["value"] == pytest.approx(1.0)
        assert arms["control"]["value"] == pytest.approx(1 / 3)
        assert row["effect"] == pytest.approx(2 / 3)


async def test_too_few_ratings_keep_the_test_running_with_its_evidence(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    engine, pid = runtime.engine, tenant.project_id
    registry.create_version(engine, pid, "support", "v1 {q}")
    registry.create_version(engine, pid, "support", "v2 {q}")
    ab.start_test(engine, pid, "support", 2, share=0.2, settings=runtime.settings)
    await post(
        client,
        tenant,
        interaction("i-1", "q", "2"),
        feedback("f-1", "i-1", thumbs=1),
    )
    runtime.enricher.run()
    ab.ABEvaluator(engine, runtime.settings).run()
    (test,) = ab.list_tests(engine, pid, "support")
    assert test["state"] == "running" and test["evidence"]["decision"] == "continue"
    assert test["evidence"]["arms"]["candidate"]["n"] == 1
    # a newer test of the same prompt stops this one
    registry.create_version(engine, pid, "support", "v3 {q}")
    ab.start_test(engine, pid, "support", 3, share=0.2, settings=runtime.settings)
    states = [t["state"] for t in ab.list_tests(engine, pid, "support")]
    assert states == ["running", "stopped"]
    with pytest.raises(ConfigError) as too_much:
        ab.start_test(engine, pid, "support", 3, share=0.9, settings=runtime.settings)
    assert too_much.value.field == "share"


async def test_the_routes(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    h, public = tenant.headers(), tenant.headers("public")
    r = await client.post("/v1/prompts", json={"name": "support", "template": "t {q}"}, headers=h)
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 1 and r.json()["labels"] == {"production": 1}
    no = await client.post("/v1/prompts", json={"name": "x", "template": "t"}, headers=public)
    assert no.status_code == 401, "the public key may not write prompts"
    bad = await client.post("/v1/prompts", json={"name": "bad name", "template": "t"}, headers=h)
    assert bad.status_code == 400 and bad.json()["field"] == "name"
    missing = await client.post("/v1/prompts", json={"name": "x"}, headers=h)
    assert missing.status_code == 400 and missing.json()["field"] == "template"

    resolved = await client.get("/v1/prompts/support/resolve", headers=public)
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["production"]["version"] == "1" and resolved.json()["test"] is None

    await post(
        client,
        tenant,
        interaction("i-1", "refund?", "1"),
        feedback("f-1", "i-1", thumbs=-1, correction="Within 30 days."),
    )
    runtime.enricher.run()
    too_much = await client.post("/v1/prompts/support/candidates", json={"share": 0.9}, headers=h)
    assert too_much.status_code == 400 and too_much.json()["field"] == "share"
    made = await client.post("/v1/prompts/support/candidates", json={"share": 0.3}, headers=h)
    assert made.status_code == 201, made.text
    test_id = made.json()["test"]["id"]
    assert made.json()["candidate"]["examples"] == [
        {"input": "refund?", "output": "Within 30 days.", "interaction_id": "i-1"}
        | {"feedback_id": "f-1"}
    ], "the secret-key view shows where an example came from; apps are not served it"
    body = (await client.get("/v1/prompts/support/resolve", headers=public)).json()
    assert body["test"] == {
        "id": test_id,
        "share": 0.3,
        "candidate": {
            "version": "2",
            "template": "t {q}",
            "examples": [{"input": "refund?", "output": "Within 30 days."}],
            "config": {},
        },
    }

    listed = (await client.get("/v1/prompts", headers=h)).json()["prompts"]
    assert listed == [
        {"name": "support", "latest_version": 2, "labels": {"production": 1, "candidate": 2}}
    ]
    label = await client.post(
        "/v1/prompts/support/labels", json={"label": "Bad!", "version": 1}, headers=h
    )
    assert label.status_code == 400 and label.json()["field"] == "label"
    label = await client.post(
        "/v1/prompts/support/labels", json={"label": "staging", "version": 2}, headers=h
    )
    assert label.json()["labels"]["staging"] == 2

    other = other_tenant.headers()
    for path in ("/v1/prompts/support", "/v1/prompts/support/resolve"):
        assert (await client.get(path, headers=other)).status_code == 404
    cross = await client.post(f"/v1/prompts/support/tests/{test_id}/promote", headers=other)
    assert cross.status_code == 404
    assert (await client.get("/v1/prompts", headers=other)).json() == {"prompts": []}

    promoted = await client.post(f"/v1/prompts/support/tests/{test_id}/promote", headers=h)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["labels"] == {"production": 2, "staging": 2}
    shown = (await client.get("/v1/prompts/support", headers=h)).json()
    assert [t["state"] for t in shown["tests"]] == ["promoted"]
    assert [v["source"] for v in shown["versions"]] == ["manual", "candidate"]
    again = await client.post(f"/v1/prompts/support/tests/{test_id}/rollback", headers=h)
    assert again.status_code == 400 and again.json()["field"] == "id"


def test_the_cli(
    runtime: Runtime, tenant: Tenant, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from closedloop.cli import app

    monkeypatch.setenv("CLOSEDLOOP_DATA_DIR", str(runtime.settings.data_dir))
    monkeypatch.setenv("CLOSEDLOOP_DATABASE_URL", runtime.settings.resolved_database_url())
    template = tmp_path / "t.txt"
    template.write_text("Be kind. {q}")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, ["prompts", *args])
        assert result.exit_code == 0, result.output
        return result.output

    assert "v1 stored" in run(
        "create", "support", "--project", "acme", "--template-file", str(template)
    )
    assert "v2 stored" in run("create", "support", "--project", "acme", "--template", "B {q}")
    assert "production=v1" in run("list", "--project", "acme")
    run("label", "support", "production", "2", "--project", "acme")
    assert registry.get(runtime.engine, tenant.project_id, "support").version == 2
    failed = runner.invoke(
        app, ["prompts", "candidate", "support", "--project", "acme", "--share", "0.9"]
    )
    assert failed.exit_code == 1 and "--share" in failed.output
    failed = runner.invoke(app, ["prompts", "candidate", "support", "--project", "acme"])
    assert failed.exit_code == 1 and "no corrections" in failed.output
    ab.start_test(
        runtime.engine, tenant.project_id, "support", 1, share=0.2, settings=runtime.settings
    )
    assert "1 tests evaluated" in run("evaluate", "--project", "acme")
    assert "rolled_back" in run("rollback", "support", "--project", "acme")
    assert '"state": "rolled_back"' in run("show", "support", "--project", "acme", "--json")


def test_embedded_clients_are_served_through_the_database(
    runtime: Runtime, tenant: Tenant, database_url: str, tmp_path: Path
) -> None:
    from closedloop.sdk.client import Client

    registry.create_version(runtime.engine, tenant.project_id, "support", "stored {q}")
    client = Client(
        database_url=database_url,
        project="acme",
        embedded_settings={"data_dir": tmp_path / "embedded", "run_worker": False},
    )
    try:
        deadline = time.monotonic() + 30
        served = client.get_prompt("support", fallback="fallback {q}")
        while served.variant == "fallback" and time.monotonic() < deadline:
            time.sleep(0.05)
            served = client.get_prompt("support", fallback="fallback {q}")
        assert (served.variant, served.version, served.template) == (
            "production",
            "1",
            "stored {q}",
        )
    finally:
        client.close()


async def test_an_issue_candidate_learns_only_the_corrections_of_its_prompt(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    engine, pid = runtime.engine, tenant.project_id
    registry.create_version(engine, pid, "support", "Support: {q}")
    registry.create_version(engine, pid, "sales", "Sales: {q}")
    sales = {"prompt": {"name": "sales", "version": "1"}}
    await post(
        client,
        tenant,
        interaction("i-1", "refund?", "1"),
        interaction("s-1", "discount?", "1", **sales),
        feedback("f-1", "i-1", correction="Within 30 days."),
        feedback("f-s", "s-1", seconds=1, correction="No discounts."),
    )
    runtime.enricher.run()
    make_issue(runtime, pid, 7, ["i-1", "s-1"])  # one issue covering both prompts
    built = build_candidate(engine, pid, "support", issue_id=7)
    assert [e["output"] for e in built.examples] == ["Within 30 days."], "no sales correction"
    built = build_candidate(engine, pid, "sales", issue_id=7)
    assert [e["output"] for e in built.examples] == ["No discounts."]


async def test_examples_keep_their_sources_for_erasure_but_apps_never_see_them(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    engine, pid = runtime.engine, tenant.project_id
    manual = {"input": "hi", "output": "Hello!"}
    registry.create_version(engine, pid, "support", "Answer: {q}", examples=[manual])
    registry.create_version(engine, other_tenant.project_id, "support", "Other: {q}")
    await post(
        client,
        tenant,
        interaction("i-1", "refund?", "1"),
        interaction("i-2", "receipt?", "1"),
        feedback("f-1", "i-1", correction="Within 30 days."),
        feedback("f-2", "i-2", seconds=1, correction="A receipt is required."),
    )
    runtime.enricher.run()
    make_issue(runtime, pid, 7, ["i-1", "i-2"])
    action = PromptCandidateAction(PromptCandidateParams(), runtime.act_context())
    trigger = Trigger(
        project_id=pid,
        rule="bad-refunds",
        kind="issue",
        segment="issue=7",
        fired_at=utcnow(),
        issue_id=7,
        prompt="support",
    )
    done = action.run(trigger)
    assert done.ok, done.summary
    learned = [
        {"input": "receipt?", "output": "A receipt is required.", "interaction_id": "i-2"}
        | {"feedback_id": "f-2"},
        {"input": "refund?", "output": "Within 30 days.", "interaction_id": "i-1"}
        | {"feedback_id": "f-1"},
    ]
    assert done.details["examples"] == learned
    stored = registry.get(engine, pid, "support", label="candidate")
    assert list(stored.examples) == [*learned, manual]

    served = [{"input": e["input"], "output": e["output"]} for e in [*learned, manual]]
    resolved = registry.resolve(engine, pid, "support")
    assert resolved.candidate is not None and list(resolved.candidate.examples) == served
    assert resolved.to_json()["test"]["candidate"]["examples"] == served
    assert stored.served()["examples"] == served
    r = await client.get("/v1/prompts/support/resolve", headers=tenant.headers("public"))
    assert r.json()["test"]["candidate"]["examples"] == served
    r = await client.get("/v1/prompts/support/resolve?label=candidate", headers=tenant.headers())
    assert r.json()["production"]["examples"] == served

    # erasure of the user behind i-1: its example leaves every version, the others stay
    ab.promote(engine, pid, "support")
    registry.create_version(engine, pid, "support", "Copy: {q}", examples=stored.examples)
    with engine.begin() as conn:
        assert registry.forget_examples(conn, pid, {"i-1", "unknown"}) == 2
    by_version = {v.version: list(v.examples) for v in registry.versions(engine, pid, "support")}
    assert by_version == {1: [manual], 2: [learned[0], manual], 3: [learned[0], manual]}
    with engine.begin() as conn:
        assert registry.forget_examples(conn, pid, {"i-1"}) == 0, "already gone"
        assert registry.forget_examples(conn, pid, []) == 0
        assert registry.forget_examples(conn, other_tenant.project_id, {"i-2"}) == 0
    assert len(registry.get(engine, pid, "support", version=2).examples) == 2


def test_a_crash_while_promoting_leaves_the_test_running(
    runtime: Runtime, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine, pid = runtime.engine, tenant.project_id
    registry.create_version(engine, pid, "support", "v1 {q}")
    registry.create_version(engine, pid, "support", "v2 {q}")
    test = ab.start_test(engine, pid, "support", 2, share=0.2, settings=runtime.settings)

    def crash(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the process died while moving the label")

    monkeypatch.setattr(registry, "_put_label", crash)
    with pytest.raises(RuntimeError):
        ab.promote(engine, pid, "support")
    monkeypatch.undo()
    (after,) = ab.list_tests(engine, pid, "support")
    assert after["state"] == "running", "the state change rolled back with the label move"
    assert registry.labels(engine, pid, "support") == {"production": 1, "candidate": 2}
    promoted = ab.promote(engine, pid, "support", test_id=test["id"])
    assert promoted["state"] == "promoted"
    assert registry.labels(engine, pid, "support") == {"production": 2}


async def test_moving_production_by_hand_stops_the_running_test(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    engine, pid = runtime.engine, tenant.project_id
    for n in (1, 2, 3, 4):
        registry.create_version(engine, pid, "support", f"v{n} {{q}}")
    registry.create_version(engine, pid, "other", "o {q}")
    registry.create_version(engine, pid, "other", "o2 {q}")
    first = ab.start_test(engine, pid, "support", 2, share=0.2, settings=runtime.settings)
    untouched = ab.start_test(engine, pid, "other", 2, share=0.2, settings=runtime.settings)
    registry.set_label(engine, pid, "support", "production", 1)  # not a move: it stays
    registry.set_label(engine, pid, "support", "staging", 3)  # not production: it stays
    assert [t["state"] for t in ab.list_tests(engine, pid, "support")] == ["running"]

    registry.set_label(engine, pid, "support", "production", 3)
    (stopped,) = ab.list_tests(engine, pid, "support")
    assert stopped["id"] == first["id"] and stopped["state"] == "stopped"
    assert stopped["ended_at"] is not None
    assert "production moved by hand from v1 to v3" in stopped["evidence"]["stopped_because"]
    assert registry.labels(engine, pid, "support") == {"production": 3, "staging": 3}
    assert registry.resolve(engine, pid, "support").candidate is None
    assert ab.ABEvaluator(engine, runtime.settings).run(pid).tests == 1, "only the other test"
    assert ab.list_tests(engine, pid, "other")[0]["id"] == untouched["id"]
    assert ab.list_tests(engine, pid, "other")[0]["state"] == "running"

    # through the route
    second = ab.start_test(engine, pid, "support", 4, share=0.2, settings=runtime.settings)
    r = await client.post(
        "/v1/prompts/support/labels",
        json={"label": "production", "version": 1},
        headers=tenant.headers(),
    )
    assert r.status_code == 200, r.text
    assert r.json()["labels"] == {"production": 1, "staging": 3}
    latest = ab.list_tests(engine, pid, "support")[0]
    assert latest["id"] == second["id"] and latest["state"] == "stopped"
    assert "from v3 to v1" in latest["evidence"]["stopped_because"]
