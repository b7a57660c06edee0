"""The browser snippet in a real browser: Debian's chromium, driven by Playwright, on a page
served from a second origin, against a real ``closedloop serve``.

The page loads ``/sdk/closedloop.js`` from the server, shows an answer with its interaction id,
and wires a thumbs-down button to ``closedloop.feedback``. The snippet's flush delay is set to a
minute, so nothing leaves the page until it is hidden: what the store then holds was sent by the
``pagehide``/``visibilitychange`` flush, with ``navigator.sendBeacon``.

Never downloads a browser: without ``/usr/bin/chromium`` (``apt-get install chromium``) the
tests fail and say so.
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from closedloop import make_event, new_id
from tests.e2e.conftest import MakeServer
from tests.e2e.server import LiveServer, ProjectKeys

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
ANSWER = "Two plus two is five."
KEPT = "Two plus two is four."

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>answer</title></head>
<body>
<div id="answer" contenteditable="true" data-interaction="{interaction}">{answer}</div>
<button id="down" type="button">thumbs down</button>
<a id="away" href="/bye.html">leave</a>
<script>
  /* a spy that outlives the page: how the snippet sent, kept in this origin's storage */
  function note(how, detail) {{
    var seen = JSON.parse(localStorage.getItem("sent") || "[]");
    seen.push([how, detail]);
    localStorage.setItem("sent", JSON.stringify(seen));
  }}
  var beacon = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = function (url, data) {{
    var ok = beacon(url, data);
    note("beacon", data.type + " " + ok);
    return ok;
  }};
  var realFetch = window.fetch;
  window.fetch = function (url, init) {{
    note("fetch", url);
    return realFetch(url, init).then(
      function (r) {{ note("answer", String(r.status)); return r; }},
      function (e) {{ note("failed", String(e)); throw e; }});
  }};
</script>
<script src="{server}/sdk/closedloop.js" data-key="{key}"></script>
<script>
  closedloop.init({{delay: 60000}});  /* only the page-hide flush sends */
  var answer = document.getElementById("answer");
  var id = answer.dataset.interaction;
  closedloop.observe(answer, id);
  document.getElementById("down").addEventListener("click", function () {{
    closedloop.feedback(id, {{thumbs: -1, comment: "wrong capital"}});
  }});
</script>
</body></html>
"""


class Pages(ThreadingHTTPServer):
    """The app's origin: serves ``/answer/<interaction id>`` and ``/bye.html``."""

    daemon_threads = True

    def __init__(self, server_url: str, key: str) -> None:
        self.server_url = server_url
        self.key = key
        super().__init__(("127.0.0.1", 0), _Handler)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: Pages

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        if self.path.startswith("/answer/"):
            interaction = html.escape(self.path.removeprefix("/answer/"))
            page = PAGE.format(
                interaction=interaction,
                answer=html.escape(ANSWER),
                server=self.server.server_url,
                key=html.escape(self.server.key),
            )
        elif self.path == "/bye.html":
            page = "<!doctype html><title>bye</title><p>bye</p>"
        else:
            self.send_error(404)
            return
        data = page.encode()
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: apt-get install chromium (never a download)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture
def site(live_servers: MakeServer) -> Iterator[tuple[LiveServer, ProjectKeys, Pages]]:
    """A live server whose project acme allows the origin of a second, local web server."""
    server = live_servers()
    keys = server.create_project("acme")
    pages = Pages("", keys.public_key)
    thread = threading.Thread(target=pages.serve_forever, daemon=True)
    thread.start()
    try:
        server.cli("projects", "origins", "acme", pages.origin)
        server.start()
        pages.server_url = server.url
        yield server, keys, pages
    finally:
        pages.shutdown()
        pages.server_close()
        thread.join(10)


def create_interaction(server: LiveServer, keys: ProjectKeys) -> str:
    interaction = new_id()
    event = make_event("interaction", {"input": "two plus two?", "output": ANSWER}, id=interaction)
    r = httpx.post(
        f"{server.url}/v1/events", json={"events": [event]}, headers=keys.headers(), timeout=30
    )
    assert r.status_code == 200, r.text
    return interaction


def wait_for(
    server: LiveServer,
    keys: ProjectKeys,
    interaction: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float = 20.0,
) -> dict[str, Any]:
    """Poll the read API until ``done`` holds for the interaction (or fail with what is there)."""
    deadline = time.monotonic() + timeout
    seen: dict[str, Any] = {}
    with httpx.Client(base_url=server.url, headers=keys.headers(), timeout=10) as client:
        while time.monotonic() < deadline:
            r = client.get(f"/v1/interactions/{interaction}")
            assert r.status_code == 200, r.text
            seen = r.json()
            if done(seen):
                return seen
            time.sleep(0.1)
    raise AssertionError(f"not stored in {timeout}s: {seen}\n{server.log_tail()}")


def kinds(interaction: dict[str, Any]) -> list[str]:
    return sorted(s["kind"] for s in interaction["signals"])


def refusals(server: LiveServer) -> float:
    """How many ``POST /v1/browser/events`` the server answered 403 (from ``/metrics``)."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "closedloop_http_requests_total"
        and sample.labels.get("route") == "/v1/browser/events"
        and sample.labels.get("status") == "403"
    )


def sends(page: Page) -> list[list[str]]:
    """What the page's spy saw the snippet send, ``[how, detail]`` each."""
    seen: list[list[str]] = json.loads(page.evaluate("localStorage.getItem('sent') || '[]'"))
    return seen


def test_thumbs_down_and_the_edited_answer_arrive_by_beacon_when_the_page_is_left(
    site: tuple[LiveServer, ProjectKeys, Pages], browser: Browser
) -> None:
    server, keys, pages = site
    interaction = create_interaction(server, keys)
    page = browser.new_page()
    page.goto(f"{pages.origin}/answer/{interaction}")
    page.wait_for_function("window.closedloop && window.closedloop.version")
    page.click("#down")
    page.click("#answer")
    page.keyboard.press("Control+A")
    page.keyboard.type(KEPT)
    assert page.inner_text("#answer") == KEPT
    assert sends(page) == [], "nothing leaves the page before it is hidden"
    page.click("#away")  # navigating away fires pagehide
    page.wait_for_url("**/bye.html")
    assert sends(page) == [["beacon", "text/plain true"]], "one beacon, no fetch fallback"
    page.close(run_before_unload=True)

    stored = wait_for(
        server,
        keys,
        interaction,
        lambda i: bool(i["feedback"]) and "edit" in kinds(i) and "dwell" in kinds(i),
    )
    (feedback,) = stored["feedback"]
    assert feedback["thumbs"] == -1
    assert feedback["comment"] == "wrong capital"
    edits = [s for s in stored["signals"] if s["kind"] == "edit"]
    assert edits[-1]["text"] == KEPT
    (dwell,) = [s for s in stored["signals"] if s["kind"] == "dwell"]
    assert dwell["duration_ms"] > 0
    assert "abandon" not in kinds(stored), "the answer was used, not abandoned"


def test_an_answer_left_untouched_is_recorded_as_abandoned(
    site: tuple[LiveServer, ProjectKeys, Pages], browser: Browser
) -> None:
    server, keys, pages = site
    interaction = create_interaction(server, keys)
    page = browser.new_page()
    page.goto(f"{pages.origin}/answer/{interaction}")
    page.wait_for_function("window.closedloop && window.closedloop.version")
    page.goto(f"{pages.origin}/bye.html")

    stored = wait_for(server, keys, interaction, lambda i: "abandon" in kinds(i))
    assert kinds(stored) == ["abandon", "dwell"]
    assert stored["feedback"] == []


def test_a_page_on_an_origin_the_project_does_not_allow_stores_nothing(
    site: tuple[LiveServer, ProjectKeys, Pages], browser: Browser
) -> None:
    server, keys, pages = site
    interaction = create_interaction(server, keys)
    server.cli("projects", "origins", "acme", "https://elsewhere.example.com")
    # The running server caches keys and origins for a short while: wait until it refuses.
    deadline = time.monotonic() + 30
    with httpx.Client(base_url=server.url, timeout=10) as client:
        while time.monotonic() < deadline:
            r = client.post(
                "/v1/browser/events",
                params={"key": keys.public_key},
                content=b'{"events": []}',
                headers={"content-type": "text/plain", "origin": pages.origin},
            )
            if r.status_code == 403:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the server kept allowing the removed origin")
    before = refusals(server)
    page = browser.new_page()
    page.goto(f"{pages.origin}/answer/{interaction}")
    page.wait_for_function("window.closedloop && window.closedloop.version")
    page.click("#down")
    page.evaluate("closedloop.flush()")  # sends with fetch now
    assert sends(page)[0] == ["fetch", f"{server.url}/v1/browser/events"]
    deadline = time.monotonic() + 10
    while refusals(server) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert refusals(server) > before, "the server refused the page's request"
    page.wait_for_function("JSON.parse(localStorage.getItem('sent')).length > 1")
    assert sends(page)[1][0] == "failed", "no CORS header on the refusal: the page cannot read it"
    page.close()
    r = httpx.get(f"{server.url}/v1/interactions/{interaction}", headers=keys.headers(), timeout=10)
    assert r.json()["feedback"] == []
