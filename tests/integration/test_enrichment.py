"""Enrichment on the real store (SQLite and PostgreSQL): joins and late arrival, orphans with
their reasons, measures and quality stored with the interaction, session aggregates, and the
per-project PII policy on the ingest path."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import Any

import httpx
import sqlalchemy as sa
from prometheus_client import generate_latest

from closedloop import make_event
from closedloop.enrich.job import Enricher, EnrichParams
from closedloop.enrich.measures import edit_similarity
from closedloop.enrich.privacy import pseudonym
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utcnow
from tests.conftest import Tenant

T0 = utcnow().replace(microsecond=0) - dt.timedelta(hours=3)


def at(seconds: float) -> str:
    return (T0 + dt.timedelta(seconds=seconds)).isoformat()


def event(kind: str, body: dict[str, Any], id: str, seconds: float) -> dict[str, Any]:
    e = make_event(kind, body, id=id)  # type: ignore[arg-type]
    e["timestamp"] = at(seconds)
    return e


async def post(client: httpx.AsyncClient, tenant: Tenant, *events: dict[str, Any]) -> None:
    r = await client.post("/v1/events", json={"events": list(events)}, headers=tenant.headers())
    assert r.status_code == 200, r.text


async def get(client: httpx.AsyncClient, tenant: Tenant, path: str) -> Any:
    r = await client.get(path, headers=tenant.headers())
    assert r.status_code == 200, r.text
    return r.json()


def later(hours: float) -> dt.datetime:
    return utcnow() + dt.timedelta(hours=hours)


def metric(runtime: Runtime, line_start: str) -> float:
    text = generate_latest(runtime.metrics.registry).decode()
    values = [float(x.rsplit(" ", 1)[1]) for x in text.splitlines() if x.startswith(line_start)]
    return sum(values)


async def test_feedback_that_arrives_first_waits_and_joins_its_interaction(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await post(client, tenant, event("feedback", {"interaction_id": "i-1", "thumbs": -1}, "f", 5))
    runtime.enricher.run()
    fb = await get(client, tenant, "/v1/feedback/f")
    assert fb["join"] == {"state": "pending", "reason": None}, "it waits, it is not dropped"
    status = await get(client, tenant, "/v1/enrichment")
    assert status["feedback"] == {"pending": 1, "orphaned": {}}

    await post(client, tenant, event("interaction", {"input": "q", "output": "a"}, "i-1", 0))
    stats = runtime.enricher.run()
    assert (stats.joined, stats.orphaned, stats.interactions) == (1, 0, 1)
    got = await get(client, tenant, "/v1/interactions/i-1")
    assert got["quality"]["value"] == 0.0 and got["quality"]["basis"] == "explicit"
    assert [e["name"] for e in got["quality"]["evidence"]] == ["thumbs"]
    assert got["feedback"][0]["join"] == {"state": "joined", "reason": None}
    assert (await get(client, tenant, "/v1/enrichment"))["feedback"]["pending"] == 0
    joined = await get(client, tenant, "/v1/feedback/f")
    assert joined["interaction"]["quality"] == {"value": 0.0, "basis": "explicit"}


async def test_feedback_reads_back_with_its_interaction_context(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    body = {
        "input": "q",
        "session_id": "s-1",
        "user_id": "u-1",
        "model": {"name": "m", "version": "2", "provider": "p"},
        "prompt": {"name": "support", "version": "4"},
        "metadata": {"plan": "pro"},
    }
    await post(
        client,
        tenant,
        event("interaction", body, "i", 0),
        event("feedback", {"interaction_id": "i", "thumbs": 1}, "f", 5),
        event("signal", {"interaction_id": "i", "kind": "copy"}, "s", 6),
        event("feedback", {"interaction_id": "nope", "thumbs": 1}, "f2", 7),
    )
    context = {
        "session_id": "s-1",
        "user_id": "u-1",
        "metadata": {"plan": "pro"},
        "model": {"name": "m", "version": "2", "provider": "p"},
        "prompt": {"name": "support", "version": "4"},
        "timestamp": at(0),
        "quality": None,
    }
    assert (await get(client, tenant, "/v1/feedback/f"))["interaction"] == context
    assert (await get(client, tenant, "/v1/signals/s"))["interaction"] == context
    page = await get(client, tenant, "/v1/feedback")
    assert {x["id"]: x["interaction"] for x in page["data"]} == {"f": context, "f2": None}


async def test_feedback_whose_interaction_never_arrives_is_orphaned_with_a_reason_then_joins_late(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await post(
        client,
        tenant,
        event("feedback", {"interaction_id": "ghost", "rating": 5}, "f", 5),
        event("signal", {"interaction_id": "ghost", "kind": "copy"}, "s", 6),
    )
    runtime.enricher.run(now=later(0.1))  # 6 minutes: still inside the 15-minute wait
    assert (await get(client, tenant, "/v1/feedback/f"))["join"]["state"] == "pending"

    stats = runtime.enricher.run(now=later(1))
    assert stats.orphaned == 2
    assert (await get(client, tenant, "/v1/feedback/f"))["join"] == {
        "state": "orphaned",
        "reason": "interaction_missing",
    }
    status = await get(client, tenant, "/v1/enrichment")
    assert status["feedback"]["orphaned"] == {"interaction_missing": 1}
    assert status["signals"]["orphaned"] == {"interaction_missing": 1}
    gauge = 'closedloop_join_state{reason="interaction_missing",state="orphaned",type="feedback"}'
    assert metric(runtime, gauge) == 1
    assert metric(runtime, "closedloop_enrich_orphaned_total") == 2
    page = await get(client, tenant, "/v1/feedback?orphaned=true")
    assert [f["id"] for f in page["data"]] == ["f"], "an orphan stays listed, never dropped"

    await post(client, tenant, event("interaction", {"input": "q", "output": "a"}, "ghost", 0))
    stats = runtime.enricher.run()
    assert stats.late_joined == 2
    assert metric(runtime, "closedloop_enrich_late_joined_total") == 2
    got = await get(client, tenant, "/v1/interactions/ghost")
    assert got["quality"]["value"] == 1.0, "the rating of 5 counts once it joined"
    assert {s["join"]["state"] for s in got["signals"]} == {"joined"}
    assert (await get(client, tenant, "/v1/enrichment"))["feedback"]["orphaned"] == {}


async def test_an_orphan_whose_interaction_left_the_hot_store_says_so(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await post(client, tenant, event("interaction", {"input": "q"}, "gone", 0))
    with runtime.engine.begin() as conn:  # what tiering to the lake does to the hot row
        conn.execute(models.interactions.delete().where(models.interactions.c.id == "gone"))
    await post(client, tenant, event("feedback", {"interaction_id": "gone", "thumbs": 1}, "f", 5))
    runtime.enricher.run(now=later(1))
    assert (await get(client, tenant, "/v1/feedback/f"))["join"] == {
        "state": "orphaned",
        "reason": "interaction_archived",
    }


async def test_measures_and_quality_are_stored_with_the_interaction(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    output = "Open the settings page, then choose Security and reset your PIN."
    kept = "Open the settings page, then choose Card and reset your PIN."
    await post(
        client,
        tenant,
        event("interaction", {"input": "How do I reset my PIN?", "output": output}, "i", 0),
        event("signal", {"interaction_id": "i", "kind": "edit", "text": kept}, "e", 10),
        event("signal", {"interaction_id": "i", "kind": "click", "rank": 1}, "c", 11),
        event("signal", {"interaction_id": "i", "kind": "dwell", "duration_ms": 12_000}, "d", 12),
    )
    runtime.enricher.run()
    got = await get(client, tenant, "/v1/interactions/i")
    measures = {m["name"]: m for m in got["measures"]}
    assert measures["edit_similarity"]["value"] == edit_similarity(output, kept)
    assert measures["edit_similarity"]["source"] == "derived"
    assert measures["click_reciprocal_rank"]["value"] == 0.5
    assert measures["dwell_seconds"] == {"name": "dwell_seconds", "value": 12.0, "source": "client"}
    assert got["quality"]["basis"] == "implicit"
    assert 0.0 < got["quality"]["value"] < 1.0
    listed = await get(client, tenant, "/v1/interactions")
    assert listed["data"][0]["quality"] == {
        "value": got["quality"]["value"],
        "basis": "implicit",
    }


async def test_sessions_derive_rephrase_and_abandonment_and_keep_aggregates(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    s = {"session_id": "s-1", "user_id": "u-1"}
    await post(
        client,
        tenant,
        event("interaction", {"input": "reset my password", "output": "See docs.", **s}, "a", 0),
        event(
            "interaction",
            {"input": "how can I reset my password", "output": "Click Forgot.", **s},
            "b",
            40,
        ),
    )
    runtime.enricher.run(now=T0 + dt.timedelta(seconds=100))
    session = await get(client, tenant, "/v1/sessions/s-1")
    assert session["turns"] == 2 and session["user_id"] == "u-1"
    assert session["abandoned"] is None, "the window is still open"
    assert session["last_interaction_id"] == "b"
    assert session["interaction_ids"] == ["a", "b"]
    a = await get(client, tenant, "/v1/interactions/a")
    assert [(m["name"], m["source"]) for m in a["measures"]][0] == ("rephrase", "derived")

    runtime.enricher.run(now=T0 + dt.timedelta(hours=1))  # the window has closed
    session = await get(client, tenant, "/v1/sessions/s-1")
    assert (session["abandoned"], session["abandon_source"]) == (True, "derived")
    b = await get(client, tenant, "/v1/interactions/b")
    assert [m["name"] for m in b["measures"]] == ["abandon"]
    status = await get(client, tenant, "/v1/enrichment")
    assert status["sessions"] == {"total": 1, "abandoned": 1}


async def test_a_client_abandon_or_rephrase_is_counted_once_not_again_as_derived(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    s = {"session_id": "s-2"}
    await post(
        client,
        tenant,
        event("interaction", {"input": "cancel my order", "output": "Done.", **s}, "a", 0),
        event("signal", {"interaction_id": "a", "kind": "rephrase"}, "r", 20),
        event("interaction", {"input": "cancel my order please", "output": "Ok.", **s}, "b", 30),
        event("signal", {"interaction_id": "b", "kind": "abandon"}, "x", 35),
    )
    runtime.enricher.run(now=T0 + dt.timedelta(hours=1))
    a = await get(client, tenant, "/v1/interactions/a")
    rephrases = [m for m in a["measures"] if m["name"] == "rephrase"]
    assert rephrases == [{"name": "rephrase", "value": 1.0, "source": "client"}]
    b = await get(client, tenant, "/v1/interactions/b")
    assert [m for m in b["measures"] if m["name"] == "abandon"] == [
        {"name": "abandon", "value": 1.0, "source": "client"}
    ]
    session = await get(client, tenant, "/v1/sessions/s-2")
    assert (session["abandoned"], session["abandon_source"]) == (True, "client")
    assert session["signal_count"] == 2


async def test_a_late_interaction_in_a_session_is_enriched_with_its_neighbours(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    s = {"session_id": "s-3"}
    await post(client, tenant, event("interaction", {"input": "hello there", **s}, "b", 60))
    runtime.enricher.run()
    await post(client, tenant, event("interaction", {"input": "hello there!", **s}, "a", 0))
    runtime.enricher.run()
    a = await get(client, tenant, "/v1/interactions/a")
    assert [m["name"] for m in a["measures"]][:1] == ["rephrase"], "b repeats a, seen in order"
    session = await get(client, tenant, "/v1/sessions/s-3")
    assert session["turns"] == 2 and session["interaction_ids"] == ["a", "b"]


async def test_edit_measures_compare_consistently_redacted_text(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    output = "Write to ana.lopez@example.org and we will reply within a day."
    kept = "Write to ana.lopez@example.org and we reply within two days."
    await post(
        client,
        tenant,
        event("interaction", {"input": "contact?", "output": output}, "i", 0),
        event("signal", {"interaction_id": "i", "kind": "edit", "text": kept}, "e", 5),
    )
    runtime.enricher.run()
    got = await get(client, tenant, "/v1/interactions/i")
    assert "<EMAIL>" in got["output"] and "@" not in got["output"]
    edit = got["signals"][0]["text"]
    assert edit.startswith("Write to <EMAIL>")
    similarity = next(m["value"] for m in got["measures"] if m["name"] == "edit_similarity")
    assert similarity == edit_similarity(got["output"], edit)
    assert abs(similarity - edit_similarity(output, kept)) < 0.05


async def test_a_project_pii_policy_hashes_consistently_and_can_pseudonymise_ids(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    policy = {"modes": {"email": "hash"}, "ids": "hash", "allowlist": ["help@shop.example"]}
    r = await client.put("/v1/project/pii", json=policy, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["modes"] == {"email": "hash"} and r.json()["default_mode"] == "mask"
    text = "I am bob@example.com, copy help@shop.example"
    body = {"input": text, "user_id": "u-42", "session_id": "s-9"}
    await post(client, tenant, event("interaction", body, "i1", 0))
    await post(client, tenant, event("interaction", {"input": "bob@example.com again"}, "i2", 1))
    await post(client, other_tenant, event("interaction", body, "i1", 0))

    one = await get(client, tenant, "/v1/interactions/i1")
    two = await get(client, tenant, "/v1/interactions/i2")
    token = one["input"].split()[2].rstrip(",")
    assert token.startswith("<EMAIL:") and two["input"].startswith(token), "same email, same token"
    assert "help@shop.example" in one["input"], "allowlisted"
    with runtime.engine.connect() as conn:
        secret = conn.execute(
            sa.select(models.projects.c.pii_secret).where(models.projects.c.id == tenant.project_id)
        ).scalar_one()
    assert one["user_id"] == pseudonym(secret, "u-42") != "u-42"
    assert one["session_id"] == pseudonym(secret, "s-9")
    other = await get(client, other_tenant, "/v1/interactions/i1")
    assert other["input"] == "I am <EMAIL>, copy <EMAIL>", "the other project keeps the default"
    assert other["user_id"] == "u-42"

    r = await client.put("/v1/project/pii", json={"enabled": False}, headers=tenant.headers())
    assert r.status_code == 200
    await post(client, tenant, event("interaction", {"input": text}, "i3", 2))
    assert (await get(client, tenant, "/v1/interactions/i3"))["input"] == text


async def test_a_bad_pii_policy_is_refused_naming_the_field_and_changes_nothing(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    for policy, field in (
        ({"modes": {"email": "shred"}}, "modes.email"),
        ({"modes": {"shoe_size": "mask"}}, "modes.shoe_size"),
        ({"entities": ["email", "aura"]}, "entities[1]"),
        ({"ids": "encrypt"}, "ids"),
        ({"colour": "red"}, "colour"),
        ({"allowlist": ["  "]}, "allowlist[0]"),
    ):
        r = await client.put("/v1/project/pii", json=policy, headers=tenant.headers())
        assert r.status_code == 400, (policy, r.text)
        problem = r.json()
        assert r.headers["content-type"] == "application/problem+json"
        assert problem["field"] == field, (policy, problem)
    r = await client.put(
        "/v1/project/pii",
        content=b"{not json",
        headers={**tenant.headers(), "content-type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["field"] == "body"
    current = await get(client, tenant, "/v1/project/pii")
    assert current["enabled"] is True and current["modes"] == {}


async def test_the_stored_body_never_holds_the_raw_value_of_a_default_entity(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    card = "4111 1111 1111 1111"
    await post(
        client,
        tenant,
        event(
            "feedback",
            {"interaction_id": "i", "correction": f"pay with {card}", "metadata": {"n": card}},
            "f",
            0,
        ),
    )
    with runtime.engine.connect() as conn:
        row = conn.execute(sa.select(models.feedback.c.body, models.feedback.c.correction)).one()
    assert card not in row.body and card not in row.correction
    assert json.loads(row.body)["metadata"] == {"n": "<CARD>"}


async def test_an_edit_of_an_empty_output_stores_a_null_ratio_not_invalid_json(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await post(
        client,
        tenant,
        event("interaction", {"input": "write a haiku", "output": ""}, "i", 0),
        event(
            "signal", {"interaction_id": "i", "kind": "edit", "text": "an old silent pond"}, "e", 5
        ),
    )
    runtime.enricher.run()
    got = await get(client, tenant, "/v1/interactions/i")
    measures = {m["name"]: m["value"] for m in got["measures"]}
    assert measures["kept_length_ratio"] is None and measures["edit_similarity"] == 0.0
    with runtime.engine.connect() as conn:
        stored = conn.execute(sa.select(models.interactions.c.enrichment)).scalar_one()
    assert "Infinity" not in stored and json.loads(stored)["measures"]


async def test_a_session_longer_than_the_window_keeps_its_count_and_enriches_every_turn(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    s = {"session_id": "long"}
    await post(
        client,
        tenant,
        *(event("interaction", {"input": f"question {n}", **s}, f"t{n}", n * 10) for n in range(7)),
    )
    await post(
        client,
        tenant,
        event("feedback", {"interaction_id": "t0", "thumbs": 1}, "f-old", 1),
        event("feedback", {"interaction_id": "t6", "thumbs": 1}, "f-new", 61),
        event("signal", {"interaction_id": "t1", "kind": "copy"}, "s-old", 11),
    )
    enricher = Enricher(runtime.engine, EnrichParams(max_session_turns=3))
    stats = enricher.run(now=T0 + dt.timedelta(seconds=100))
    assert stats.interactions == 7, "the 3 recent turns with their session, the rest alone"
    assert stats.joined == 3, "every join is counted, wherever it happened"
    session = await get(client, tenant, "/v1/sessions/long")
    assert session["turns"] == 7 and session["first_ts"] == at(0)
    assert (session["feedback_count"], session["signal_count"]) == (2, 1), "the whole session"
    assert session["interaction_ids"] == [f"t{n}" for n in range(7)]
    assert session["interaction_ids_truncated"] is False
    assert session["last_interaction_id"] == "t6"
    waiting = await get(client, tenant, "/v1/enrichment")
    assert waiting["interactions_waiting"] == 0


async def test_a_time_outside_the_representable_range_is_a_400_not_a_500(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    for params, field in (
        ({"since": "0001-01-01T00:00:00+01:00"}, "since"),
        ({"until": "9999-12-31T23:59:59-01:00"}, "until"),
    ):
        r = await client.get("/v1/interactions", params=params, headers=tenant.headers())
        assert r.status_code == 400, r.text
        assert r.json()["field"] == field
    cursor = base64.urlsafe_b64encode(b'["0001-01-01T00:00:00+01:00", "a"]').decode()
    r = await client.get("/v1/feedback", params={"cursor": cursor}, headers=tenant.headers())
    assert r.status_code == 400 and r.json()["field"] == "cursor"
