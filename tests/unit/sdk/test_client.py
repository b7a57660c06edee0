"""The client's events, context, configuration and the trace decorator."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator
from typing import Any

import msgspec
import pytest

import closedloop.sdk.client as sdk
from closedloop.events import decode_event
from closedloop.sdk.context import context, current
from closedloop.sdk.trace import current_interaction_id, trace
from tests.unit.sdk.helpers import Recorder


def make_client(recorder: Recorder) -> sdk.Client:
    return sdk.Client(
        "cl_sk_test", "http://closedloop.test", transport=recorder.transport(), flush_interval=0.05
    )


def sent(recorder: Recorder, client: sdk.Client) -> list[dict[str, Any]]:
    assert client.flush(5).pending == 0
    return recorder.events


def test_every_kind_of_event_passes_the_server_contract() -> None:
    recorder = Recorder()
    client = make_client(recorder)
    iid = client.log_interaction(
        [{"role": "user", "content": "hi"}],
        "hello",
        model="gpt",
        provider="openai",
        prompt="greet",
        prompt_version="2",
        input_tokens=3,
        output_tokens=1,
        latency_ms=12.5,
        tags=["t"],
        metadata={"obj": object()},
    )
    client.feedback(iid, thumbs=-1, correction="hey", comment="rude")
    client.feedback(iid, rating=8, rating_scale=(0, 10), label="ok", source="reviewer")
    for kind, extra in [
        ("edit", {"text": "kept"}),
        ("click", {"target": "a", "rank": 1}),
        ("dwell", {"duration_ms": 5.0}),
        ("copy", {}),
    ]:
        client.signal(iid, kind, **extra)  # type: ignore[arg-type]
    events = sent(recorder, client)
    assert len(events) == 7
    for event in events:
        decode_event(msgspec.json.encode(event))  # raises if the server would reject it
    assert events[0]["body"]["tokens"] == {"input": 3, "output": 1}
    client.close()


def test_context_carries_session_and_user_across_threads_and_tasks() -> None:
    recorder = Recorder()
    client = make_client(recorder)
    with context(session_id="s-1", user_id="u-1"):
        client.feedback("i-1", thumbs=1)
        with context(user_id="u-2"):
            client.feedback("i-2", thumbs=1)

        async def task(n: int) -> None:
            with context(session_id=f"task-{n}"):
                await asyncio.sleep(0.01)
                client.feedback(f"t-{n}", thumbs=1)

        async def main() -> None:
            await asyncio.gather(task(1), task(2))

        asyncio.run(main())
        thread = threading.Thread(target=lambda: client.feedback("th", thumbs=1))
        thread.start()
        thread.join()
    client.feedback("none", thumbs=1, session_id="explicit")
    bodies = {e["body"]["interaction_id"]: e["body"] for e in sent(recorder, client)}
    assert bodies["i-1"]["session_id"] == "s-1" and bodies["i-1"]["user_id"] == "u-1"
    assert bodies["i-2"]["user_id"] == "u-2"
    assert bodies["t-1"]["session_id"] == "task-1" and bodies["t-2"]["session_id"] == "task-2"
    assert bodies["t-1"]["user_id"] == "u-1"
    assert "session_id" not in bodies["th"]  # a new thread starts with an empty context
    assert bodies["none"]["session_id"] == "explicit" and "user_id" not in bodies["none"]
    assert current() == {}
    client.close()


def test_configuration_is_read_from_the_environment_at_construction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLOSEDLOOP_API_KEY", "cl_sk_env")
    monkeypatch.setenv("CLOSEDLOOP_BASE_URL", "http://env.test:1")
    client = sdk.Client()
    assert (client.api_key, client.base_url, client.mode) == (
        "cl_sk_env",
        "http://env.test:1",
        "http",
    )
    client.close(0)
    assert sdk.Client("arg", "http://arg.test").base_url == "http://arg.test"
    monkeypatch.delenv("CLOSEDLOOP_API_KEY")
    disabled = sdk.Client()
    assert disabled.mode == "disabled"
    disabled.signal("i", "copy")
    assert disabled.stats()["dropped_by_reason"] == {"disabled": 1}


def test_the_module_level_functions_use_the_global_client() -> None:
    recorder = Recorder()
    client = sdk.init(
        "cl_sk_test", "http://closedloop.test", transport=recorder.transport(), flush_interval=0.05
    )
    try:
        iid = sdk.log_interaction("q", "a")
        sdk.feedback(iid, thumbs=1)
        sdk.signal(iid, "edit", text="a!")
        assert sdk.get_client() is client
        assert sdk.flush(5).sent == 3
    finally:
        sdk.shutdown()
    assert [e["type"] for e in recorder.events] == ["interaction", "feedback", "signal"]


# -- trace ---------------------------------------------------------------------------------


@pytest.fixture
def traced() -> Iterator[tuple[Recorder, sdk.Client]]:
    recorder = Recorder()
    client = make_client(recorder)
    yield recorder, client
    client.close()


def test_trace_records_a_sync_call_and_returns_its_result(
    traced: tuple[Recorder, sdk.Client],
) -> None:
    recorder, client = traced
    seen: list[str | None] = []

    @trace(client=client, model="calc")
    def add(a: int, b: int) -> int:
        seen.append(current_interaction_id())
        return a + b

    assert add(2, b=3) == 5
    (event,) = sent(recorder, client)
    body = event["body"]
    assert event["id"] == seen[0]
    assert body["input"] == '{"a":2,"b":3}' and body["output"] == "5"
    assert body["model"] == {"name": "calc"} and body["latency_ms"] >= 0
    assert body["metadata"]["function"].endswith("add")


def test_trace_reraises_the_exception_unchanged(traced: tuple[Recorder, sdk.Client]) -> None:
    recorder, client = traced
    error = KeyError("k")

    @trace(client=client)
    def fail(question: str) -> str:
        raise error

    with pytest.raises(KeyError) as info:
        fail("why?")
    assert info.value is error
    (event,) = sent(recorder, client)
    assert event["body"]["input"] == "why?" and "output" not in event["body"]
    assert event["body"]["metadata"]["error"]["type"] == "KeyError"


async def test_trace_records_async_functions(traced: tuple[Recorder, sdk.Client]) -> None:
    recorder, client = traced

    @trace(client=client)
    async def answer(question: str) -> str:
        await asyncio.sleep(0.01)
        return "42"

    assert await answer("life?") == "42"
    (event,) = sent(recorder, client)
    assert event["body"]["output"] == "42" and event["body"]["latency_ms"] >= 10


def test_trace_collects_a_generator_and_keeps_its_return_value(
    traced: tuple[Recorder, sdk.Client],
) -> None:
    recorder, client = traced

    @trace(client=client)
    def words(n: int) -> Generator[str, None, str]:
        for i in range(n):
            yield f"w{i} "
        return "done"

    def run() -> Generator[str, None, str]:
        return (yield from words(3))

    gen = run()
    assert list(gen) == ["w0 ", "w1 ", "w2 "]
    (event,) = sent(recorder, client)
    assert event["body"]["output"] == "w0 w1 w2 "
    assert event["body"]["metadata"]["stream_items"] == 3


def test_trace_records_a_generator_closed_early(traced: tuple[Recorder, sdk.Client]) -> None:
    recorder, client = traced

    @trace
    def endless() -> Generator[str, None, None]:
        while True:
            yield "x"

    sdk._client = client
    try:
        gen = endless()
        assert [next(gen), next(gen)] == ["x", "x"]
        gen.close()
    finally:
        sdk._client = None
    (event,) = sent(recorder, client)
    assert event["body"]["output"] == "xx"


async def test_trace_records_async_generators_with_asend(
    traced: tuple[Recorder, sdk.Client],
) -> None:
    recorder, client = traced

    @trace(client=client)
    async def echo() -> AsyncGenerator[str, str]:
        received = "start"
        while received != "stop":
            received = yield received.upper()

    agen = echo()
    assert await agen.asend(None) == "START"  # type: ignore[arg-type]
    assert await agen.asend("a") == "A"
    with pytest.raises(StopAsyncIteration):
        await agen.asend("stop")
    (event,) = sent(recorder, client)
    assert event["body"]["output"] == "STARTA"


async def test_trace_records_an_async_generator_that_raises(
    traced: tuple[Recorder, sdk.Client],
) -> None:
    recorder, client = traced

    @trace(client=client)
    async def broken() -> AsyncIterator[int]:
        yield 1
        raise RuntimeError("boom")

    items = []
    with pytest.raises(RuntimeError, match="boom"):
        async for item in broken():
            items.append(item)
    assert items == [1]
    (event,) = sent(recorder, client)
    assert event["body"]["metadata"]["error"] == {"type": "RuntimeError", "message": "boom"}


def test_trace_never_raises_when_logging_fails() -> None:
    class Broken:
        def log_interaction(self, *args: Any, **kwargs: Any) -> str:
            raise RuntimeError("logging is down")

    @trace(client=Broken())
    def ok() -> int:
        return 1

    assert ok() == 1
