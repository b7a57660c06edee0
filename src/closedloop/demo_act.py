"""The demo's second part: the loop closes.

Rules are applied through the API; the low-quality prompt fires one, which alerts a signed
webhook (received and verified here), queues review tasks and builds a prompt candidate from
the users' corrections, served to half the users by the SDK's ``get_prompt``; corrections
become knowledge-base entries. Then the users come back, and the effect report compares the
candidate with production over the same time (the A/B hold-out is the control).
"""

from __future__ import annotations

import datetime as dt
import http.server
import random
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table

from closedloop.sample import Utterance, load_utterances
from closedloop.sdk.envelope import make_event, new_id

__all__ = ["RULES", "act_loop"]

RULES = """\
rules:
  - name: support-prompt-quality
    description: the production support prompt's answers draw bad feedback
    when:
      metric: observed_quality
      by: prompt
      segment: support@4
      below: 0.8
      window: 3h
      min_count: 20
    cooldown: 1h
    actions:
      - webhook: {endpoint: demo-alerts}
      - review: {max_tasks: 5, priority: 1}
      - prompt_candidate: {share: 0.5}
  - name: corrections-to-knowledge-base
    when:
      event: {correction: true}
    backfill: true                 # the corrections received before the rule, too
    actions:
      - kb_refresh: {}
"""

SYSTEM = "You are a helpful support assistant."


@contextmanager
def _receiver() -> Iterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    """A local HTTP server that records what it is posted: the demo's alert receiver."""
    got: list[tuple[bytes, dict[str, str]]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            got.append((body, {k.lower(): v for k, v in self.headers.items()}))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}/alerts", got
    finally:
        server.shutdown()
        server.server_close()


def _ok(answer: httpx.Response) -> dict[str, Any]:
    if answer.status_code >= 400:
        raise RuntimeError(f"{answer.request.method} {answer.request.url.path}: {answer.text}")
    return answer.json() if answer.content else {}


def _setup(client: httpx.Client, auth: dict[str, str], url: str) -> str:
    """The support prompt's history (versions 1-4, production 4), the alert endpoint and the
    rules; the endpoint's signing secret."""
    if client.get("/v1/prompts/support", headers=auth).status_code == 404:
        for version in range(1, 5):
            template = f"{SYSTEM} (revision {version})"
            prompt = {"name": "support", "template": template}
            _ok(client.post("/v1/prompts", json=prompt, headers=auth))
        labels = {"label": "production", "version": 4}
        _ok(client.post("/v1/prompts/support/labels", json=labels, headers=auth))
    client.delete("/v1/webhooks/demo-alerts", headers=auth)
    endpoint = {"name": "demo-alerts", "url": url, "allow_private": True}
    secret: str = _ok(client.post("/v1/webhooks", json=endpoint, headers=auth))["secret"]
    headers = {**auth, "content-type": "application/yaml"}
    _ok(client.post("/v1/rules/apply", content=RULES.encode(), headers=headers))
    return secret


def _wait(check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.25)


def _phase_two(
    client: httpx.Client,
    auth: dict[str, str],
    base: str,
    secret_key: str,
    rng: random.Random,
    n: int,
) -> dict[str, int]:
    """Users come back: each is served the support prompt by the SDK (production or, within
    the A/B test, the candidate) and reacts to the answer as before."""
    from closedloop.demo import _answer, _reactions
    from closedloop.sdk.client import Client

    pool = [u for u in load_utterances() if u.split != "train"]
    by_intent: dict[str, list[Utterance]] = {}
    for u in pool:
        by_intent.setdefault(u.intent, []).append(u)
    intents = sorted(by_intent)
    intent_of = {_answer(i): i for i in intents}
    # what users reported wrong before (their corrections, now knowledge-base entries)
    entries = _ok(client.get("/v1/knowledge", params={"limit": 200}, headers=auth))["entries"]
    reported = sorted({intent_of[e["answer"]] for e in entries if e["answer"] in intent_of})
    sdk = Client(api_key=secret_key, base_url=base)
    # the SDK serves the fallback while its first fetch of a prompt is in flight: an app that
    # starts takes the fallback for a moment; the demo waits for the first fetch instead
    _wait(
        lambda: sdk.get_prompt("support", fallback=SYSTEM, user_id="warm-up").variant != "fallback",
        timeout=10.0,
    )
    served_counts: dict[str, int] = {}
    events: list[dict[str, Any]] = []
    try:
        for i in range(n):
            user = f"user-{1000 + i % 150}"
            served = sdk.get_prompt("support", fallback=SYSTEM, user_id=user)
            served_counts[served.variant] = served_counts.get(served.variant, 0) + 1
            # what the candidate learned: the intents its corrected examples answer
            outputs = [e.get("output") for e in served.examples]
            learned = sorted({intent_of[o] for o in outputs if o in intent_of})
            # the problems users hit before keep coming back: half the questions are about them
            recurring = learned or reported
            if recurring and rng.random() < 0.5:
                utterance = rng.choice(by_intent[rng.choice(recurring)])
            else:
                utterance = rng.choice(pool)
            right = utterance.intent in learned or rng.random() < 0.85
            predicted = utterance.intent if right else rng.choice(intents)
            right = predicted == utterance.intent
            interaction_id = new_id()
            now = dt.datetime.now(dt.UTC)
            body = {
                "session_id": f"again-{user}",
                "user_id": user,
                "model": {"name": "intent-assistant", "version": "v2", "provider": "local"},
                "prompt": served.ref,
                "input": [
                    {"role": "system", "content": served.template},
                    {"role": "user", "content": utterance.text},
                ],
                "output": _answer(predicted),
            }
            events.append(make_event("interaction", body, id=interaction_id, timestamp=now))
            for kind, reaction in _reactions(rng, right, user, utterance, predicted, by_intent):
                follow = {"interaction_id": interaction_id, **reaction}
                events.append(make_event(kind, follow, timestamp=now))
    finally:
        sdk.close(timeout=1)
    for start in range(0, len(events), 200):
        _ok(client.post("/v1/events", json={"events": events[start : start + 200]}, headers=auth))
    return served_counts


def act_loop(
    base: str, secret_key: str, console: Console, *, seed: int = 7, n: int = 2500
) -> dict[str, Any]:
    """Apply the demo's rules, fire them, close the loop, and print what happened."""
    from standardwebhooks.webhooks import Webhook

    auth = {"authorization": f"Bearer {secret_key}"}
    rng = random.Random(seed)
    with _receiver() as (url, received), httpx.Client(base_url=base, timeout=60) as client:
        signing = _setup(client, auth, url)
        # the worker runs the rules every 30 s too: while it does, the call is skipped
        deadline = time.monotonic() + 30.0
        ran = _ok(client.post("/v1/act", headers=auth))
        while ran["skipped"] and time.monotonic() < deadline:
            time.sleep(0.5)
            ran = _ok(client.post("/v1/act", headers=auth))
        fired = _ok(client.get("/v1/firings", params={"limit": 10}, headers=auth))["firings"]
        table = Table("rule", "segment", "actions", title="POST /v1/act: rules fired")
        for f in fired:
            acts = "\n".join(("✓ " if a["ok"] else "✗ ") + a["summary"] for a in f["actions"])
            table.add_row(f["rule"], f["segment"], acts or "(held out)")
        console.print(table)
        console.print(
            f"rules: {ran['fired']} fired now, {ran['cooled']} held by cooldown "
            f"(applied from YAML through POST /v1/rules/apply)"
        )
        delivered = _wait(lambda: list(received), timeout=20.0)
        if delivered:
            body, headers = delivered[0]
            Webhook(signing).verify(body, headers)  # raises if the signature is wrong
            console.print(
                f"webhook: {len(delivered)} delivered to the local receiver, signature verified "
                "with the standardwebhooks package"
            )
        else:
            console.print("webhook: no delivery within 20 s (see GET /v1/webhooks/deliveries)")
        served = _phase_two(client, auth, base, secret_key, rng, n)
        console.print(
            "the users came back: "
            + ", ".join(
                f"{count} served the {variant}" for variant, count in sorted(served.items())
            )
        )
        _wait(
            lambda: _ok(client.get("/v1/enrichment", headers=auth))["interactions_waiting"] == 0,
            timeout=30.0,
        )
        report = _ok(
            client.get(
                "/v1/actions/report", params={"rule": "support-prompt-quality"}, headers=auth
            )
        )
        tasks = _ok(client.get("/v1/review/tasks", params={"state": "open"}, headers=auth))
        entries = _ok(client.get("/v1/knowledge", params={"limit": 200}, headers=auth))
        # the local receiver stops with the demo: its endpoint goes too, so later firings
        # do not pile up deliveries to a port nobody listens on
        client.delete("/v1/webhooks/demo-alerts", headers=auth)
    _print_effect(console, report["firings"][:1])
    console.print(
        f"review queue: {len(tasks.get('tasks', []))} open tasks; knowledge base: "
        f"{len(entries.get('entries', []))} entries from corrections (recall them with "
        "client.recall(question))"
    )
    return {"fired": ran["fired"], "report": report, "webhooks": len(received)}


def _fmt(est: dict[str, Any] | None) -> str:
    if not est or est.get("value") is None:
        return "-"
    low, high = est.get("low"), est.get("high")
    ci = f" [{low:.2f}, {high:.2f}]" if low is not None and high is not None else ""
    return f"{est['value']:.3f}{ci} (n={est.get('n', 0)})"


def _print_effect(console: Console, rows: list[dict[str, Any]]) -> None:
    for r in rows:
        ab = r.get("ab") or {}
        table = Table(
            "",
            r["measure"],
            title=f"GET /v1/actions/report: did {r['rule']} fix {r['segment']}?",
        )
        table.add_row("before the firing", _fmt(r["before"]["segment"]))
        table.add_row("after: production (the control)", _fmt(ab.get("control")))
        table.add_row("after: the candidate", _fmt(ab.get("candidate")))
        effect = "-" if r["effect"] is None else f"{r['effect']:+.3f}"
        if r["low"] is not None:
            effect += f" [{r['low']:+.3f}, {r['high']:+.3f}]"
        table.add_row("effect (95 %)", f"{effect}: {r['verdict']}")
        control, before = ab.get("control") or {}, r["before"]["segment"]
        if control.get("value") is not None and before.get("value") is not None:
            naive = control["value"] - before["value"]
            table.add_row(
                "production alone, before → after",
                f"{naive:+.3f}: unchanged, yet it moved (regression to the mean)",
            )
        table.add_row("control", f"{r['method']} (same time, users split by the SDK)")
        console.print(table)
