"""``closedloop demo``: a real server on the embedded default, fed a realistic sample.

The sample: users ask an intent assistant questions from the shipped CLINC150/Banking77
slice; the assistant answers right most of the time; users react as users do: most say
nothing, some click thumbs, a few correct, many copy, edit, regenerate, rephrase or leave.
Everything goes through the real HTTP API, some feedback before its interaction.
"""

from __future__ import annotations

import datetime as dt
import random
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from rich.console import Console
from rich.table import Table

from closedloop.errors import ClosedLoopError, NotFound
from closedloop.sample import Utterance, load_utterances
from closedloop.sdk.envelope import make_event, new_id
from closedloop.settings import Settings

__all__ = ["DemoReport", "build_sample_events", "run_demo"]


@dataclass(frozen=True)
class DemoReport:
    """What the demo sent and what the server answered."""

    base_url: str
    sent: dict[str, int]
    statuses: dict[str, int]
    resent_duplicates: int


def _answer(intent: str) -> str:
    topic = intent.replace("_", " ").lower()
    return f"About {topic}: open Help > {topic.capitalize()} and follow the steps there."


def build_sample_events(n: int = 300, seed: int = 7) -> list[dict[str, Any]]:
    """Interactions with explicit and implicit feedback, in sending order (seeded).

    >>> events = build_sample_events(50, seed=1)
    >>> sorted({e["type"] for e in events})
    ['feedback', 'interaction', 'signal']
    """
    rng = random.Random(seed)
    pool = [u for u in load_utterances() if u.split != "train"]
    by_intent: dict[str, list[Utterance]] = {}
    for u in pool:
        by_intent.setdefault(u.intent, []).append(u)
    intents = sorted(by_intent)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    events: list[dict[str, Any]] = []
    users = [f"user-{i:03d}" for i in range(max(5, n // 8))]
    session_of: dict[str, str] = {}
    for i in range(n):
        when = start + dt.timedelta(seconds=i * 7200 / n)
        user = rng.choice(users)
        if user not in session_of or rng.random() < 0.3:
            session_of[user] = new_id()
        utterance = rng.choice(pool)
        version = "v2" if i > n // 2 else "v1"
        right = rng.random() < (0.85 if version == "v2" else 0.7)
        predicted = utterance.intent if right else rng.choice(intents)
        right = predicted == utterance.intent
        interaction_id = new_id()
        output = _answer(predicted)
        interaction = make_event(
            "interaction",
            {
                "session_id": session_of[user],
                "user_id": user,
                "model": {"name": "intent-assistant", "version": version, "provider": "local"},
                "prompt": {"name": "support", "version": "3" if version == "v1" else "4"},
                "input": [
                    {"role": "system", "content": "You are a helpful support assistant."},
                    {"role": "user", "content": utterance.text},
                ],
                "output": output,
                "retrieved": [{"id": f"kb/{predicted}", "score": round(rng.uniform(0.5, 1), 3)}],
                "latency_ms": round(rng.lognormvariate(6.2, 0.4), 1),
                "tokens": {"input": 40 + len(utterance.text) // 4, "output": len(output) // 4},
                "cost_usd": 0.0004,
                "metadata": {"dataset": utterance.dataset, "plan": rng.choice(["free", "pro"])},
                "tags": [utterance.dataset],
            },
            id=interaction_id,
            timestamp=when,
        )
        later = when + dt.timedelta(seconds=rng.uniform(2, 60))
        reactions = _reactions(rng, right, user, utterance, predicted, by_intent)
        follow = [
            make_event(t, {"interaction_id": interaction_id, **body}, timestamp=later)
            for t, body in reactions
        ]
        if follow and rng.random() < 0.1:  # the client raced: feedback before its interaction
            events.extend(follow)
            events.append(interaction)
        else:
            events.append(interaction)
            events.extend(follow)
    return events


Reaction = tuple[Literal["feedback", "signal"], dict[str, Any]]


def _reactions(
    rng: random.Random,
    right: bool,
    user: str,
    utterance: Utterance,
    predicted: str,
    by_intent: dict[str, list[Utterance]],
) -> list[Reaction]:
    """What a user does after an answer: mostly nothing; some thumbs (a little noisy), a few
    corrections of wrong answers, many copies of right ones and edits, regenerations,
    rephrasings or departures after wrong ones."""
    reactions: list[Reaction] = []
    output = _answer(predicted)
    add = reactions.append
    if rng.random() < 0.15:  # thumbs, a little noisy
        good = right if rng.random() < 0.9 else not right
        add(("feedback", {"thumbs": 1 if good else -1, "user_id": user}))
    if rng.random() < 0.05:
        add(("feedback", {"rating": 5 if right else rng.choice([1, 2]), "user_id": user}))
    if not right and rng.random() < 0.08:
        fix = {
            "correction": _answer(utterance.intent),
            # personal data in feedback is redacted before it is stored
            "comment": f"wrong topic, reach me at {user}@example.com",
            "thumbs": -1,
        }
        add(("feedback", fix))
    if right and rng.random() < 0.25:
        add(("signal", {"kind": "copy", "text": output}))
    if not right:
        roll = rng.random()
        if roll < 0.15:
            add(("signal", {"kind": "edit", "text": _answer(utterance.intent)}))
        elif roll < 0.35:
            add(("signal", {"kind": "regenerate"}))
        elif roll < 0.5:
            again = rng.choice(by_intent[utterance.intent]).text
            add(("signal", {"kind": "rephrase", "text": again}))
        elif roll < 0.6:
            add(("signal", {"kind": "abandon"}))
    if rng.random() < 0.1:
        add(("signal", {"kind": "click", "target": f"kb/{predicted}", "rank": 0}))
    if rng.random() < 0.2:
        add(("signal", {"kind": "dwell", "duration_ms": round(rng.uniform(500, 30000))}))
    return reactions


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


#: The demo's dashboard account; its password is made up anew on every run and printed.
DEMO_ADMIN = "admin@demo.local"


def _keys(settings: Settings) -> tuple[str, str, str]:
    """The demo project's fresh public and secret keys, and a fresh password of its admin."""
    import secrets

    from closedloop.store import migrate
    from closedloop.store.db import create_engine
    from closedloop.store.projects import Projects
    from closedloop.store.users import Role, Users

    engine = create_engine(settings.resolved_database_url())
    try:
        migrate.upgrade(engine)
        projects = Projects(engine)
        try:
            project = projects.get("demo")
            public, secret = projects.rotate("demo", "public"), projects.rotate("demo", "secret")
        except NotFound:
            project, public, secret = projects.create("demo")
        users, password = Users(engine), secrets.token_urlsafe(12)
        try:
            users.set_password(DEMO_ADMIN, password)
        except NotFound:
            users.create(DEMO_ADMIN, password)
        users.grant(DEMO_ADMIN, project.id, Role.ADMIN)
        return public, secret, password
    finally:
        engine.dispose()


def run_demo(
    settings: Settings,
    console: Console,
    *,
    port: int = 0,
    n: int = 300,
    keep_serving: bool = False,
) -> DemoReport:
    """Serve in-process, send the sample over HTTP, print and return what was stored."""
    import uvicorn

    from closedloop.ingest.app import create_app

    public, secret, password = _keys(settings)
    # the demo's alert receiver listens on the loopback interface: allowed for webhooks here
    settings = settings.with_overrides(webhook_allow=[*settings.webhook_allow, "127.0.0.1/32"])
    port = port or _free_port()
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="closedloop-demo-server", daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise ClosedLoopError(f"the demo server did not start on port {port}")
        time.sleep(0.05)
    console.print(f"closedloop demo: server on [bold]{base}[/] (data in {settings.data_dir})")
    try:
        report = _send_and_show(base, public, secret, n, console)
        _print_dashboard(console, base if keep_serving else None, password)
        if keep_serving:
            console.print(f"serving on {base} (API docs at {base}/docs); Ctrl+C stops")
            while thread.is_alive():
                time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        thread.join(30)
    return report


def _print_dashboard(console: Console, base: str | None, password: str) -> None:
    """Where to see it all: the dashboard's link and the demo admin's sign-in."""
    if base is not None:
        where = f"open [bold]{base}/ui/[/]"
    else:
        where = (
            "run [bold]closedloop serve[/] (or [bold]closedloop demo --keep-serving[/]) and open "
            "[bold]http://127.0.0.1:8484/ui/[/]"
        )
    console.print(
        f"\n[bold]Dashboard:[/] {where}; sign in as [bold]{DEMO_ADMIN}[/] with the password "
        f"[bold]{password}[/] (made up anew on every run)",
        highlight=False,
    )


def _send_and_show(base: str, public: str, secret: str, n: int, console: Console) -> DemoReport:
    events = build_sample_events(n)
    sent: dict[str, int] = {}
    statuses: dict[str, int] = {}
    auth = {"authorization": f"Bearer {secret}"}
    browser = {"authorization": f"Bearer {public}"}
    with httpx.Client(base_url=base, timeout=30) as client:
        for start in range(0, len(events), 100):
            batch = events[start : start + 100]
            # Feedback and signals could come from a browser with the public key; the
            # interactions come from the app's backend with the secret key.
            for key, part in (
                (auth, [e for e in batch if e["type"] == "interaction"]),
                (browser, [e for e in batch if e["type"] != "interaction"]),
            ):
                if not part:
                    continue
                answer = client.post("/v1/events", json={"events": part}, headers=key)
                answer.raise_for_status()
                for event, result in zip(part, answer.json()["results"], strict=True):
                    sent[event["type"]] = sent.get(event["type"], 0) + 1
                    statuses[result["status"]] = statuses.get(result["status"], 0) + 1
        again = client.post("/v1/events", json={"events": events[:100]}, headers=auth).json()
        enrichment = _wait_for_enrichment(client, auth)
        down = client.get(
            "/v1/interactions",
            params={"feedback_kind": "thumbs", "feedback_value": -1, "limit": 3},
            headers=auth,
        ).json()["data"]
        details = [client.get(f"/v1/interactions/{d['id']}", headers=auth).json() for d in down]
        console.print("waiting for the embedding job (the model loads once, ~10 s) ...")
        found = _wait_for_search(client, auth, SEARCH_QUERY)
        analysis = _analyze(client, auth)
        by_model = client.get(
            "/v1/metrics", params={"by": "model", "measure": list(_DEMO_MEASURES)}, headers=auth
        ).json()["rows"]
        issues = client.get("/v1/issues", params={"limit": 5}, headers=auth).json()["issues"]
    table = Table("event type", "sent", title="what the demo sent through POST /v1/events")
    for type_, count in sorted(sent.items()):
        table.add_row(type_, str(count))
    console.print(table)
    console.print(
        "stored: {stored}, duplicate: {duplicate}, rejected: {rejected}".format(
            stored=statuses.get("stored", 0),
            duplicate=statuses.get("duplicate", 0),
            rejected=statuses.get("rejected", 0),
        )
    )
    console.print(
        f"re-sent the first 100 events: {again['duplicate']} answered duplicate, "
        f"{again['stored']} stored again (effectively-once)"
    )
    shown = Table(
        "user asked",
        "assistant answered",
        "feedback and signals",
        title="thumbs-down interactions, read back through GET /v1/interactions",
    )
    for d in details:
        question = d["input"][-1]["content"] if isinstance(d["input"], list) else d["input"]
        reactions = [_describe(f) for f in d["feedback"]] + [s["kind"] for s in d["signals"]]
        shown.add_row(_short(question, 40), _short(d["output"], 40), ", ".join(reactions))
    console.print(shown)
    _print_metrics(console, by_model)
    console.print(
        "enrichment: {w} interactions waiting; sessions {t} ({a} ended by abandonment); "
        "feedback still waiting for its interaction {p}".format(
            w=enrichment["interactions_waiting"],
            t=enrichment["sessions"]["total"],
            a=enrichment["sessions"]["abandoned"],
            p=enrichment["feedback"]["pending"],
        )
    )
    embedder = found.get("embedder", {})
    hits = Table(
        "score",
        "kind",
        "text",
        title=f"GET /v1/search?q={SEARCH_QUERY} ({embedder.get('name')}, {embedder.get('kind')})",
    )
    for hit in found.get("hits", []):
        hits.add_row(f"{hit['score']:.3f}", hit["kind"], _short(hit["text"] or "", 70))
    console.print(hits)
    _print_issues(console, issues, analysis)
    from closedloop.demo_act import act_loop

    act_loop(base, secret, console, seed=n, n=8 * n)
    metrics = httpx.get(f"{base}/metrics", timeout=30).text
    balance = [
        line
        for line in metrics.splitlines()
        if line.startswith("closedloop_events_") and "_total" in line
    ]
    console.print(
        "metrics: " + "; ".join(line.replace("closedloop_events_", "") for line in balance)
    )
    return DemoReport(
        base_url=base, sent=sent, statuses=statuses, resent_duplicates=again["duplicate"]
    )


SEARCH_QUERY = "my card was stolen"


def _wait_for_search(
    client: httpx.Client, auth: dict[str, str], q: str, timeout: float = 90.0
) -> dict[str, Any]:
    """Semantic search results once the embedding job has embedded the inputs."""
    deadline = time.monotonic() + timeout
    while True:
        answer: dict[str, Any] = client.get(
            "/v1/search", params={"q": q, "k": 5, "kind": "input"}, headers=auth
        ).json()
        if len(answer.get("hits", [])) >= 5 or time.monotonic() > deadline:
            return answer
        time.sleep(1.0)


def _wait_for_enrichment(
    client: httpx.Client, auth: dict[str, str], timeout: float = 30.0
) -> dict[str, Any]:
    """The enrichment status once the worker has caught up (or when ``timeout`` ends)."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = client.get("/v1/enrichment", headers=auth).json()
        if status["interactions_waiting"] == 0 or time.monotonic() > deadline:
            return status
        time.sleep(0.25)


def _analyze(client: httpx.Client, auth: dict[str, str], timeout: float = 60.0) -> dict[str, Any]:
    """``POST /v1/analyze``, again while the worker's own run holds the lock."""
    deadline = time.monotonic() + timeout
    while True:
        answer: dict[str, Any] = client.post("/v1/analyze", headers=auth).json()
        if not answer["skipped"] or time.monotonic() > deadline:
            return answer
        time.sleep(0.5)


_DEMO_MEASURES = ("volume", "feedback_rate", "positive_rate", "quality", "edit_similarity")


def _print_metrics(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(title="GET /v1/metrics?by=model (95 % intervals: Wilson, t)")
    table.add_column("model", no_wrap=True)
    for header in ("volume", "feedback", "thumbs up", "quality", "edit sim."):
        table.add_column(header)
    cells: dict[str, dict[str, str]] = {}
    for row in rows:
        value, low, high = row["value"], row["low"], row["high"]
        text = "-" if value is None else f"{value:.3g}"
        if value is not None and low is not None and high is not None:
            text += f" [{low:.2f}, {high:.2f}]"
        cells.setdefault(row["segment"], {})[row["measure"]] = text
    for segment, measures in cells.items():
        table.add_row(segment, *(measures.get(m, "-") for m in _DEMO_MEASURES))
    console.print(table)


def _print_issues(console: Console, issues: list[dict[str, Any]], analysis: dict[str, Any]) -> None:
    table = Table(
        "rank",
        "issue",
        "size",
        "impact",
        "example",
        title="GET /v1/issues: negative feedback clustered, ranked by impact",
    )
    for issue in issues:
        example = next((e["input"] for e in issue["examples"] if e["input"]), "")
        table.add_row(
            str(issue["rank"]),
            _short(issue["name"], 40),
            str(issue["size"]),
            f"{issue['impact']:.1f}",
            _short(example, 40),
        )
    console.print(table)
    console.print(
        f"analysis: {analysis['members']} interactions clustered into topics and issues, "
        f"{analysis['observations']} feedback observations fed to the drift detectors, "
        f"{analysis['alarms']} alarms"
    )


def _describe(feedback: dict[str, Any]) -> str:
    parts = []
    if "thumbs" in feedback:
        parts.append("thumbs " + ("up" if feedback["thumbs"] > 0 else "down"))
    if "rating" in feedback:
        parts.append(f"rating {feedback['rating']:g}")
    if "correction" in feedback:
        parts.append("correction")
    if "comment" in feedback:
        parts.append(f"comment {feedback['comment']!r}")
    return " + ".join(parts)


def _short(text: str, width: int = 48) -> str:
    """``text`` cut to ``width`` characters, for a table that fits a terminal."""
    return text if len(text) <= width else text[: width - 1] + "…"
