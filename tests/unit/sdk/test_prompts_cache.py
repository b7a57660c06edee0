"""``Client.get_prompt`` against real local HTTP servers: one answering the resolve JSON
(``http.server`` in a thread), none at all, and one that accepts connections but never answers.

The first fetch of a name is bounded, not awaited, so the tests poll for what the background
thread brings in, with generous deadlines, and assert outcomes, never timings.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import closedloop.sdk.client as sdk
from closedloop.sdk.prompts import PromptCache, ServedPrompt, bucket
from tests.unit.sdk.helpers import Recorder


def version(v: str, template: str) -> dict[str, Any]:
    return {"version": v, "template": template, "examples": [], "config": {"temperature": 0}}


class Registry:
    """What the stand-in server answers, changeable while it runs."""

    def __init__(self) -> None:
        self.prompts: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []


@pytest.fixture
def registry() -> Iterator[tuple[Registry, str]]:
    state = Registry()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server API
            state.requests.append((self.path, self.headers.get("authorization", "")))
            name = self.path.split("/")[3] if self.path.startswith("/v1/prompts/") else ""
            body = state.prompts.get(name)
            data = json.dumps(body if body else {"detail": "no such prompt"}).encode()
            self.send_response(200 if body else 404)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def eventually(get: Callable[[], ServedPrompt], ok: Callable[[ServedPrompt], bool]) -> ServedPrompt:
    deadline = time.monotonic() + 20
    served = get()
    while not ok(served) and time.monotonic() < deadline:
        time.sleep(0.02)
        served = get()
    return served


def resolve_body(test: dict[str, Any] | None = None, production: str = "1") -> dict[str, Any]:
    return {
        "name": "support",
        "label": "production",
        "production": version(production, f"v{production}"),
        "test": test,
    }


def test_the_production_version_is_served_and_refreshed_after_a_promotion(
    registry: tuple[Registry, str],
) -> None:
    state, url = registry
    state.prompts["support"] = resolve_body()
    with sdk.Client("cl_pk_test", url, prompt_refresh_seconds=0.05) as client:
        served = eventually(
            lambda: client.get_prompt("support", fallback="fb"), lambda s: s.variant != "fallback"
        )
        assert (served.variant, served.version, served.template) == ("production", "1", "v1")
        assert served.config == {"temperature": 0}
        assert state.requests[0] == (
            "/v1/prompts/support/resolve?label=production",
            "Bearer cl_pk_test",
        )
        state.prompts["support"] = resolve_body(production="2")  # promoted on the server
        served = eventually(
            lambda: client.get_prompt("support", fallback="fb"), lambda s: s.version == "2"
        )
        assert (served.variant, served.template) == ("production", "v2")


def test_users_are_assigned_to_the_candidate_stickily_by_share(
    registry: tuple[Registry, str],
) -> None:
    state, url = registry
    test = {"id": 5, "share": 0.3, "candidate": version("2", "v2 with examples")}
    state.prompts["support"] = resolve_body(test)
    with sdk.Client("cl_sk_test", url) as client:
        eventually(
            lambda: client.get_prompt("support", fallback="fb"), lambda s: s.variant != "fallback"
        )
        served = {
            u: client.get_prompt("support", fallback="fb", user_id=f"u-{u}") for u in range(1000)
        }
        candidates = [u for u, s in served.items() if s.variant == "candidate"]
        # binomial(1000, 0.3): sd 14.5, so 250..350 holds with near certainty
        assert 250 <= len(candidates) <= 350
        assert all(served[u].version == "2" and served[u].test_id == 5 for u in candidates)
        assert all(bucket(5, f"u-{u}") < 0.3 for u in candidates)
        for u in range(0, 1000, 50):  # the same user always gets the same version
            again = client.get_prompt("support", fallback="fb", user_id=f"u-{u}")
            assert again.version == served[u].version
        anonymous = client.get_prompt("support", fallback="fb")
        assert anonymous.variant == "production", "no user id: production"


def test_an_unknown_prompt_serves_the_fallback(registry: tuple[Registry, str]) -> None:
    state, url = registry
    given = ServedPrompt(name="other", version="0", template="local copy")
    with sdk.Client("cl_sk_test", url, prompt_refresh_seconds=0.05) as client:
        served = client.get_prompt("other", fallback=given)
        time.sleep(0.2)  # several refreshes answer 404
        served = client.get_prompt("other", fallback=given)
    assert any(path.startswith("/v1/prompts/other/") for path, _ in state.requests)
    assert (served.variant, served.template, served.version) == ("fallback", "local copy", "0")


def test_a_server_that_is_down_serves_the_fallback_without_raising() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with sdk.Client("cl_sk_test", f"http://127.0.0.1:{port}") as client:
        served = client.get_prompt("support", fallback="Be helpful. {q}", user_id="u-1")
    assert (served.variant, served.template, served.version) == (
        "fallback",
        "Be helpful. {q}",
        "fallback",
    )


def test_a_server_that_never_answers_still_returns_the_fallback() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections queue in the backlog; nothing is ever read or answered
    try:
        client = sdk.Client("cl_sk_test", f"http://127.0.0.1:{silent.getsockname()[1]}")
        served = client.get_prompt("support", fallback="fb")
        assert served.variant == "fallback"
        assert client.get_prompt("support", fallback="fb").variant == "fallback"
        client.close(timeout=0.1)
    finally:
        silent.close()


def test_a_disabled_client_serves_the_fallback() -> None:
    client = sdk.Client(enabled=False)
    assert client.get_prompt("support", fallback="fb").variant == "fallback"
    sdk.init(enabled=False)
    try:
        assert sdk.get_prompt("support", fallback="fb").template == "fb"
    finally:
        sdk.shutdown()


def test_a_served_prompt_is_logged_with_its_interaction() -> None:
    recorder = Recorder()
    client = sdk.Client("cl_sk_test", "http://closedloop.test", transport=recorder.transport())
    served = ServedPrompt(name="support", version="2", template="t", variant="candidate")
    client.log_interaction("q", "a", **served.log_kwargs)
    assert client.flush(5).pending == 0
    assert recorder.events[0]["body"]["prompt"] == served.ref == {"name": "support", "version": "2"}
    client.close()


def test_a_slow_first_fetch_serves_the_fallback_until_it_arrives() -> None:
    release = threading.Event()

    def fetch(name: str, label: str) -> dict[str, Any]:
        release.wait(10)
        return resolve_body()

    cache = PromptCache(fetch, refresh_seconds=30, first_wait=0.05)
    try:
        assert cache.get("support", fallback="fb").variant == "fallback", "not waited for"
        release.set()
        served = eventually(lambda: cache.get("support", fallback="fb"), lambda s: s.version == "1")
        assert served.variant == "production"
    finally:
        cache.close()


def test_a_failed_refresh_keeps_serving_the_last_version_fetched() -> None:
    answers: list[dict[str, Any] | None] = [resolve_body()]
    calls: list[int] = []

    def fetch(name: str, label: str) -> dict[str, Any]:
        calls.append(1)
        body = answers[-1]
        if body is None:
            raise OSError("connection refused")
        return body

    cache = PromptCache(fetch, refresh_seconds=0.02)
    try:
        eventually(lambda: cache.get("support", fallback="fb"), lambda s: s.version == "1")
        answers.append(None)  # the server goes away
        seen = len(calls)
        deadline = time.monotonic() + 20
        while len(calls) < seen + 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) >= seen + 3, "it kept trying"
        assert cache.get("support", fallback="fb").version == "1"
    finally:
        cache.close()


def test_only_the_first_call_for_a_name_waits_and_a_slow_name_holds_no_other() -> None:
    gate = threading.Event()  # the server never answers "a" while it is closed
    fetched: list[str] = []

    def fetch(name: str, label: str) -> dict[str, Any]:
        fetched.append(name)
        if name == "a":
            gate.wait(60)
            raise OSError("timed out")
        return {**resolve_body(), "name": name}

    cache = PromptCache(fetch, refresh_seconds=30, first_wait=0.01)
    try:
        assert cache.get("a", fallback="fb").variant == "fallback"
        cache.first_wait = 3600.0  # a later call that waited would hang here, not pass
        later: list[ServedPrompt] = []
        caller = threading.Thread(
            target=lambda: later.extend(cache.get("a", fallback="fb") for _ in range(20)),
            daemon=True,
        )
        caller.start()
        caller.join(30)
        assert not caller.is_alive(), "later calls for a name still being fetched do not wait"
        assert [s.variant for s in later] == ["fallback"] * 20
        # "a" is still blocked: the first loads of the other names do not queue behind it
        cache.first_wait = 0.0
        for name in ("b", "c", "d"):
            served = eventually(
                lambda name=name: cache.get(name, fallback="fb"), lambda s: s.variant != "fallback"
            )
            assert (served.variant, served.version) == ("production", "1"), name
        assert not gate.is_set() and fetched.count("a") == 1
    finally:
        gate.set()
        cache.close()


def test_a_refresh_period_that_is_not_positive_is_refused_at_construction() -> None:
    for bad in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="prompt_refresh_seconds"):
            sdk.Client("cl_sk_test", "http://127.0.0.1:9", prompt_refresh_seconds=bad)


def test_a_cache_that_cannot_be_built_serves_the_fallback() -> None:
    client = sdk.Client("cl_sk_test", "http://127.0.0.1:9")
    try:
        client.prompt_refresh_seconds = 0  # changed after construction: the cache refuses it
        served = client.get_prompt("support", fallback="fb")
        assert (served.variant, served.template) == ("fallback", "fb")
    finally:
        client.close(timeout=0.1)
