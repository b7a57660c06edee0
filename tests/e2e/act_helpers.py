"""Helpers of ``test_act_loop.py``: a real webhook receiver, fast worker settings, polling.

Not a test module.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import httpx
import sqlalchemy as sa

from closedloop import make_event, new_id
from closedloop.store import models
from closedloop.store.db import create_engine

__all__ = [
    "FAST_ENV",
    "Delivery",
    "Receiver",
    "feedback",
    "interaction",
    "job_summary",
    "post_events",
    "receiver",
    "wait_for",
]

T = TypeVar("T")

# Every act job of the server's worker every fraction of a second; loopback webhooks allowed.
FAST_ENV = {
    "CLOSEDLOOP_JOB_POLL_SECONDS": "0.1",
    "CLOSEDLOOP_ENRICH_INTERVAL_SECONDS": "0.3",
    "CLOSEDLOOP_ACT_INTERVAL_SECONDS": "0.5",
    "CLOSEDLOOP_WEBHOOK_INTERVAL_SECONDS": "0.2",
    "CLOSEDLOOP_AB_INTERVAL_SECONDS": "0.5",
    "CLOSEDLOOP_WEBHOOK_ALLOW": '["127.0.0.1/32"]',
    "CLOSEDLOOP_EMBEDDER": "lexical",
}


def wait_for(
    check: Callable[[], T | None],
    timeout: float = 30.0,
    what: str = "the condition",
    *,
    database_url: str | None = None,
) -> T:
    """Poll ``check`` until it returns a truthy value; fail after ``timeout`` seconds (saying,
    with ``database_url``, what the worker's job queue holds)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            queue = f"\njobs:\n{job_summary(database_url)}" if database_url else ""
            raise AssertionError(
                f"{what} did not happen within {timeout} s (last: {value!r}){queue}"
            )
        time.sleep(0.2)


def job_summary(database_url: str) -> str:
    """The worker's job queue by kind and state, with the jobs held now (for failures)."""
    engine = create_engine(database_url)
    j = models.jobs
    try:
        with engine.connect() as conn:
            counts = conn.execute(
                sa.select(j.c.kind, j.c.state, sa.func.count(), sa.func.max(j.c.last_error))
                .group_by(j.c.kind, j.c.state)
                .order_by(j.c.kind, j.c.state)
            ).all()
            held = conn.execute(
                sa.select(j.c.id, j.c.kind, j.c.created_at, j.c.lease_until, j.c.leased_by).where(
                    j.c.lease_until.is_not(None), j.c.finished_at.is_(None)
                )
            ).all()
    finally:
        engine.dispose()
    lines = [str(tuple(r)) for r in counts] + ["held:"] + [str(tuple(r)) for r in held]
    return "\n".join(lines)


@dataclass(frozen=True)
class Delivery:
    """One request the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes


class Receiver:
    """A loopback HTTP server that records every POST and answers 204."""

    def __init__(self) -> None:
        self.seen: list[Delivery] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                size = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(size)
                with outer._lock:
                    outer.seen.append(
                        Delivery(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                    )
                self.send_response(204)
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def deliveries(self) -> list[Delivery]:
        with self._lock:
            return list(self.seen)


@contextmanager
def receiver() -> Iterator[Receiver]:
    """A started :class:`Receiver`, shut down at exit."""
    found = Receiver()
    found.thread.start()
    try:
        yield found
    finally:
        found.server.shutdown()
        found.server.server_close()


def interaction(text: str, output: str, **body: Any) -> tuple[str, dict[str, Any]]:
    """A new interaction envelope and its id."""
    iid = new_id()
    return iid, make_event("interaction", {"input": text, "output": output, **body}, id=iid)


def feedback(iid: str, **body: Any) -> dict[str, Any]:
    """A feedback envelope on interaction ``iid``."""
    return make_event("feedback", {"interaction_id": iid, **body}, id=new_id())


def post_events(client: httpx.Client, events: list[dict[str, Any]]) -> None:
    """POST ``events`` and check every one was stored."""
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    assert {r["status"] for r in response.json()["results"]} == {"stored"}, response.text
