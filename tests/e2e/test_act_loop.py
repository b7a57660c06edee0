"""The Act stage end to end: rules fire every built-in action by themselves, in the worker of
a real ``closedloop serve`` and of the SDK's embedded mode. No test calls a run endpoint
(``/v1/act`` and the like): events go in, and the loop closes on its own."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
from standardwebhooks.webhooks import Webhook

import closedloop
from closedloop.act.rules import parse_rules, put_rule
from closedloop.store.db import create_engine
from closedloop.store.projects import Projects
from tests.e2e.act_helpers import (
    FAST_ENV,
    feedback,
    interaction,
    post_events,
    receiver,
    wait_for,
)
from tests.e2e.conftest import MakeServer

PASSWORD_Q = "How do I reset my password?"
PASSWORD_FIX = "Open Settings, then Security, and choose Reset password."
REFUND_Q = "What is your refund policy for damaged items?"
REFUND_FIX = "Damaged items are refunded in full within 30 days."
CANCEL_Q = "How do I cancel my subscription?"
CANCEL_FIX = "Use the Cancel subscription button on the Billing page."

EVENT_RULES = """
rules:
  - name: corrections-loop
    when:
      event: {thumbs: down, correction: true}
    actions:
      - kb_refresh: {}
      - review: {priority: 5}
      - webhook: {endpoint: ops}
"""


def test_an_event_rule_fires_kb_refresh_review_and_a_signed_webhook_by_itself(
    live_servers: MakeServer, database_url: str
) -> None:
    server = live_servers(database_url, env=FAST_ENV)
    keys = server.create_project("acme")
    server.start()
    secret_h, public_h = keys.headers(), keys.headers("public")
    with (
        receiver() as hooks,
        httpx.Client(base_url=server.url, headers=secret_h, timeout=15) as api,
        httpx.Client(base_url=server.url, headers=public_h, timeout=15) as app,
    ):
        made = api.post(
            "/v1/webhooks",
            json={"name": "ops", "url": hooks.url, "allow_private": True},
        )
        assert made.status_code == 201, made.text
        signing_secret = made.json()["secret"]
        applied = api.post(
            "/v1/rules/apply", content=EVENT_RULES, headers={"content-type": "application/yaml"}
        )
        assert applied.status_code == 200, applied.text
        assert applied.json()["applied"] == ["corrections-loop"]

        password, e1 = interaction(PASSWORD_Q, "Click 'forgot password' on the login page.")
        refund, e2 = interaction(REFUND_Q, "We do not refund damaged items.")
        liked, e3 = interaction("Where is my order?", "It ships tomorrow.")
        disliked, e4 = interaction("Can I pay with crypto?", "No.")
        post_events(api, [e1, e2, e3, e4])  # interactions: the secret key (the backend)
        post_events(  # feedback: the public key (the browser)
            app,
            [
                feedback(password, thumbs=-1, correction=PASSWORD_FIX),
                feedback(refund, thumbs=-1, correction=REFUND_FIX),
                feedback(liked, thumbs=1, correction="It ships today."),  # thumbs up: no
                feedback(disliked, thumbs=-1),  # no correction: no
            ],
        )

        # the worker joins the feedback, fires the rule, runs the actions, sends the webhook
        def two_deliveries() -> list[Any]:
            got = hooks.deliveries()
            return got if len(got) >= 2 else []

        delivered = wait_for(
            two_deliveries, 45, "two webhook deliveries", database_url=server.database_url
        )
        fired_on = set()
        for d in delivered:
            assert d.path == "/hook"
            payload = Webhook(signing_secret).verify(d.body, d.headers)  # raises if forged
            assert payload["type"] == "closedloop.rule.fired"
            assert payload["data"]["rule"] == "corrections-loop"
            assert payload["data"]["kind"] == "event"
            fired_on.update(payload["data"]["interaction_ids"])
        assert fired_on == {password, refund}
        assert len({d.headers["webhook-id"] for d in delivered}) == 2

        def tasks() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = api.get("/v1/review/tasks").json()["tasks"]
            return found if len(found) >= 2 else []

        queued = wait_for(tasks, 20, "two review tasks", database_url=server.database_url)
        assert {t["interaction_id"] for t in queued} == {password, refund}
        assert {t["state"] for t in queued} == {"open"} and {t["priority"] for t in queued} == {5}
        assert all(t["firing_id"] is not None for t in queued)

        recalled = api.post(
            "/v1/knowledge/recall", json={"query": PASSWORD_Q, "k": 3, "min_score": -1}
        )
        assert recalled.status_code == 200, recalled.text
        entries = recalled.json()["entries"]
        assert [e["answer"] for e in entries[:2]] == [PASSWORD_FIX, REFUND_FIX]
        assert entries[0]["query"] == PASSWORD_Q and entries[0]["source"] == "correction"
        refund_first = api.post("/v1/knowledge/recall", json={"query": REFUND_Q}).json()
        assert refund_first["entries"][0]["answer"] == REFUND_FIX

        # a reviewer answers the task: reviewer feedback in the read API, no new firing
        (task,) = [t for t in queued if t["interaction_id"] == password]
        answered = api.post(
            f"/v1/review/tasks/{task['id']}/answer",
            json={"reviewer": "ana", "correction": "Settings > Security > Reset password."},
        )
        assert answered.status_code == 200, answered.text
        assert answered.json()["state"] == "done"
        shown = api.get(f"/v1/interactions/{password}").json()
        by_source = {f["source"]: f for f in shown["feedback"]}
        assert by_source["reviewer"]["correction"] == "Settings > Security > Reset password."
        assert by_source["user"]["correction"] == PASSWORD_FIX

        # a later correction fires again: more cycles ran, the earlier firings stay single
        cancel, e5 = interaction(CANCEL_Q, "Subscriptions cannot be cancelled.")
        post_events(api, [e5])
        post_events(app, [feedback(cancel, thumbs=-1, correction=CANCEL_FIX)])
        wait_for(
            lambda: len(hooks.deliveries()) >= 3,
            30,
            "the third delivery",
            database_url=server.database_url,
        )

        def firings() -> list[dict[str, Any]] | None:
            found: list[dict[str, Any]] = api.get(
                "/v1/firings", params={"rule": "corrections-loop"}
            ).json()["firings"]
            done = len(found) >= 3 and all(f["actions"] for f in found)  # actions recorded
            return found if done else None

        recorded = wait_for(
            firings, 20, "three firings with their actions", database_url=server.database_url
        )
        per_interaction = Counter(f["trigger"]["snapshot"]["interaction_id"] for f in recorded)
        assert per_interaction == {password: 1, refund: 1, cancel: 1}
        for firing in recorded:
            assert [(a["action"], a["ok"]) for a in firing["actions"]] == [
                ("kb_refresh", True),
                ("review", True),
                ("webhook", True),
            ], firing["actions"]
        assert len(hooks.deliveries()) == 3  # one delivery per firing, nothing re-sent
        assert (
            api.post("/v1/knowledge/recall", json={"query": CANCEL_Q}).json()["entries"][0][
                "answer"
            ]
            == CANCEL_FIX
        )

        report = api.get("/v1/actions/report", params={"rule": "corrections-loop"})
        assert report.status_code == 200, report.text
        assert {r["firing_id"] for r in report.json()["firings"]} == {f["id"] for f in recorded}
        delivered_state = api.get("/v1/webhooks/deliveries").json()
        assert {d["state"] for d in delivered_state["deliveries"]} == {"delivered"}


def _prompt_events(n_down: int, corrections: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for k in range(n_down):
        iid, event = interaction(
            f"support question number {k} about my account",
            "I cannot help with that.",
            prompt={"name": "support", "version": "1"},
        )
        extra = {"correction": f"Here is how to fix account issue {k}."} if k < corrections else {}
        events += [event, feedback(iid, thumbs=-1, **extra)]
    return events


def test_a_metric_rule_builds_a_prompt_candidate_that_wins_its_ab_test(
    live_servers: MakeServer,
) -> None:
    server = live_servers(env={**FAST_ENV, "CLOSEDLOOP_AB_MIN_SAMPLES": "20"})  # SQLite
    keys = server.create_project("acme")
    server.start()
    rules = """
rules:
  - name: weak-prompt
    when: {metric: positive_rate, by: prompt, below: 0.5, window: 1h, min_count: 10}
    actions:
      - prompt_candidate: {share: 0.5}
"""
    with httpx.Client(base_url=server.url, headers=keys.headers(), timeout=15) as api:
        made = api.post(
            "/v1/prompts", json={"name": "support", "template": "You are a support agent."}
        )
        assert made.status_code == 201, made.text
        assert made.json()["version"] == 1
        applied = api.post(
            "/v1/rules/apply", content=rules, headers={"content-type": "application/yaml"}
        )
        assert applied.status_code == 200, applied.text
        post_events(api, _prompt_events(12, corrections=4))

        def running() -> dict[str, Any] | None:
            shown: dict[str, Any] = api.get("/v1/prompts/support").json()
            tests = [t for t in shown["tests"] if t["state"] == "running"]
            return shown if tests else None

        shown = wait_for(
            running, 45, "a running A/B test of a candidate", database_url=server.database_url
        )
        (test,) = shown["tests"]
        assert (test["control_version"], test["candidate_version"]) == (1, 2)
        assert test["share"] == 0.5
        assert shown["labels"]["candidate"] == 2 and shown["labels"]["production"] == 1
        candidate = next(v for v in shown["versions"] if v["version"] == 2)
        assert candidate["source"] == "candidate"
        assert {e["output"] for e in candidate["examples"]} <= {
            f"Here is how to fix account issue {k}." for k in range(4)
        }

        sdk = closedloop.Client(api_key=keys.secret_key, base_url=server.url, flush_interval=0.2)
        try:
            served: dict[str, str] = {}
            arms: Counter[str] = Counter()
            k = 0
            wait_for(
                lambda: sdk.get_prompt("support", fallback="fallback").variant != "fallback",
                10,
                "the SDK's first fetch of the prompt",
            )
            while min(arms["1"], arms["2"]) < 25 and k < 400:
                user = f"user-{k}"
                got = sdk.get_prompt("support", fallback="fallback template", user_id=user)
                assert got.variant in ("production", "candidate"), got
                again = sdk.get_prompt("support", fallback="fallback template", user_id=user)
                assert again.version == got.version, "a user's variant is sticky"
                served[user] = got.version
                arms[got.version] += 1
                iid = sdk.log_interaction(
                    f"question {k}", "an answer", user_id=user, **got.log_kwargs
                )
                # the candidate is better: 9 in 10 thumbs up, against 2 in 10 for production
                up = (k % 10) < (9 if got.version == "2" else 2)
                sdk.feedback(iid, thumbs=1 if up else -1, user_id=user)
                k += 1
            assert min(arms["1"], arms["2"]) >= 25, arms
            assert sdk.flush(20).pending == 0
        finally:
            sdk.close()

        def promoted() -> dict[str, Any] | None:
            shown: dict[str, Any] = api.get("/v1/prompts/support").json()
            return shown if shown["labels"].get("production") == 2 else None

        shown = wait_for(
            promoted, 45, "the candidate's promotion", database_url=server.database_url
        )
        (test,) = shown["tests"]
        assert test["state"] == "promoted", test
        assert test["evidence"]["decision"] == "promote"

        (firing,) = api.get("/v1/firings", params={"rule": "weak-prompt"}).json()["firings"]
        assert firing["segment"] == "prompt=support@1"
        assert (
            firing["actions"][0]["ok"]
            and firing["actions"][0]["details"]["test_id"] == (test["id"])
        )
        report = api.get("/v1/actions/report", params={"rule": "weak-prompt"}).json()
        (row,) = report["firings"]
        assert row["firing_id"] == firing["id"]
        assert row["method"] == "ab_holdout", row


def test_an_event_rule_exports_a_dpo_dataset(live_servers: MakeServer) -> None:
    server = live_servers(env=FAST_ENV)  # SQLite
    keys = server.create_project("acme")
    server.start()
    rules = """
rules:
  - name: corrections-to-dpo
    when:
      event: {correction: true}
    actions:
      - export: {kind: dpo, issue_only: false, min_rows: 1, validation_share: 0}
"""
    with httpx.Client(base_url=server.url, headers=keys.headers(), timeout=15) as api:
        applied = api.post(
            "/v1/rules/apply", content=rules, headers={"content-type": "application/yaml"}
        )
        assert applied.status_code == 200, applied.text
        refund, e1 = interaction(REFUND_Q, "We do not refund damaged items.")
        post_events(api, [e1, feedback(refund, thumbs=-1, correction=REFUND_FIX)])

        def exports() -> list[dict[str, Any]]:
            found = api.get("/v1/exports").json()["exports"]
            return [e for e in found if e["kind"] == "dpo" and e["rows"]]

        (file,) = wait_for(exports, 45, "a dpo export", database_url=server.database_url)
        path = Path(file["url"].removeprefix("file://"))
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        assert len(lines) == file["rows"] == 1
        (pair,) = lines
        assert set(pair) >= {"prompt", "chosen", "rejected"}
        assert pair["prompt"][-1] == {"role": "user", "content": REFUND_Q}
        assert pair["chosen"] == [{"role": "assistant", "content": REFUND_FIX}]
        assert pair["rejected"] == [
            {"role": "assistant", "content": "We do not refund damaged items."}
        ]
        (firing,) = api.get("/v1/firings").json()["firings"]
        assert firing["actions"][0]["action"] == "export" and firing["actions"][0]["ok"]


def test_embedded_mode_turns_a_correction_into_a_recallable_answer(
    database_url: str, tmp_path: Path
) -> None:
    client = closedloop.Client(
        database_url=database_url,
        project="shop",
        embedded_settings={
            "data_dir": tmp_path / "data",
            "job_poll_seconds": 0.1,
            "enrich_interval_seconds": 0.3,
            "act_interval_seconds": 0.5,
        },
        flush_interval=0.2,
    )
    try:
        first = client.log_interaction("hello", "hi")
        assert client.flush(20).pending == 0  # the project exists from the first batch on
        engine = create_engine(database_url)
        try:
            project_id = Projects(engine).get("shop").id
            (spec,) = parse_rules(EVENT_RULES.replace("- webhook: {endpoint: ops}\n", ""))
            put_rule(engine, project_id, spec)
        finally:
            engine.dispose()
        assert client.recall(PASSWORD_Q, timeout=5) == []
        password = client.log_interaction(PASSWORD_Q, "Click 'forgot password'.")
        refund = client.log_interaction(REFUND_Q, "No refunds.")
        client.feedback(password, thumbs=-1, correction=PASSWORD_FIX)
        client.feedback(refund, thumbs=-1, correction=REFUND_FIX)
        client.feedback(first, thumbs=1)
        assert client.flush(20).pending == 0

        def recalled(question: str) -> list[Any]:
            return client.recall(question, k=3, timeout=5)

        found = wait_for(
            lambda: recalled(PASSWORD_Q), 45, "recall of the correction", database_url=database_url
        )
        assert found[0].answer == PASSWORD_FIX
        assert found[0].query == PASSWORD_Q and found[0].source == "correction"
        assert REFUND_FIX not in [r.answer for r in found]  # no word in common
        found = wait_for(
            lambda: recalled(REFUND_Q),
            20,
            "recall of the other correction",
            database_url=database_url,
        )
        assert found[0].answer == REFUND_FIX
    finally:
        client.close()
