"""``Client.recall``: entries from a real local HTTP server, and ``[]`` - never an exception,
never a wait past the timeout - when the server hangs, refuses, fails or talks nonsense."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import closedloop.sdk.client as sdk
from closedloop.sdk.recall import Recalled

ENTRY = {
    "id": 4,
    "query": "How do I reset my password?",
    "answer": "Open Settings, then Security.",
    "score": 0.87,
    "source": "correction",
    "created_at": "2026-01-02T03:04:05+00:00",
}


class _Server:
    """A real HTTP server on the loopback interface that answers what a test sets."""

    def __init__(self) -> None:
        self.status = 200
        self.body = json.dumps({"entries": [ENTRY]}).encode()
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                outer.requests.append(
                    {
                        "path": self.path,
                        "authorization": self.headers.get("authorization"),
                        "json": json.loads(self.rfile.read(length)),
                    }
                )
                self.send_response(outer.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
    yield s
    s.close()


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A socket that accepts connections (the kernel completes the handshake) and never
    answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def _client(url: str) -> sdk.Client:
    return sdk.Client(api_key="cl_sk_test", base_url=url, flush_interval=0.05)


def test_recall_returns_the_servers_entries(server: _Server) -> None:
    client = _client(server.url)
    try:
        found = client.recall("reset password", k=2, timeout=5)
    finally:
        client.close(timeout=0)
    assert found == [Recalled.from_json(ENTRY)]
    assert found[0].answer == "Open Settings, then Security." and found[0].score == 0.87
    (request,) = server.requests
    assert request["path"] == "/v1/knowledge/recall"
    assert request["authorization"] == "Bearer cl_sk_test"
    assert request["json"] == {"query": "reset password", "k": 2}


def test_a_server_that_never_answers_gives_nothing_after_the_timeout(silent_url: str) -> None:
    client = _client(silent_url)
    try:
        start = time.monotonic()
        found = client.recall("reset password", timeout=0.3)
        waited = time.monotonic() - start
    finally:
        client.close(timeout=0)
    assert found == []
    assert waited < 5, "recall waited far past its timeout"


def test_a_refused_connection_gives_nothing() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed on leaving: nothing listens there
    client = _client(f"http://127.0.0.1:{port}")
    try:
        assert client.recall("reset password", timeout=2) == []
    finally:
        client.close(timeout=0)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b'{"detail": "boom"}'),
        (401, b'{"detail": "bad key"}'),
        (200, b"not json"),
        (200, b'{"entries": [{"id": "x"}]}'),
    ],
)
def test_a_failing_or_garbled_answer_gives_nothing(
    server: _Server, status: int, body: bytes
) -> None:
    server.status, server.body = status, body
    client = _client(server.url)
    try:
        assert client.recall("reset password", timeout=5) == []
    finally:
        client.close(timeout=0)
    assert len(server.requests) == 1


def test_a_disabled_client_recalls_nothing(server: _Server) -> None:
    client = sdk.Client(enabled=False)
    assert client.recall("reset password") == []
    assert server.requests == []


def test_the_module_level_recall_uses_the_global_client(server: _Server) -> None:
    sdk.init(api_key="cl_sk_test", base_url=server.url, flush_interval=0.05)
    try:
        assert [r.id for r in sdk.recall("reset password", timeout=5)] == [4]
    finally:
        sdk.shutdown(timeout=0)


def test_embedded_recall_searches_the_database(tmp_path: Path) -> None:
    from closedloop.act.knowledge import add_entry
    from closedloop.runtime import Runtime
    from closedloop.settings import Settings

    url = f"sqlite:///{tmp_path / 'app.db'}"
    options: dict[str, Any] = {"data_dir": tmp_path / "data", "run_worker": False}
    runtime = Runtime.build(Settings(database_url=url, **options), load_plugins=False)
    runtime.start()
    try:
        project, _, _ = runtime.projects.create("demo")
        add_entry(
            runtime.engine,
            runtime.embedder(),
            project.id,
            query="How do I reset my password?",
            answer="Open Settings, then Security.",
            source="manual",
        )
    finally:
        runtime.stop()
    client = sdk.Client(database_url=url, project="demo", embedded_settings=options)
    try:
        found = client.recall("reset my password", timeout=60)
    finally:
        client.close(timeout=5)
    assert [r.answer for r in found] == ["Open Settings, then Security."]
