"""Take the README's screenshots of the dashboard: ``docs/img/overview.png`` and friends.

Starts ``closedloop serve`` (worker included, lexical embedder) on a temporary data
directory, sends two weeks of traffic through ``POST /v1/events`` with past timestamps, lets the
enrichment and the analysis run, then signs in with Debian's chromium (driven by Playwright;
never downloads a browser) and captures, at 1280×800, the overview by prompt version, the
issues and one corrected interaction.

The traffic: a support assistant answers questions from the shipped CLINC150/Banking77 slice
with two model versions side by side, a daily rhythm and quieter weekends; midway through the
last week its prompt ``support`` moves from version 3 to version 4, which answers worse (the
week before gives the overview's tiles something to compare with). Users react as users do
(thumbs, ratings, corrections, copies, edits, regenerations), so the drop shows in the charts
and the quality-drift detector raises its alarm from the feedback alone.

Usage: ``.venv/bin/python scripts/screenshots.py [--out-dir docs/img]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
from playwright.sync_api import Page, sync_playwright

from closedloop.sample import Utterance, load_utterances
from closedloop.sdk.envelope import make_event, new_id

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
EMAIL = "admin@example.com"
PASSWORD = "screenshot-password-1"
PROJECT = "acme-support"
WIDTH, HEIGHT = 1280, 800
INTERACTIONS = 11_000
#: Days of traffic: the week the overview shows and the week it compares with.
DAYS = 14
#: When prompt support@4 replaces support@3: days into the last week.
SWITCH_AT = 3.4
SEED = 11

#: A user's reaction to an answer: the event type and its body.
Reaction = tuple[Literal["feedback", "signal"], dict[str, Any]]


@dataclass
class Week:
    """The events to send, in time order, and what the screenshots point at."""

    events: list[dict[str, Any]]
    interactions: int
    switch: dt.datetime
    corrected: str  # an interaction of support@4 with a correction and an edit


def _answer(intent: str) -> str:
    if intent == "oos":  # the datasets' out-of-scope questions
        return "Sorry, I can only help with your account, cards and payments."
    topic = intent.replace("_", " ").lower()
    return f"About {topic}: open Help > {topic.capitalize()} and follow the steps there."


def _times(rng: random.Random, start: dt.datetime, end: dt.datetime, n: int) -> list[dt.datetime]:
    """``n`` times between ``start`` and ``end``: busy working hours, quiet nights, weekends
    at half volume, a little growth over the week."""
    hours: list[dt.datetime] = []
    weights: list[float] = []
    at = start
    while at < end:
        hour = at.hour + at.minute / 60
        day = 0.15 + max(0.0, 1 - abs(hour - 14) / 8) ** 1.5  # peak mid-afternoon UTC
        weekend = 0.5 if at.weekday() >= 5 else 1.0
        growth = 1 + 0.2 * (at - start) / (end - start)
        hours.append(at)
        weights.append(day * weekend * growth * min(1.0, (end - at) / dt.timedelta(hours=1)))
        at += dt.timedelta(hours=1)
    picked = rng.choices(hours, weights, k=n)
    out = [min(h + dt.timedelta(seconds=rng.uniform(0, 3600)), end) for h in picked]
    return sorted(out)


def build_week(now: dt.datetime, n: int = INTERACTIONS, seed: int = SEED) -> Week:
    """:data:`DAYS` of interactions with their feedback and signals, in time order (seeded)."""
    rng = random.Random(seed)
    pool = [u for u in load_utterances() if u.split != "train"]
    by_intent: dict[str, list[Utterance]] = {}
    for u in pool:
        by_intent.setdefault(u.intent, []).append(u)
    intents = sorted(by_intent)
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = midnight - dt.timedelta(days=DAYS - 1), now - dt.timedelta(minutes=2)
    switch = midnight - dt.timedelta(days=6) + dt.timedelta(days=SWITCH_AT)
    users = [f"user-{i:04d}" for i in range(n // 6)]
    session_of: dict[str, tuple[str, dt.datetime]] = {}
    events: list[tuple[dt.datetime, dict[str, Any]]] = []
    corrected = ""
    for when in _times(rng, start, end, n):
        user = rng.choice(users)
        session = session_of.get(user)
        if session is None or when - session[1] > dt.timedelta(minutes=30):
            session = (new_id(), when)
        session_of[user] = (session[0], when)
        utterance = rng.choice(pool)
        model = "v2" if rng.random() < 0.45 else "v1"
        prompt = "4" if when >= switch else "3"
        accuracy = (0.88 if model == "v2" else 0.82) - (0.27 if prompt == "4" else 0.0)
        predicted = utterance.intent if rng.random() < accuracy else rng.choice(intents)
        right = predicted == utterance.intent
        interaction_id = new_id()
        output = _answer(predicted)
        body = {
            "session_id": session[0],
            "user_id": user,
            "model": {"name": "intent-assistant", "version": model, "provider": "local"},
            "prompt": {"name": "support", "version": prompt},
            "input": [
                {"role": "system", "content": "You are a helpful support assistant."},
                {"role": "user", "content": utterance.text},
            ],
            "output": output,
            "retrieved": [{"id": f"kb/{predicted}", "score": round(rng.uniform(0.5, 1), 3)}],
            "latency_ms": round(rng.lognormvariate(6.4 if model == "v2" else 6.2, 0.35), 1),
            "tokens": {"input": 40 + len(utterance.text) // 4, "output": len(output) // 4},
            "cost_usd": 0.0006 if model == "v2" else 0.0004,
            "metadata": {"dataset": utterance.dataset, "plan": rng.choice(["free", "pro"])},
            "tags": [utterance.dataset],
        }
        events.append((when, make_event("interaction", body, id=interaction_id, timestamp=when)))
        later = when + dt.timedelta(seconds=rng.uniform(3, 90))
        reactions = _reactions(rng, right, user, utterance, predicted, by_intent)
        if not corrected and prompt == "4" and when > end - dt.timedelta(hours=12):
            if (
                not right
                and utterance.intent != "oos"
                and any("correction" in r[1] for r in reactions)
            ):
                if any(r[1].get("kind") == "edit" for r in reactions):
                    corrected = interaction_id
        for kind, reaction in reactions:
            event = make_event(
                kind, {"interaction_id": interaction_id, **reaction}, timestamp=later
            )
            events.append((later, event))
    events.sort(key=lambda e: e[0])
    return Week([e for _, e in events], n, switch, corrected)


def _reactions(
    rng: random.Random,
    right: bool,
    user: str,
    utterance: Utterance,
    predicted: str,
    by_intent: dict[str, list[Utterance]],
) -> list[Reaction]:
    """What a user does after an answer: a "was this helpful?" widget gets thumbs from about
    a third (unhappy users a little more often), a few rate, some correct a wrong answer;
    many copy a right one, and edit, regenerate, rephrase or leave after a wrong one."""
    out: list[Reaction] = []
    if rng.random() < (0.40 if not right else 0.30):
        good = right if rng.random() < 0.92 else not right
        out.append(("feedback", {"thumbs": 1 if good else -1, "user_id": user}))
    if rng.random() < 0.06:
        rating = rng.choice([4, 5, 5]) if right else rng.choice([1, 2, 2, 3])
        out.append(("feedback", {"rating": rating, "user_id": user}))
    if not right and rng.random() < 0.10:
        fix = {
            "correction": _answer(utterance.intent),
            "comment": "wrong topic, that is not what I asked",
            "user_id": user,
        }
        out.append(("feedback", fix))
        out.append(("signal", {"kind": "edit", "text": _answer(utterance.intent)}))
    if right and rng.random() < 0.25:
        out.append(("signal", {"kind": "copy", "text": _answer(predicted)}))
    if not right:
        roll = rng.random()
        if roll < 0.12:
            out.append(("signal", {"kind": "edit", "text": _answer(utterance.intent)}))
        elif roll < 0.32:
            out.append(("signal", {"kind": "regenerate"}))
        elif roll < 0.47:
            again = rng.choice(by_intent[utterance.intent]).text
            out.append(("signal", {"kind": "rephrase", "text": again}))
        elif roll < 0.57:
            out.append(("signal", {"kind": "abandon"}))
    if rng.random() < 0.1:
        out.append(("signal", {"kind": "click", "target": f"kb/{predicted}", "rank": 0}))
    if rng.random() < 0.2:
        out.append(("signal", {"kind": "dwell", "duration_ms": round(rng.uniform(500, 30000))}))
    return out


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _closedloop(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "closedloop", *args],
        env=env,
        input=stdin,
        text=True,
        check=True,
        capture_output=True,
    )
    return done.stdout


def _wait_ready(base: str, server: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"closedloop serve exited with {server.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit("closedloop serve did not become ready")


def _send(client: httpx.Client, events: list[dict[str, Any]]) -> dict[str, int]:
    """Every event through ``POST /v1/events`` in batches; the statuses counted."""
    statuses: dict[str, int] = {}
    for first in range(0, len(events), 1000):
        answer = client.post("/v1/events", json={"events": events[first : first + 1000]})
        answer.raise_for_status()
        for result in answer.json()["results"]:
            statuses[result["status"]] = statuses.get(result["status"], 0) + 1
    return statuses


def _settle(client: httpx.Client, timeout: float = 150) -> dict[str, int]:
    """Wait for the enrichment to catch up, then run the analysis until it has clustered
    every interaction (it takes a batch per run); what the runs did, summed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get("/v1/enrichment").json()
        if status["interactions_waiting"] == 0 and not status["feedback"]["pending"]:
            break
        time.sleep(0.5)
    time.sleep(6)  # the drift job leaves the last seconds' feedback for its next run
    total = {"runs": 0, "members": 0, "observations": 0, "alarms": 0}
    idle = 0
    while idle < 2:  # twice nothing new: the embedding job has caught up too
        if time.monotonic() > deadline:
            raise SystemExit("the analysis did not catch up in time")
        answer = client.post("/v1/analyze").json()
        if answer["skipped"]:  # the worker's own run holds the lock
            time.sleep(0.5)
            continue
        for key in ("members", "observations", "alarms"):
            total[key] += int(answer[key])
        total["runs"] += 1
        idle = idle + 1 if answer["members"] == 0 else 0
        if idle:
            time.sleep(2)
    return total


def _shoot(page: Page, url: str, out: Path, *, down_to: str | None = None) -> None:
    """The page at 1280×800; with ``down_to``, the viewport grows to end below that element."""
    page.set_viewport_size({"width": WIDTH, "height": HEIGHT})
    page.goto(url)
    page.wait_for_load_state("networkidle")
    if down_to is not None:
        box = page.locator(down_to).bounding_box()
        if box is not None:
            height = max(HEIGHT, round(box["y"] + box["height"]) + 16)
            page.set_viewport_size({"width": WIDTH, "height": height})
    page.wait_for_timeout(300)
    page.screenshot(path=str(out))
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


def capture(out_dir: Path, data_dir: Path) -> None:
    """Serve ``data_dir``, send the week, analyse it and write the screenshots."""
    began = time.monotonic()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOSEDLOOP_")}
    env.update(CLOSEDLOOP_DATA_DIR=str(data_dir), CLOSEDLOOP_EMBEDDER="lexical")
    keys = json.loads(_closedloop(env, "projects", "create", PROJECT, "--json"))
    _closedloop(
        env, "users", "create", EMAIL, "--project", PROJECT, "--password-stdin", stdin=PASSWORD
    )
    port = _port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "closedloop", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_ready(base, server)
        week = build_week(dt.datetime.now(dt.UTC))
        auth = {"authorization": f"Bearer {keys['secret_key']}"}
        with httpx.Client(base_url=base, headers=auth, timeout=60) as client:
            statuses = _send(client, week.events)
            print(
                f"sent {len(week.events)} events ({week.interactions} interactions): "
                + ", ".join(f"{k} {v}" for k, v in sorted(statuses.items()))
                + f"; prompt support@4 from {week.switch:%a %H:%M} UTC"
            )
            analysis = _settle(client)
            print(
                f"analysis ({analysis['runs']} runs): {analysis['members']} cluster members, "
                f"{analysis['observations']} feedback observations, {analysis['alarms']} alarms"
            )
            for alarm in client.get("/v1/drift").json().get("alarms", []):
                print(
                    "alarm: {kind} {measure} in {segment} since {since}: {b} -> {a}".format(
                        b=alarm["before"].get("value"), a=alarm["after"].get("value"), **alarm
                    )
                )
        out_dir.mkdir(parents=True, exist_ok=True)
        home = f"{base}/ui/p/{PROJECT}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            page.goto(f"{base}/ui/login")
            page.fill("input[name=email]", EMAIL)
            page.fill("input[name=password]", PASSWORD)
            page.click("button[type=submit]")
            page.wait_for_url(f"{home}/")
            _shoot(
                page,
                f"{home}/?window=7d&by=prompt",
                out_dir / "overview.png",
                down_to="section.charts",
            )
            _shoot(page, f"{home}/issues", out_dir / "issues.png")
            if week.corrected:
                _shoot(page, f"{home}/interactions/{week.corrected}", out_dir / "interaction.png")
            browser.close()
    finally:
        server.terminate()
        server.wait(30)
    print(f"done in {time.monotonic() - began:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=ROOT / "docs" / "img")
    options = parser.parse_args()
    if not CHROMIUM.exists():
        raise SystemExit("Debian's chromium is missing: apt-get install chromium")
    with tempfile.TemporaryDirectory(prefix="closedloop-shots-") as tmp:
        capture(options.out_dir.resolve(), Path(tmp) / "data")


if __name__ == "__main__":
    main()
