"""``wrap_openai`` with the real ``openai`` package against a local OpenAI-compatible server,
logging to a real ``closedloop serve``."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import openai
import pytest
import sqlalchemy as sa

from closedloop.sdk.client import Client
from closedloop.sdk.openai import wrap_openai
from closedloop.store import models
from closedloop.store.db import create_engine
from tests.e2e.server import LiveServer

WORDS = ["Hel", "lo ", "the", "re"]


def completion(model: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(WORDS)},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


def chunks(model: str) -> Iterator[dict[str, Any]]:
    base = {"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1, "model": model}
    for word in WORDS:
        yield base | {"choices": [{"index": 0, "delta": {"content": word}}]}
    yield base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield base | {
        "choices": [],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9},
    }


class FakeOpenAI(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        assert self.path == "/v1/chat/completions"
        request = json.loads(self.rfile.read(int(self.headers["content-length"])))
        model = request["model"]
        if model == "broken":
            payload = json.dumps({"error": {"message": "no such model", "type": "x"}}).encode()
            self.send_response(400)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        if not request.get("stream"):
            payload = json.dumps(completion(model)).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
            return
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.end_headers()
        for chunk in chunks(model):
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def fake_openai() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("sdk-openai"))
    live.create_project("acme")
    live.start()
    yield live
    live.close()


@pytest.fixture
def closedloop_client(server: LiveServer) -> Client:
    return Client(server.projects["acme"].secret_key, server.url, flush_interval=0.05)


MESSAGES: list[Any] = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Say hello"},
]


def logged(server: LiveServer, model: str) -> list[Any]:
    engine = create_engine(server.database_url)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.select(models.interactions).where(models.interactions.c.model_name == model)
                ).all()
            )
    finally:
        engine.dispose()


def check(server: LiveServer, model: str, *, stream: bool) -> None:
    (row,) = logged(server, model)
    body = json.loads(row.body)
    assert body["input"] == MESSAGES
    assert body["output"] == "".join(WORDS)
    assert row.model_provider == "openai"
    assert (row.tokens_input, row.tokens_output) == (5, 4)
    assert body["tokens"]["total"] == 9
    assert row.latency_ms is not None and row.latency_ms > 0
    assert body["metadata"].get("stream", False) is stream


def test_sync_calls_are_logged_and_unchanged(
    fake_openai: str, server: LiveServer, closedloop_client: Client
) -> None:
    plain = openai.OpenAI(api_key="sk-test", base_url=fake_openai)
    wrapped = wrap_openai(
        openai.OpenAI(api_key="sk-test", base_url=fake_openai), closedloop_client=closedloop_client
    )
    expected = plain.chat.completions.create(model="sync-1", messages=MESSAGES)
    got = wrapped.chat.completions.create(model="sync-1", messages=MESSAGES)
    assert got.model_dump() == expected.model_dump()
    assert wrap_openai(wrapped) is wrapped  # wrapping twice changes nothing

    stream = wrapped.chat.completions.create(
        model="sync-stream",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    with stream:
        pieces = [c.choices[0].delta.content for c in stream if c.choices]
    assert "".join(p for p in pieces if p) == "".join(WORDS)

    with pytest.raises(openai.BadRequestError):
        wrapped.chat.completions.create(model="broken", messages=MESSAGES)
    assert closedloop_client.close(20).sent == 3
    check(server, "sync-1", stream=False)
    check(server, "sync-stream", stream=True)
    (failed,) = logged(server, "broken")
    assert json.loads(failed.body)["metadata"]["error"]["type"] == "BadRequestError"


async def test_async_calls_are_logged_and_unchanged(
    fake_openai: str, server: LiveServer, closedloop_client: Client
) -> None:
    async with openai.AsyncOpenAI(api_key="sk-test", base_url=fake_openai) as raw:
        wrapped = wrap_openai(raw, closedloop_client=closedloop_client)
        got = await wrapped.chat.completions.create(model="async-1", messages=MESSAGES)
        assert got.choices[0].message.content == "".join(WORDS)
        assert got.usage is not None and got.usage.total_tokens == 9
        stream = await wrapped.chat.completions.create(
            model="async-stream",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        assert "".join(p for p in pieces if p) == "".join(WORDS)
    assert closedloop_client.close(20).sent == 2
    check(server, "async-1", stream=False)
    check(server, "async-stream", stream=True)
