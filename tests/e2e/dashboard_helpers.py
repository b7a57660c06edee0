"""Helpers of ``test_dashboard.py``: a seeded project, accounts, a watched browser page.

Not a test module. :func:`seed` fills a live server's project through its HTTP API: the
demo's sample events, interactions and feedback carrying the XSS corpus, a prompt with two
versions, a rule (whose description is hostile) that fires on corrections and queues review
tasks, a webhook whose deliveries fail, and an analysis run. :class:`Watch` records what a
page must never do: alert, log an error (a CSP violation is one), throw.
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Dialog, Page

from closedloop import make_event, new_id
from closedloop.demo import build_sample_events
from closedloop.store.db import create_engine
from closedloop.store.projects import Projects
from closedloop.store.users import Role, Users
from tests.e2e.act_helpers import FAST_ENV, post_events, wait_for
from tests.e2e.server import LiveServer, ProjectKeys, free_port
from tests.e2e.xss_corpus import PAYLOADS, joined

__all__ = [
    "ARGS",
    "CHROMIUM",
    "ENV",
    "PROJECT",
    "PROMPT",
    "ROOT",
    "RULE",
    "Account",
    "Seeded",
    "Watch",
    "add_member",
    "artifacts",
    "create_user",
    "csrf_of",
    "hook",
    "new_context",
    "open_page",
    "poll",
    "seed",
    "sign_in",
]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
PROJECT = "acme"
# The worker's jobs every fraction of a second; webhooks may target loopback (where nothing
# listens, so deliveries fail and wait for a retry).
ENV = {
    **FAST_ENV,
    "CLOSEDLOOP_WEBHOOK_MAX_ATTEMPTS": "2",
    "CLOSEDLOOP_WEBHOOK_BACKOFF_SECONDS": "0.1",
}
PROMPT = "support"
RULE = "corrections-to-review"
RULES_YAML = """
rules:
  - name: {rule}
    description: {description}
    when:
      event: {{thumbs: down, correction: true}}
    actions:
      - review: {{priority: 5}}
      - webhook: {{endpoint: ops}}
"""


@dataclass(frozen=True)
class Account:
    """A dashboard account."""

    email: str
    password: str
    role: str


@dataclass
class Seeded:
    """What :func:`seed` stored."""

    keys: ProjectKeys
    accounts: dict[str, Account]
    hostile: list[str] = field(default_factory=list)  # interaction ids with payloads
    tasks: list[int] = field(default_factory=list)  # open review task ids
    hook_port: int = 0  # where the webhook points; nothing listens there until a test does


def create_user(server: LiveServer, email: str, role: str, password: str) -> Account:
    """``closedloop users create EMAIL --project acme --role ROLE --password-stdin``."""
    result = subprocess.run(
        [server.python, "-m", "closedloop", "users", "create", email]
        + ["--project", PROJECT, "--role", role, "--password-stdin"],
        input=password + "\n",
        cwd=server.workdir,
        env=server.environ(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return Account(email, password, role)


def add_member(server: LiveServer, email: str, role: str, password: str) -> Account:
    """An account made with the Users store on the server's database (faster than the CLI)."""
    engine = create_engine(server.database_url)
    try:
        store = Users(engine)
        store.create(email, password)
        store.grant(email, Projects(engine).get(PROJECT).id, Role.parse(role))
    finally:
        engine.dispose()
    return Account(email, password, role)


def _hostile_events() -> tuple[list[str], list[dict[str, Any]], list[dict[str, Any]]]:
    """One interaction per payload (input, output, model, tags, metadata), each with a
    thumbs-down correction and comment made of it, and a label feedback."""
    ids: list[str] = []
    interactions: list[dict[str, Any]] = []
    reactions: list[dict[str, Any]] = []
    for k, payload in enumerate(PAYLOADS):
        iid = new_id()
        ids.append(iid)
        interactions.append(
            make_event(
                "interaction",
                {
                    "input": [
                        {"role": "system", "content": payload},
                        {"role": "user", "content": f"question {k}: {payload}"},
                    ],
                    "output": f"answer {k}: {payload}",
                    "session_id": f"hostile-session-{k}",
                    "user_id": f"hostile-user-{k}",
                    "model": {"name": payload[:64], "version": "x"},
                    "prompt": {"name": PROMPT, "version": "1"},
                    "tags": [payload[:64]],
                    "metadata": {"note": payload},
                    "latency_ms": 300.0 + k,
                },
                id=iid,
            )
        )
        body = {"interaction_id": iid}
        reactions.append(
            make_event(
                "feedback",
                {**body, "thumbs": -1, "correction": f"fix {k}: {payload}", "comment": payload},
                id=new_id(),
            )
        )
        reactions.append(make_event("feedback", {**body, "label": payload[:64]}, id=new_id()))
    return ids, interactions, reactions


def seed(server: LiveServer, keys: ProjectKeys, accounts: Iterable[Account]) -> Seeded:
    """Fill the project (see the module docstring); returns once the rule has queued its
    review tasks and an analysis has run."""
    seeded = Seeded(keys=keys, accounts={a.role: a for a in accounts})
    with httpx.Client(base_url=server.url, headers=keys.headers(), timeout=30) as api:
        seeded.hook_port = free_port()
        dead = f"http://127.0.0.1:{seeded.hook_port}/hook"  # nothing listens: deliveries fail
        made = api.post("/v1/webhooks", json={"name": "ops", "url": dead, "allow_private": True})
        assert made.status_code == 201, made.text
        rules = RULES_YAML.format(rule=RULE, description=_yaml_string(joined()))
        applied = api.post(
            "/v1/rules/apply", content=rules, headers={"content-type": "application/yaml"}
        )
        assert applied.status_code == 200, applied.text
        for version, template in enumerate(
            (f"You are a support agent. {joined()}", "Answer in {{7*7}} words or fewer."),
            start=1,
        ):
            body: dict[str, Any] = {"name": PROMPT, "template": template}
            if version == 1:
                body["label"] = "production"
            made = api.post("/v1/prompts", json=body)
            assert made.status_code == 201, made.text

        sample = build_sample_events(120, seed=11)
        for start in range(0, len(sample), 200):
            response = api.post("/v1/events", json={"events": sample[start : start + 200]})
            assert response.status_code == 200, response.text
        seeded.hostile, interactions, reactions = _hostile_events()
        post_events(api, interactions)
        post_events(api, reactions)
        for k, iid in enumerate(seeded.hostile[:3]):
            queued = api.post(
                "/v1/review/tasks",
                json={"interaction_id": iid, "priority": 1 + k, "reason": PAYLOADS[k]},
            )
            assert queued.status_code in (200, 201), queued.text

        def fired() -> list[int]:
            tasks = api.get("/v1/review/tasks", params={"state": "open"}).json()["tasks"]
            firings = api.get("/v1/firings", params={"rule": RULE}).json()["firings"]
            ready = len(tasks) >= len(PAYLOADS) and firings and all(f["actions"] for f in firings)
            return [int(t["id"]) for t in tasks] if ready else []

        seeded.tasks = wait_for(
            fired, 60, "the rule's review tasks", database_url=server.database_url
        )

        def enriched() -> bool:
            status = api.get("/v1/enrichment").json()
            return bool(status["interactions_waiting"] == 0)

        wait_for(enriched, 60, "enrichment", database_url=server.database_url)

        def analyzed() -> bool:
            return not api.post("/v1/analyze").json()["skipped"]

        wait_for(analyzed, 60, "an analysis run", database_url=server.database_url)
    return seeded


def _yaml_string(text: str) -> str:
    """``text`` as a double-quoted YAML scalar."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Hook(ThreadingHTTPServer):
    """A webhook receiver on a given port that counts the POSTs it answers 204."""

    daemon_threads = True

    def __init__(self, port: int) -> None:
        self.received = 0
        super().__init__(("127.0.0.1", port), _HookHandler)


class _HookHandler(BaseHTTPRequestHandler):
    server: Hook

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.server.received += 1
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def hook(port: int) -> Iterator[Hook]:
    """A :class:`Hook` listening on ``port`` inside the block."""
    server = Hook(port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def artifacts() -> Path:
    """The screenshot folder: ``$CLOSEDLOOP_ARTIFACTS/screenshots`` or
    ``tests/artifacts/screenshots``, created."""
    base = os.environ.get("CLOSEDLOOP_ARTIFACTS")
    folder = (Path(base) if base else ROOT / "tests" / "artifacts") / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class Watch:
    """What a page did that it must not: alert (or prompt), log an error, throw.

    ``confirm()`` dialogs are the dashboard's own ``data-confirm`` questions: they are
    accepted (or dismissed with ``confirm_answer=False``) and recorded in ``confirms``.
    """

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        self.confirms: list[str] = []
        self.confirm_answer = True
        self.allowed: list[re.Pattern[str]] = []
        page.on("dialog", self._dialog)
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"pageerror: {exc}"))

    def _dialog(self, dialog: Dialog) -> None:
        if dialog.type == "confirm" and "alert(" not in dialog.message:
            self.confirms.append(dialog.message)
            if self.confirm_answer:
                dialog.accept()
            else:
                dialog.dismiss()
            return
        self.problems.append(f"dialog {dialog.type}: {dialog.message!r} on {self.page.url}")
        dialog.dismiss()

    def _console(self, message: ConsoleMessage) -> None:
        if message.type not in ("error", "warning"):
            return
        text = message.text
        if any(p.search(text) for p in self.allowed):
            return
        if message.type == "error" or "Content Security Policy" in text:
            self.problems.append(f"console {message.type}: {text} on {self.page.url}")

    @contextmanager
    def allowing(self, pattern: str) -> Iterator[None]:
        """Accept console errors matching ``pattern`` inside the block (an expected 403)."""
        compiled = re.compile(pattern)
        self.allowed.append(compiled)
        try:
            yield
        finally:
            self.allowed.remove(compiled)

    def check(self) -> None:
        """Fail with every problem seen so far."""
        assert not self.problems, "\n".join(self.problems)


def open_page(context: BrowserContext) -> tuple[Page, Watch]:
    """A new page of ``context`` with its :class:`Watch`."""
    page = context.new_page()
    return page, Watch(page)


def new_context(browser: Browser) -> BrowserContext:
    """A fresh browser profile (no cookies) with the 1280×800 viewport of the screenshots."""
    return browser.new_context(viewport={"width": 1280, "height": 800})


def sign_in(page: Page, base: str, account: Account) -> None:
    """Sign in through the form; waits for the project's pages."""
    page.goto(f"{base}/ui/login")
    page.fill("input[name=email]", account.email)
    page.fill("input[name=password]", account.password)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/p/.*"))


def csrf_of(page: Page) -> str:
    """The page's CSRF token (every page has one, in the sign-out form)."""
    token: str = page.locator("input[name=csrf_token]").first.input_value()
    return token


def poll(check: Callable[[], Any], timeout: float = 20.0, what: str = "it") -> Any:
    """``check()`` once it is truthy (every 0.2 s), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            assert value, f"{what} did not happen within {timeout} s"
            return value
        time.sleep(0.2)
