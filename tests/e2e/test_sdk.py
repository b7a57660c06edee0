"""The Python SDK against a real ``closedloop serve``, a local stub and embedded mode."""

from __future__ import annotations

import collections
import gzip
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import tests.e2e.server as server_module
from closedloop.sdk.client import Client
from closedloop.sdk.trace import trace
from closedloop.store import models
from closedloop.store.db import create_engine
from tests.conftest import PostgresFactory
from tests.e2e.server import LiveServer, ProjectKeys, free_port, stored_ids


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("sdk-server"))
    live.create_project("acme")
    live.start()
    yield live
    live.close()


@pytest.fixture
def keys(server: LiveServer) -> ProjectKeys:
    return server.projects["acme"]


def sdk_client(url: str, key: str, **kwargs: Any) -> Client:
    kwargs.setdefault("flush_interval", 0.05)
    return Client(key, url, **kwargs)


def interactions(database_url: str, ids: list[str]) -> dict[str, Any]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(models.interactions).where(models.interactions.c.id.in_(ids))
            ).all()
    finally:
        engine.dispose()
    return {row.id: row for row in rows}


def count_rows(database_url: str, table: sa.Table) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
    finally:
        engine.dispose()


def assert_stored_once(database_url: str, ids: list[str]) -> None:
    rows, ledger = stored_ids(database_url)
    assert [i for i in ids if rows[i] != 1 or ledger[i] != 1] == []


# -- delivery ------------------------------------------------------------------------------


def test_events_arrive_exactly_once(server: LiveServer, keys: ProjectKeys) -> None:
    client = sdk_client(server.url, keys.secret_key, batch_events=40)
    ids = [client.log_interaction(f"q{i}", "a", model="m", tags=["once"]) for i in range(300)]
    for iid in ids[:50]:
        client.feedback(iid, thumbs=1)
        client.signal(iid, "edit", text="a!")
    result = client.close(30)
    assert (result.sent, result.pending, result.failed, result.dropped) == (400, 0, 0, 0)
    assert_stored_once(server.database_url, ids)
    assert client.stats()["stored"] == 400


def test_a_wrong_key_is_final_and_not_retried(server: LiveServer) -> None:
    client = sdk_client(server.url, "cl_sk_wrong", backoff_base=0.01)
    client.signal("i-1", "copy")
    result = client.close(10)
    assert result.failed == 1 and result.pending == 0
    stats = client.stats()
    assert "HTTP 401" in stats["failed_by_reason"] and stats["retries"] == 0


def test_an_outage_loses_nothing_with_the_spool(
    live_servers: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    port = free_port()
    monkeypatch.setattr(server_module, "free_port", lambda: port)
    live = live_servers(name="outage")
    keys = live.create_project("acme")
    client = sdk_client(
        f"http://127.0.0.1:{port}",
        keys.secret_key,
        spool_path=tmp_path / "spool" / "events.jsonl",
        backoff_base=0.05,
        backoff_max=0.2,
        batch_events=25,
    )
    ids = [client.log_interaction(f"down {i}", "a") for i in range(200)]
    during = client.flush(0.5)
    assert during.pending == 200 and during.dropped == 0 and during.sent == 0
    live.start()
    ids += [client.log_interaction(f"up {i}", "a") for i in range(50)]
    after = client.close(30)
    assert (after.sent, after.pending, after.dropped, after.failed) == (250, 0, 0, 0)
    assert_stored_once(live.database_url, ids)
    assert not (tmp_path / "spool" / "events.jsonl").read_bytes()


def test_without_a_spool_an_outage_keeps_memory_bounded_and_never_blocks() -> None:
    client = sdk_client(
        f"http://127.0.0.1:{free_port()}",
        "cl_sk_nobody",
        max_queue_events=100,
        batch_events=10,
        backoff_base=0.05,
        max_retries=1,
    )
    started = time.perf_counter()
    for i in range(5000):
        client.log_interaction(f"q{i}", "a")
    elapsed = time.perf_counter() - started
    stats = client.stats()
    assert elapsed < 2.0, f"5000 submits took {elapsed:.2f} s"
    assert stats["queued"] <= 100
    assert stats["dropped_by_reason"]["queue_full"] >= 4800
    result = client.close(0.5)
    assert result.sent == 0
    assert result.sent + result.failed + result.dropped + result.pending == 5000


# -- a stub answering 429 or 400 -----------------------------------------------------------


class Stub:
    """A tiny HTTP server standing in for closedloop, answering from a script."""

    def __init__(self, answers: list[tuple[int, dict[str, str]]]) -> None:
        self.answers = collections.deque(answers)
        self.requests: list[tuple[float, list[dict[str, Any]]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                events = json.loads(gzip.decompress(body))["events"]
                stub.requests.append((time.monotonic(), events))
                status, headers = stub.answers.popleft() if stub.answers else (200, {})
                payload = b'{"title": "scripted"}'
                if status == 200:
                    results = [{"id": e["id"], "status": "stored"} for e in events]
                    payload = json.dumps({"results": results}).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_429_with_retry_after_is_honoured() -> None:
    stub = Stub([(429, {"retry-after": "1"})])
    try:
        client = sdk_client(stub.url, "cl_sk_x", backoff_base=0.01)
        client.feedback("i-1", thumbs=-1)
        result = client.close(10)
    finally:
        stub.close()
    assert result.sent == 1 and len(stub.requests) == 2
    (first, events), (second, again) = stub.requests
    assert second - first >= 1.0
    assert events == again  # the same ids: the retry is idempotent


def test_a_400_is_not_retried() -> None:
    stub = Stub([(400, {})])
    try:
        client = sdk_client(stub.url, "cl_sk_x", backoff_base=0.01)
        client.feedback("i-1", thumbs=1)
        result = client.close(5)
    finally:
        stub.close()
    assert len(stub.requests) == 1
    assert (result.sent, result.failed, result.pending) == (0, 1, 0)


def test_a_small_write_queue_answers_429_and_the_sdk_still_delivers_everything(
    live_servers: Callable[..., LiveServer],
) -> None:
    live = live_servers(env={"CLOSEDLOOP_WRITE_QUEUE_EVENTS": "20"}, name="tiny-queue")
    keys = live.create_project("acme")
    live.start()
    clients = [
        sdk_client(live.url, keys.secret_key, batch_events=20, backoff_base=0.05) for _ in range(4)
    ]
    ids = [c.log_interaction(f"q{i}", "a") for i in range(150) for c in clients]
    results = [c.close(60) for c in clients]
    assert sum(r.sent for r in results) == 600 and all(r.pending == 0 for r in results)
    assert_stored_once(live.database_url, ids)


# -- embedded mode -------------------------------------------------------------------------


def run_embedded(database_url: str, tmp_path: Path) -> None:
    client = Client(
        database_url=database_url,
        project="embedded",
        flush_interval=0.05,
        embedded_settings={"data_dir": tmp_path / "data"},
    )
    ids = [client.log_interaction(f"q{i}", "a", model="local") for i in range(30)]
    client.feedback(ids[0], correction="better")
    client.signal(ids[0], "copy")
    result = client.close(30)
    assert (result.sent, result.pending, result.failed) == (32, 0, 0)
    assert client.mode == "embedded"
    assert_stored_once(database_url, ids)
    assert count_rows(database_url, models.feedback) == 1
    again = Client(database_url=database_url, project="embedded", flush_interval=0.05)
    again.log_interaction("q", "a", id=ids[0])  # the project exists now; a duplicate id
    assert again.close(30).sent == 1
    assert again.stats()["duplicate"] == 1


def test_embedded_mode_stores_events_on_sqlite(tmp_path: Path) -> None:
    run_embedded(f"sqlite:///{tmp_path / 'embedded.db'}", tmp_path)


@pytest.mark.postgresql
def test_embedded_mode_stores_events_on_postgresql(
    postgres: PostgresFactory, tmp_path: Path
) -> None:
    run_embedded(postgres.new_url(), tmp_path)


# -- fork ----------------------------------------------------------------------------------


def test_a_forked_child_sends_and_the_parent_queue_is_intact(
    server: LiveServer, keys: ProjectKeys
) -> None:
    client = sdk_client(server.url, keys.secret_key, flush_interval=0.5)
    parent_ids = [client.log_interaction(f"parent {i}", "a") for i in range(20)]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own queue, thread and HTTP client
        code = 1
        try:
            os.close(read)
            child_ids = [client.log_interaction(f"child {i}", "a") for i in range(20)]
            result = client.flush(20)
            os.write(write, json.dumps(child_ids).encode())
            code = 0 if (result.sent, result.pending) == (20, 0) else 2
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        child_ids = json.loads(pipe.read() or b"[]")
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    parent_ids += [client.log_interaction(f"parent more {i}", "a") for i in range(5)]
    result = client.close(20)
    assert (result.sent, result.pending, result.dropped) == (25, 0, 0)
    assert len(child_ids) == 20
    assert_stored_once(server.database_url, parent_ids + child_ids)


# -- trace ---------------------------------------------------------------------------------


async def test_traced_functions_reach_the_server(server: LiveServer, keys: ProjectKeys) -> None:
    client = sdk_client(server.url, keys.secret_key)

    @trace(client=client, model="sync")
    def sync_answer(question: str) -> str:
        return "sync!"

    @trace(client=client, model="async")
    async def async_answer(question: str) -> str:
        return "async!"

    @trace(client=client, model="gen")
    def gen_answer(question: str) -> Iterator[str]:
        yield "ge"
        yield "n!"

    assert sync_answer("a") == "sync!"
    assert await async_answer("b") == "async!"
    assert "".join(gen_answer("c")) == "gen!"
    assert client.close(20).sent == 3
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.select(models.interactions.c.model_name, models.interactions.c.body).where(
                    models.interactions.c.model_name.in_(["sync", "async", "gen"])
                )
            ).all()
    finally:
        engine.dispose()
    outputs = {r.model_name: json.loads(r.body)["output"] for r in rows}
    assert outputs == {"sync": "sync!", "async": "async!", "gen": "gen!"}
