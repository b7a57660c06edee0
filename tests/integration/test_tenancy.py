"""The cross-tenant matrix: no key of one project reads, or writes into, another project.

Project A (``acme``) holds interactions, feedback and signals; project B (``globex``) holds
nothing. Every route of the app (enumerated from the app itself, so a new endpoint cannot
escape) is called with B's secret key, B's public key, A's public key and no key against A's
objects. Object reads answer 404 or 401, indistinguishable from a missing object; scoped lists
answer B's (empty) data or 401; no body carries A's data. Writes with B's keys land in B's
project and never attach to A's interactions. A's own secret key gets 200 on every call, so
the matrix cannot pass because authentication is broken.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fastapi.routing
import httpx
import pytest

from closedloop import make_event
from closedloop.analyze.quality_drift import store_alarm
from closedloop.ingest.app import create_app
from closedloop.runtime import Runtime
from tests.conftest import Tenant
from tests.integration.test_otlp_tenancy import check_post_traces

# ---------------------------------------------------------------------------------------------
# Project A's data: every string below is A's and must never reach another caller.

A_INTERACTION = "acme-int-1"
A_INTERACTION_2 = "acme-int-2"
A_FEEDBACK = "acme-fb-1"
A_ORPHAN_FEEDBACK = "acme-fb-orphan"
A_MISSING_INTERACTION = "acme-int-not-yet"
A_SIGNAL = "acme-sig-1"
A_SIGNAL_2 = "acme-sig-2"
A_INPUT = "ACME-CONFIDENTIAL-INPUT how do I vent the reactor"
A_OUTPUT = "ACME-CONFIDENTIAL-OUTPUT open valve 7"
A_COMMENT = "ACME-CONFIDENTIAL-COMMENT wrong valve"
A_EDIT = "ACME-CONFIDENTIAL-EDIT open valve 9"
A_USER = "acme-user-1"
A_SESSION = "acme-session-1"
A_MODEL = "acme-model"
A_MODEL_VERSION = "acme-model-v1"
A_PROMPT = "acme-prompt"
A_PROMPT_VERSION = "acme-prompt-v1"
A_LABEL = "acme-label"

A_MARKERS = (
    "acme",
    A_INTERACTION,
    A_INTERACTION_2,
    A_FEEDBACK,
    A_ORPHAN_FEEDBACK,
    A_MISSING_INTERACTION,
    A_SIGNAL,
    A_SIGNAL_2,
    A_INPUT,
    A_OUTPUT,
    A_COMMENT,
    A_EDIT,
    A_USER,
    A_SESSION,
    A_MODEL,
    A_MODEL_VERSION,
    A_PROMPT,
    A_PROMPT_VERSION,
    A_LABEL,
)

# The object ids a path parameter stands for, and ids no project holds (the control).
A_OBJECT = {
    "interaction_id": A_INTERACTION,
    "feedback_id": A_FEEDBACK,
    "signal_id": A_SIGNAL,
    "session_id": A_SESSION,
}
NOBODY_OBJECT = {
    "interaction_id": "none-int",
    "feedback_id": "none-fb",
    "signal_id": "none-sig",
    "session_id": "none-session",
}

# One query per list filter, each matching some of A's data.
A_QUERIES: dict[str, dict[str, str]] = {
    "since": {"since": "2025-06-01T00:00:00Z"},
    "until": {"until": "2025-06-02T00:00:00Z"},
    "model": {"model": A_MODEL},
    "model_version": {"model_version": A_MODEL_VERSION},
    "prompt": {"prompt": A_PROMPT},
    "prompt_version": {"prompt_version": A_PROMPT_VERSION},
    "user_id": {"user_id": A_USER},
    "session_id": {"session_id": A_SESSION},
    "feedback_kind": {"feedback_kind": "thumbs"},
    "feedback_value": {"feedback_kind": "label", "feedback_value": A_LABEL},
    "interaction_id": {"interaction_id": A_INTERACTION},
    "orphaned": {"orphaned": "true"},
    "limit": {"limit": "1"},
    # "cursor": A's own next_cursor of the list, filled in by the world fixture
}

# Routes that need no key and serve no project's data.
UNAUTHENTICATED = {
    ("GET", "/openapi.json"),
    ("GET", "/docs"),
    ("GET", "/docs/oauth2-redirect"),
    ("GET", "/redoc"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/v1/schema"),
    ("OPTIONS", "/v1/events"),
}


def _when(minute: int) -> str:
    return f"2025-06-01T10:{minute:02d}:00+00:00"


def _event(kind: str, body: dict[str, Any], id: str, minute: int) -> dict[str, Any]:
    event = make_event(kind, body, id=id)  # type: ignore[arg-type]
    event["timestamp"] = _when(minute)
    return event


A_EVENTS = [
    _event(
        "interaction",
        {
            "input": A_INPUT,
            "output": A_OUTPUT,
            "user_id": A_USER,
            "session_id": A_SESSION,
            "model": {"name": A_MODEL, "version": A_MODEL_VERSION},
            "prompt": {"name": A_PROMPT, "version": A_PROMPT_VERSION},
        },
        A_INTERACTION,
        0,
    ),
    _event("interaction", {"input": A_INPUT + " again"}, A_INTERACTION_2, 1),
    _event(
        "feedback",
        {"interaction_id": A_INTERACTION, "thumbs": -1, "label": A_LABEL, "comment": A_COMMENT},
        A_FEEDBACK,
        2,
    ),
    _event(
        "feedback", {"interaction_id": A_MISSING_INTERACTION, "thumbs": 1}, A_ORPHAN_FEEDBACK, 3
    ),
    _event(
        "signal", {"interaction_id": A_INTERACTION, "kind": "edit", "text": A_EDIT}, A_SIGNAL, 4
    ),
    _event("signal", {"interaction_id": A_INTERACTION_2, "kind": "copy"}, A_SIGNAL_2, 5),
]


# ---------------------------------------------------------------------------------------------
# The routes, straight from the app.


def _route_contexts(routes: Iterable[Any]) -> Iterator[Any]:
    """Every route of the app, flattening included routers on FastAPI versions that nest."""
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    return iter(flatten(routes)) if flatten is not None else iter(routes)


def app_routes() -> list[tuple[str, str]]:
    """Every ``(method, path)`` the app answers (HEAD folded into GET)."""
    out: set[tuple[str, str]] = set()
    for route in _route_contexts(create_app().routes):
        path = getattr(route, "path", None) or repr(route)
        methods = set(getattr(route, "methods", None) or {"*"})
        for method in methods:
            if method == "HEAD" and "GET" in methods:
                continue
            out.add((method, path))
    return sorted(out)


# The CORS preflight of /v1/events is answered by middleware (closedloop.ingest.cors), not
# a route: add it so the matrix still covers it.
MIDDLEWARE_ROUTES = [("OPTIONS", "/v1/events"), ("OPTIONS", "/v1/browser/events")]
ROUTES = sorted(set(app_routes()) | set(MIDDLEWARE_ROUTES))


def _fill(path: str, ids: dict[str, str]) -> str:
    for name, value in ids.items():
        path = path.replace("{" + name + "}", value)
    assert "{" not in path, f"{path}: a path parameter the matrix has no object for"
    return path


# ---------------------------------------------------------------------------------------------
# The world: both projects, A seeded.


@dataclass
class World:
    client: httpx.AsyncClient
    runtime: Runtime
    a: Tenant
    b: Tenant
    openapi: dict[str, Any]
    cursors: dict[str, str]

    def callers(self) -> dict[str, dict[str, str]]:
        """Every caller but A's secret key."""
        return {
            "B secret": self.b.headers("secret"),
            "B public": self.b.headers("public"),
            "A public": self.a.headers("public"),
            "no key": {},
        }

    def query_params(self, path: str) -> list[str]:
        operation = self.openapi["paths"][path]["get"]
        return [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]

    async def a_view(self) -> dict[str, Any]:
        """Everything A's secret key sees of A's project."""
        h = self.a.headers()
        view: dict[str, Any] = {}
        for url in (
            f"/v1/interactions/{A_INTERACTION}",
            f"/v1/interactions/{A_INTERACTION_2}",
            "/v1/interactions",
            "/v1/feedback",
            "/v1/feedback?orphaned=true",
            f"/v1/feedback?interaction_id={A_INTERACTION}",
            f"/v1/sessions/{A_SESSION}",
            "/v1/enrichment",
            "/v1/project/pii",
            "/v1/project/retention",
            "/v1/lake",
        ):
            r = await self.client.get(url, headers=h)
            assert r.status_code == 200, (url, r.text)
            view[url] = r.json()
        return view


@pytest.fixture
async def world(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> World:
    r = await client.post("/v1/events", json={"events": A_EVENTS}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    openapi = (await client.get("/openapi.json")).json()
    # A's policy differs from the default, and its sessions are enriched
    policy = {"modes": {"email": "hash"}, "allowlist": ["acme-support@example.com"]}
    r = await client.put("/v1/project/pii", json=policy, headers=tenant.headers())
    assert r.status_code == 200, r.text
    # A's events are from 2025: its vectors are kept (the default 180 days would skip them)
    retention = {"hot_days": 7, "vector_days": None}
    r = await client.put("/v1/project/retention", json=retention, headers=tenant.headers())
    assert r.status_code == 200, r.text
    runtime.enricher.run()
    runtime.embedding_job().run()
    w = World(client, runtime, tenant, other_tenant, openapi, {})
    for method, path in ROUTES:
        if method == "GET" and path.startswith("/v1") and "cursor" in w.query_params(path):
            r = await client.get(path, params={"limit": 1}, headers=tenant.headers())
            assert r.status_code == 200, r.text
            assert r.json()["next_cursor"], f"seed A with two items of {path}"
            w.cursors[path] = r.json()["next_cursor"]
    return w


# ---------------------------------------------------------------------------------------------
# Assertions.


def assert_no_leak(r: httpx.Response, *, echoed: Iterable[str] = (), who: str = "") -> None:
    """The response carries none of A's data, beyond the values the caller itself sent."""
    text = r.text + " " + json.dumps(dict(r.headers))
    for value in sorted(echoed, key=len, reverse=True):
        text = text.replace(value, "")
    leaked = [m for m in A_MARKERS if m in text]
    assert not leaked, f"{who} {r.request.method} {r.request.url}: leaks {leaked}: {r.text}"


def assert_unauthorized(r: httpx.Response, who: str) -> None:
    assert r.status_code == 401, f"{who} {r.request.method} {r.request.url}: {r.status_code}"
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == "Bearer"
    body = r.json()
    assert body["status"] == 401
    assert body["title"] == "Unauthorized"
    assert body["field"] == "authorization"
    assert body["detail"]


def _masked(r: httpx.Response, ids: Iterable[str]) -> Any:
    text = r.text
    for value in ids:
        text = text.replace(value, "<id>")
    return r.status_code, r.headers["content-type"], json.loads(text)


# ---------------------------------------------------------------------------------------------
# One check per route.

Check = Callable[[World, str], Awaitable[None]]


async def check_object(w: World, path: str) -> None:
    """GET of one of A's objects: 404 for B's secret key exactly as for a missing object,
    401 for every public key and no key; 200 with the object for A's secret key."""
    url, control = _fill(path, A_OBJECT), _fill(path, NOBODY_OBJECT)
    for who, headers in w.callers().items():
        r = await w.client.get(url, headers=headers)
        assert r.status_code == (404 if who == "B secret" else 401), (who, url, r.text)
        if r.status_code == 401:
            assert_unauthorized(r, who)
        missing = await w.client.get(control, headers=headers)
        assert _masked(r, A_OBJECT.values()) == _masked(missing, NOBODY_OBJECT.values()), who
        assert_no_leak(r, echoed=A_OBJECT.values(), who=who)
    r = await w.client.get(url, headers=w.a.headers())
    assert r.status_code == 200, r.text
    assert r.json()["id"] in A_OBJECT.values()
    assert "ACME-CONFIDENTIAL" in r.text


async def check_session(w: World, path: str) -> None:
    """GET of A's session: like an object, but its answer names the session, not an id."""
    url, control = _fill(path, A_OBJECT), _fill(path, NOBODY_OBJECT)
    for who, headers in w.callers().items():
        r = await w.client.get(url, headers=headers)
        assert r.status_code == (404 if who == "B secret" else 401), (who, url, r.text)
        missing = await w.client.get(control, headers=headers)
        assert _masked(r, A_OBJECT.values()) == _masked(missing, NOBODY_OBJECT.values()), who
        assert_no_leak(r, echoed=A_OBJECT.values(), who=who)
    r = await w.client.get(url, headers=w.a.headers())
    assert r.status_code == 200, r.text
    assert r.json()["session_id"] == A_SESSION and r.json()["user_id"] == A_USER


async def check_enrichment(w: World, path: str) -> None:
    """GET of the enrichment status: B's secret key sees B's (empty) counts, never A's."""
    for who, headers in w.callers().items():
        r = await w.client.get(path, headers=headers)
        if who == "B secret":
            assert r.status_code == 200, r.text
            assert r.json() == {
                "interactions_waiting": 0,
                "feedback": {"pending": 0, "orphaned": {}},
                "signals": {"pending": 0, "orphaned": {}},
                "sessions": {"total": 0, "abandoned": 0},
            }
        else:
            assert_unauthorized(r, who)
        assert_no_leak(r, who=who)
    r = await w.client.get(path, headers=w.a.headers())
    assert r.status_code == 200
    assert r.json()["sessions"]["total"] == 1


async def check_get_pii(w: World, path: str) -> None:
    """GET of the PII policy: B's secret key sees B's (default) policy, never A's."""
    for who, headers in w.callers().items():
        r = await w.client.get(path, headers=headers)
        if who == "B secret":
            assert r.status_code == 200, r.text
            assert r.json()["modes"] == {} and r.json()["allowlist"] == []
        else:
            assert_unauthorized(r, who)
        assert_no_leak(r, who=who)
    r = await w.client.get(path, headers=w.a.headers())
    assert r.json()["modes"] == {"email": "hash"}


async def check_put_pii(w: World, path: str) -> None:
    """PUT of the PII policy: B's secret key changes B's policy only; public keys and no key
    get 401; A's policy and data stay as they were."""
    before = await w.a_view()
    policy = {"enabled": False}
    for who, headers in w.callers().items():
        r = await w.client.put(path, json=policy, headers=headers)
        if who == "B secret":
            assert r.status_code == 200, r.text
        else:
            assert_unauthorized(r, who)
        assert_no_leak(r, who=who)
    assert await w.a_view() == before
    r = await w.client.get(path, headers=w.b.headers())
    assert r.json()["enabled"] is False


async def check_get_retention(w: World, path: str) -> None:
    """GET of the retention: B's secret key sees B's (default) retention, never A's."""
    for who, headers in w.callers().items():
        r = await w.client.get(path, headers=headers)
        if who == "B secret":
            assert r.status_code == 200, r.text
            assert r.json()["hot_days"] == 30.0
        else:
            assert_unauthorized(r, who)
        assert_no_leak(r, who=who)
    r = await w.client.get(path, headers=w.a.headers())
    assert r.json()["hot_days"] == 7.0


async def check_put_retention(w: World, path: str) -> None:
    """PUT of the retention: B's secret key changes B's only; others get 401."""
    before = await w.a_view()
    for who, headers in w.callers().items():
        r = await w.client.put(path, json={"hot_days": 3, "cold_days": 9}, headers=headers)
        if who == "B secret":
            assert r.status_code == 200, r.text
        else:
            assert_unauthorized(r, who)
        assert_no_leak(r, who=who)
    assert await w.a_view() == before
    r = await w.client.get(path, headers=w.b.headers())
    assert r.json()["cold_days"] == 9.0


async def check_search(w: World, path: str) -> None:
    """Semantic search: B's secret key, searching with A's own words and A's segment, finds
    nothing of A's; A finds its texts (positive control)."""
    variants = [
        {"q": "how do I vent the reactor"},
        {"q": "wrong valve", "kind": "comment"},
        {"q": "vent the reactor", "model": A_MODEL, "model_version": A_MODEL_VERSION},
        {"q": "vent the reactor", "prompt": A_PROMPT, "prompt_version": A_PROMPT_VERSION},
    ]
    for params in variants:
        for who, headers in w.callers().items():
            r = await w.client.get(path, params=params, headers=headers)
            if who == "B secret":
                assert r.status_code == 200, r.text
                assert r.json()["hits"] == [], (params, r.text)
            else:
                assert_unauthorized(r, who)
            assert_no_leak(r, echoed=list(params.values()), who=who)
        r = await w.client.get(path, params=params, headers=w.a.headers())
        assert r.status_code == 200, r.text
        assert r.json()["hits"], f"positive control: A finds its own texts for {params}"


async def check_query(w: World, path: str) -> None:
    """SQL over both tiers: B's secret key sees only B's (empty) views, even when it names A's
    ids or reads files; public keys and no key get 401; A sees its rows (positive control)."""
    statements = [
        "SELECT * FROM interactions",
        "SELECT * FROM feedback",
        "SELECT * FROM signals",
        "SELECT * FROM sessions",
        f"SELECT id, user_id FROM interactions WHERE user_id = '{A_USER}'",
    ]
    for sql in statements:
        for who, headers in w.callers().items():
            r = await w.client.post(path, json={"sql": sql}, headers=headers)
            if who == "B secret":
                assert r.status_code == 200, r.text
                assert r.json()["data"] == [], (sql, r.text)
            else:
                assert_unauthorized(r, who)
            assert_no_leak(r, echoed=[sql], who=who)
        r = await w.client.post(path, json={"sql": sql}, headers=w.a.headers())
        assert r.status_code == 200, r.text
        assert r.json()["data"], f"positive control: A sees its rows for {sql}"
    lake = str(w.runtime.settings.data_dir / "lake")
    for sql in (
        f"SELECT * FROM read_parquet('{lake}/**/*.parquet')",
        f"SELECT * FROM read_text('{w.runtime.settings.data_dir}/closedloop.db')",
        "ATTACH 'x.db' AS other",
    ):
        r = await w.client.post(path, json={"sql": sql}, headers=w.b.headers())
        assert r.status_code == 400, r.text
        assert r.json()["field"] == "sql"
        assert_no_leak(r, echoed=[sql, lake], who="B secret")


async def check_lake(w: World, path: str) -> None:
    """GET of the lake summary: B's secret key sees B's (empty) lake only."""
    for who, headers in w.callers().items():
        r = await w.client.get(path, headers=headers)
        if who == "B secret":
            assert r.status_code == 200, r.text
            assert r.json()["entities"] == {}
        else:
            assert_unauthorized(r, who)
        assert_no_leak(r, who=who)


async def check_erase_user(w: World, path: str) -> None:
    """DELETE of a user: B's secret key erasing A's user id removes nothing of A's; public
    keys and no key get 401; A's later events for that user are still taken."""
    before = await w.a_view()
    url = path.replace("{user_id}", A_USER)
    for who, headers in w.callers().items():
        r = await w.client.delete(url, headers=headers)
        if who == "B secret":
            assert r.status_code == 200, r.text
            assert r.json()["total_removed"] == 0, r.text
        else:
            assert_unauthorized(r, who)
        assert_no_leak(r, echoed=[A_USER], who=who)
    assert await w.a_view() == before
    event = make_event("interaction", {"input": "still welcome", "user_id": A_USER}, id="a-later")
    r = await w.client.post("/v1/events", json={"events": [event]}, headers=w.a.headers())
    assert r.json()["results"][0]["status"] == "stored", r.text


async def _analyzed(w: World) -> int:
    """Give A an issue and a topic (three more failing questions like A's), an alarm, and run
    the analysis; A's first issue's id."""
    events = [
        _event("interaction", {"input": f"{A_INPUT} {n}", "output": A_OUTPUT}, f"a-more-{n}", 10)
        for n in range(3)
    ]
    events += [
        _event("feedback", {"interaction_id": f"a-more-{n}", "thumbs": -1}, f"a-more-f{n}", 11)
        for n in range(3)
    ]
    r = await w.client.post("/v1/events", json={"events": events}, headers=w.a.headers())
    assert r.status_code == 200, r.text
    w.runtime.enricher.run()
    w.runtime.embedding_job().run()
    w.runtime.analyzer().run(w.a.project_id)
    with w.runtime.engine.begin() as conn:
        store_alarm(
            conn,
            project_id=w.a.project_id,
            kind="quality",
            segment=f"model={A_MODEL}@{A_MODEL_VERSION}",
            measure="thumbs",
            since=dt.datetime(2025, 6, 1, tzinfo=dt.UTC),
            detected_at=dt.datetime(2025, 6, 2, tzinfo=dt.UTC),
            before={"value": 0.9},
            after={"value": 0.5},
            details={"note": A_LABEL},
        )
    r = await w.client.get("/v1/issues", headers=w.a.headers())
    assert r.json()["issues"], f"positive control: A has an issue: {r.text}"
    r = await w.client.get("/v1/topics", headers=w.a.headers())
    assert r.json()["topics"], f"positive control: A has a topic: {r.text}"
    return int(r.json()["topics"][0]["id"])


async def check_analysis_list(w: World, path: str) -> None:
    """Metrics, drift alarms, issues and topics: B's secret key sees nothing of A's, whatever
    segment it asks for; public keys and no key get 401; A sees its own (positive control)."""
    await _analyzed(w)
    variants: list[dict[str, str]] = [{}]
    if path == "/v1/metrics":
        variants += [
            {"by": by}
            for by in ("model", "prompt", "topic", "tag", "cohort:plan")
        ]  # fmt: skip
    key = {"/v1/metrics": "rows", "/v1/drift": "alarms"}.get(path, path.rsplit("/", 1)[-1])
    for params in variants:
        for who, headers in w.callers().items():
            r = await w.client.get(path, params=params, headers=headers)
            if who == "B secret":
                assert r.status_code == 200, r.text
                assert r.json()[key] == [], (params, r.text)
            else:
                assert_unauthorized(r, who)
            assert_no_leak(r, echoed=list(params.values()), who=who)
        r = await w.client.get(path, params=params, headers=w.a.headers())
        assert r.status_code == 200, r.text
        assert r.json()[key], f"positive control: A sees its own {path} {params}"


async def check_issue(w: World, path: str) -> None:
    """One issue: B's secret key asking for A's issue id gets 404 like an id nobody holds."""
    await _analyzed(w)
    r = await w.client.get("/v1/issues", headers=w.a.headers())
    issue_id = str(r.json()["issues"][0]["id"])
    url = path.replace("{issue_id}", issue_id)
    for who, headers in w.callers().items():
        r = await w.client.get(url, headers=headers)
        if who == "B secret":
            assert r.status_code == 404, r.text
            nobody = await w.client.get(path.replace("{issue_id}", "999"), headers=headers)
            assert nobody.status_code == 404
            assert _masked(r, [issue_id]) == _masked(nobody, ["999"])
        else:
            assert_unauthorized(r, who)
        assert_no_leak(r, who=who)
    r = await w.client.get(url, headers=w.a.headers())
    assert r.status_code == 200 and r.json()["members"], r.text


async def check_analyze(w: World, path: str) -> None:
    """A run of the analysis for B's key analyses B only: A's issues and topics stay as they
    were; public keys and no key get 401."""
    await _analyzed(w)
    before = [
        (await w.client.get(u, headers=w.a.headers())).json() for u in ("/v1/issues", "/v1/topics")
    ]
    for who, headers in w.callers().items():
        r = await w.client.post(path, headers=headers)
        if who == "B secret":
            assert r.status_code == 200, r.text
            assert r.json()["members"] == 0, r.text
        else:
            assert_unauthorized(r, who)
        assert_no_leak(r, who=who)
    after = [
        (await w.client.get(u, headers=w.a.headers())).json() for u in ("/v1/issues", "/v1/topics")
    ]
    assert after == before


async def check_list(w: World, path: str) -> None:
    """GET of a list, once per query parameter aimed at A's data: B's secret key gets B's
    own (empty) page, public keys and no key get 401; A's secret key gets A's data."""
    variants: list[dict[str, str]] = [{}]
    for name in w.query_params(path):
        if name == "cursor":
            variants.append({"cursor": w.cursors[path]})
        else:
            assert name in A_QUERIES, f"{path}?{name}: add a value aimed at A's data to A_QUERIES"
            variants.append(A_QUERIES[name])
    for params in variants:
        echoed = list(params.values())
        for who, headers in w.callers().items():
            r = await w.client.get(path, params=params, headers=headers)
            if who == "B secret":
                assert r.status_code == 200, (who, params, r.text)
                assert r.json() == {"data": [], "next_cursor": None}, (who, params)
            else:
                assert_unauthorized(r, who)
            assert_no_leak(r, echoed=echoed, who=who)
        r = await w.client.get(path, params=params, headers=w.a.headers())
        assert r.status_code == 200, (params, r.text)
        assert r.json()["data"], f"positive control: A sees its own data for {params}"


async def check_project(w: World, path: str) -> None:
    """GET of the key's project: B's secret key sees B, never A."""
    for who, headers in w.callers().items():
        r = await w.client.get(path, headers=headers)
        if who == "B secret":
            assert r.status_code == 200, r.text
            assert r.json() == {"id": w.b.project_id, "name": "globex", "cors_origins": []}
        else:
            assert_unauthorized(r, who)
        assert_no_leak(r, who=who)
    r = await w.client.get(path, headers=w.a.headers())
    assert r.status_code == 200
    assert r.json()["name"] == "acme"


async def check_post_events(w: World, path: str) -> None:
    """POST of feedback and signals on A's interaction with B's keys: stored for B, as
    feedback whose interaction has not arrived; A's project does not change."""
    before = await w.a_view()
    for who in ("B secret", "B public"):
        headers = w.callers()[who]
        tag = who.split()[1]
        events = [
            make_event(
                "feedback",
                {"interaction_id": A_INTERACTION, "thumbs": 1, "comment": "globex says hi"},
                id=f"globex-{tag}-fb",
            ),
            make_event("signal", {"interaction_id": A_INTERACTION, "kind": "copy"}, id=f"g-{tag}"),
        ]
        r = await w.client.post(path, json={"events": events}, headers=headers)
        assert r.status_code == 200, (who, r.text)
        assert r.json()["stored"] == 2
        assert_no_leak(r, who=who)
        assert await w.a_view() == before, f"{who}'s write changed project A"
    r = await w.client.get("/v1/feedback?orphaned=true", headers=w.b.headers())
    ids = {f["id"] for f in r.json()["data"]}
    assert ids == {"globex-secret-fb", "globex-public-fb"}, "B's feedback stays B's, orphaned"
    r = await w.client.get(f"/v1/interactions/{A_INTERACTION}", headers=w.b.headers())
    assert r.status_code == 404

    for who in ("A public", "no key"):
        event = make_event("interaction", {"input": "forged"}, id="forged-int")
        r = await w.client.post(path, json={"events": [event]}, headers=w.callers()[who])
        if who == "no key":
            assert_unauthorized(r, who)
        else:
            assert r.status_code == 207, r.text
            assert r.json()["results"][0]["status"] == "rejected"
        assert_no_leak(r, who=who)
    assert await w.a_view() == before

    event = make_event("feedback", {"interaction_id": A_INTERACTION, "thumbs": 1}, id="acme-fb-2")
    r = await w.client.post(path, json={"events": [event]}, headers=w.a.headers())
    assert r.status_code == 200, r.text
    r = await w.client.get(f"/v1/interactions/{A_INTERACTION}", headers=w.a.headers())
    assert [f["id"] for f in r.json()["feedback"]] == [A_FEEDBACK, "acme-fb-2"]


async def check_post_browser_events(w: World, path: str) -> None:
    """The beacon endpoint (key in the body): B's public key on A's interaction stores B's
    orphaned feedback and leaves A alone; every secret key and no key get 401; A's public key
    cannot write an interaction."""
    before = await w.a_view()
    text = {"content-type": "text/plain"}

    def body(key: str | None, *events: dict[str, Any]) -> bytes:
        return json.dumps({"key": key, "events": list(events)}).encode()

    feedback = make_event(
        "feedback",
        {"interaction_id": A_INTERACTION, "thumbs": 1, "comment": "globex says hi"},
        id="globex-beacon-fb",
    )
    r = await w.client.post(path, content=body(w.b.public_key, feedback), headers=text)
    assert r.status_code == 200, r.text
    assert_no_leak(r, who="B public")
    r = await w.client.get("/v1/feedback?orphaned=true", headers=w.b.headers())
    assert {f["id"] for f in r.json()["data"]} == {"globex-beacon-fb"}
    for who, key in {
        "A secret": w.a.secret_key,
        "B secret": w.b.secret_key,
        "no key": None,
    }.items():
        r = await w.client.post(path, content=body(key, feedback), headers=text)
        assert r.status_code == 401, (who, r.text)
        assert_no_leak(r, echoed=[feedback["id"]], who=who)
    forged = make_event("interaction", {"input": "forged"}, id="forged-int")
    r = await w.client.post(path, content=body(w.a.public_key, forged), headers=text)
    assert r.status_code == 207, r.text
    assert r.json()["results"][0]["status"] == "rejected"
    assert await w.a_view() == before


async def check_unauthenticated(w: World, path: str, method: str = "GET") -> None:
    """A route that needs no key: every caller gets the same answer, none of A's data."""
    if path == "/metrics":  # first put A's ids into request paths the metrics might record
        for url in (f"/v1/interactions/{A_INTERACTION}", f"/v1/nope/{A_INTERACTION}"):
            await w.client.get(url, headers=w.b.headers())
    headers = {"origin": "https://app.example.com", "access-control-request-method": "POST"}
    statuses = set()
    for who, auth in {**w.callers(), "A secret": w.a.headers()}.items():
        r = await w.client.request(method, path, headers={**headers, **auth})
        statuses.add(r.status_code)
        assert r.status_code < 500, (who, r.text)
        assert_no_leak(r, who=who)
    assert len(statuses) == 1, f"{method} {path} answers differently by key: {statuses}"


async def check_options(w: World, path: str) -> None:
    await check_unauthenticated(w, path, "OPTIONS")


async def check_schema(w: World, path: str) -> None:
    await check_unauthenticated(w, path)
    bodies = {(await w.client.get(path, headers=h)).text for h in w.callers().values()}
    assert len(bodies) == 1


CASES: dict[tuple[str, str], Check] = {
    ("POST", "/v1/traces"): check_post_traces,
    ("POST", "/v1/events"): check_post_events,
    ("OPTIONS", "/v1/events"): check_options,
    ("POST", "/v1/browser/events"): check_post_browser_events,
    ("OPTIONS", "/v1/browser/events"): check_options,
    ("GET", "/sdk/closedloop.js"): check_unauthenticated,
    ("GET", "/v1/schema"): check_schema,
    ("GET", "/v1/interactions"): check_list,
    ("GET", "/v1/interactions/{interaction_id}"): check_object,
    ("GET", "/v1/feedback"): check_list,
    ("GET", "/v1/feedback/{feedback_id}"): check_object,
    ("GET", "/v1/signals/{signal_id}"): check_object,
    ("GET", "/v1/sessions/{session_id}"): check_session,
    ("GET", "/v1/enrichment"): check_enrichment,
    ("GET", "/v1/project"): check_project,
    ("GET", "/v1/project/pii"): check_get_pii,
    ("PUT", "/v1/project/pii"): check_put_pii,
    ("GET", "/v1/project/retention"): check_get_retention,
    ("PUT", "/v1/project/retention"): check_put_retention,
    ("GET", "/v1/lake"): check_lake,
    ("GET", "/v1/search"): check_search,
    ("POST", "/v1/query"): check_query,
    ("GET", "/v1/metrics"): check_analysis_list,
    ("GET", "/v1/drift"): check_analysis_list,
    ("GET", "/v1/issues"): check_analysis_list,
    ("GET", "/v1/topics"): check_analysis_list,
    ("GET", "/v1/issues/{issue_id}"): check_issue,
    ("POST", "/v1/analyze"): check_analyze,
    ("DELETE", "/v1/users/{user_id}"): check_erase_user,
    ("GET", "/openapi.json"): check_unauthenticated,
    ("GET", "/docs"): check_unauthenticated,
    ("GET", "/docs/oauth2-redirect"): check_unauthenticated,
    ("GET", "/redoc"): check_unauthenticated,
    ("GET", "/healthz"): check_unauthenticated,
    ("GET", "/readyz"): check_unauthenticated,
    ("GET", "/metrics"): check_unauthenticated,
}


# ---------------------------------------------------------------------------------------------
# The matrix.


def test_the_matrix_covers_every_route_of_the_app_and_nothing_else() -> None:
    routes = set(ROUTES)
    assert {r for r in routes if r[1].startswith("/v1")} >= {
        ("POST", "/v1/events"),
        ("GET", "/v1/interactions/{interaction_id}"),
    }, "the route enumeration lost the included routers"
    openapi = create_app().openapi()
    documented = {(m.upper(), p) for p, ops in openapi["paths"].items() for m in ops}
    assert documented <= routes, f"documented but not enumerated: {documented - routes}"
    assert routes - CASES.keys() == set(), "routes missing from the tenancy matrix"
    assert CASES.keys() - routes == set(), "stale entries in the tenancy matrix"


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_no_route_lets_another_project_read_or_touch_project_a(
    world: World, method: str, path: str
) -> None:
    check = CASES.get((method, path))
    assert check is not None, f"{method} {path} is not in the tenancy matrix: add a check"
    await check(world, path)


# ---------------------------------------------------------------------------------------------
# Writes.


async def test_an_event_id_used_in_project_a_is_free_in_project_b_and_a_keeps_its_copy(
    world: World,
) -> None:
    before = await world.a_view()
    events = [
        make_event("interaction", {"input": "globex input"}, id=A_INTERACTION),
        make_event(
            "feedback",
            {"interaction_id": A_INTERACTION, "thumbs": 1, "comment": "globex comment"},
            id=A_FEEDBACK,
        ),
        make_event("signal", {"interaction_id": A_INTERACTION, "kind": "accept"}, id=A_SIGNAL),
    ]
    r = await world.client.post("/v1/events", json={"events": events}, headers=world.b.headers())
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["stored"] * 3

    r = await world.client.get(f"/v1/interactions/{A_INTERACTION}", headers=world.b.headers())
    got = r.json()
    assert got["input"] == "globex input"
    assert [(f["id"], f["comment"]) for f in got["feedback"]] == [(A_FEEDBACK, "globex comment")]
    assert [(s["id"], s["kind"]) for s in got["signals"]] == [(A_SIGNAL, "accept")]
    assert "ACME-CONFIDENTIAL" not in r.text
    r = await world.client.get(f"/v1/feedback/{A_FEEDBACK}", headers=world.b.headers())
    assert r.json()["comment"] == "globex comment"
    r = await world.client.get(f"/v1/signals/{A_SIGNAL}", headers=world.b.headers())
    assert r.json()["kind"] == "accept"

    assert await world.a_view() == before, "project A's copies are untouched"
    again = await world.client.post(
        "/v1/events", json={"events": events}, headers=world.b.headers()
    )
    assert [x["status"] for x in again.json()["results"]] == ["duplicate"] * 3
    r = await world.client.post(
        "/v1/events", json={"events": A_EVENTS[:1]}, headers=world.a.headers()
    )
    assert r.json()["results"][0]["status"] == "duplicate"


async def test_a_public_key_can_write_no_interaction_in_any_project(world: World) -> None:
    before = await world.a_view()
    for tenant in (world.a, world.b):
        batch = [
            make_event("interaction", {"input": "from a browser"}, id=A_INTERACTION),
            make_event("interaction", {"input": "from a browser"}, id="browser-int"),
            make_event("feedback", {"interaction_id": "browser-int", "thumbs": 1}, id="ok-fb"),
        ]
        r = await world.client.post(
            "/v1/events", json={"events": batch}, headers=tenant.headers("public")
        )
        assert r.status_code == 207, r.text
        results = r.json()["results"]
        assert [x["status"] for x in results] == ["rejected", "rejected", "stored"]
        assert {x["error"]["field"] for x in results[:2]} == {"type"}
        r = await world.client.get("/v1/interactions/browser-int", headers=tenant.headers())
        assert r.status_code == 404
    after = await world.a_view()
    interactions = [u for u in before if u.startswith("/v1/interactions")]
    assert {u: after[u] for u in interactions} == {u: before[u] for u in interactions}


async def test_every_read_with_a_public_key_is_unauthorized(world: World) -> None:
    reads = [p for m, p in ROUTES if m == "GET" and p.startswith("/v1")]
    assert len(reads) >= 6
    for path in reads:
        url = _fill(path, {**A_OBJECT, "issue_id": "1"})
        for tenant in (world.a, world.b):
            r = await world.client.get(url, headers=tenant.headers("public"))
            if ("GET", path) in UNAUTHENTICATED:
                assert r.status_code == 200
            else:
                assert_unauthorized(r, f"{tenant.name} public")
                assert "secret key" in r.json()["detail"]


# ---------------------------------------------------------------------------------------------
# Rotated, revoked, unknown and malformed keys.


async def _status(client: httpx.AsyncClient, key: str, kind: str = "secret") -> int:
    headers = {"authorization": f"Bearer {key}"}
    if kind == "secret":
        return (await client.get("/v1/project", headers=headers)).status_code
    event = make_event("feedback", {"interaction_id": "x", "thumbs": 1})
    r = await client.post("/v1/events", json={"events": [event]}, headers=headers)
    return r.status_code


async def test_a_rotated_secret_key_is_refused_at_once_and_its_successor_works(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    assert runtime.settings.auth_cache_seconds == 0
    assert await _status(client, tenant.secret_key) == 200
    new = runtime.projects.rotate("acme", "secret")
    assert new.startswith("cl_sk_") and new != tenant.secret_key

    r = await client.get("/v1/project", headers=tenant.headers())
    assert_unauthorized(r, "old secret")
    assert "revoked" in r.json()["detail"]
    event = make_event("interaction", {"input": "x"})
    r = await client.post("/v1/events", json={"events": [event]}, headers=tenant.headers())
    assert_unauthorized(r, "old secret")

    r = await client.get("/v1/project", headers={"authorization": f"Bearer {new}"})
    assert r.status_code == 200 and r.json()["name"] == "acme"
    assert await _status(client, tenant.public_key, "public") == 200, "the public key stays"


async def test_a_rotated_public_key_is_refused_at_once_and_its_successor_works(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    new = runtime.projects.rotate("acme", "public")
    assert new.startswith("cl_pk_")
    assert await _status(client, tenant.public_key, "public") == 401
    assert await _status(client, new, "public") == 200
    assert await _status(client, tenant.secret_key) == 200, "the secret key stays"


async def test_a_revoked_key_is_refused_and_no_other_key_is(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    runtime.projects.revoke(tenant.secret_key[:16])
    r = await client.get("/v1/project", headers=tenant.headers())
    assert_unauthorized(r, "revoked secret")
    assert "revoked" in r.json()["detail"]
    assert await _status(client, tenant.public_key, "public") == 200
    assert await _status(client, other_tenant.secret_key) == 200

    runtime.projects.revoke(tenant.public_key[:16])
    assert await _status(client, tenant.public_key, "public") == 401
    assert await _status(client, other_tenant.public_key, "public") == 200
    assert [k.revoked for k in runtime.projects.keys("acme")] == [True, True]


def _bad_authorizations(tenant: Tenant) -> dict[str, str | None]:
    secret = tenant.secret_key
    wrong_last = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    return {
        "no header": None,
        "empty header": "",
        "scheme only": "Bearer",
        "blank token": "Bearer    ",
        "basic auth": "Basic dXNlcjpwYXNz",
        "key without scheme": secret,
        "other scheme": f"Token {secret}",
        "unknown secret key": "Bearer cl_sk_" + secrets.token_urlsafe(24),
        "unknown public key": "Bearer cl_pk_" + secrets.token_urlsafe(24),
        "secret key under the public prefix": "Bearer cl_pk_" + secret.removeprefix("cl_sk_"),
        "right lookup, wrong key": f"Bearer {wrong_last}",
        "key with trailing junk": f"Bearer {secret} junk",
        "too short": "Bearer cl_sk_short",
        "foreign format": "Bearer sk-proj-" + secrets.token_urlsafe(24),
    }


async def test_unknown_keys_and_malformed_headers_get_401_problem_json(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    event = make_event("feedback", {"interaction_id": "i", "thumbs": 1}, id="must-not-store")
    for case, value in _bad_authorizations(tenant).items():
        headers = {} if value is None else {"authorization": value}
        r = await client.get("/v1/project", headers=headers)
        assert_unauthorized(r, case)
        assert tenant.secret_key not in r.text
        r = await client.post("/v1/events", json={"events": [event]}, headers=headers)
        assert_unauthorized(r, case)
    r = await client.get("/v1/feedback", headers=tenant.headers())
    assert r.json()["data"] == [], "nothing was stored by a refused request"
    assert (await client.get("/v1/project", headers=tenant.headers())).status_code == 200
