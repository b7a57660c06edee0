"""The cross-tenant matrix: no key of one project reads, or writes into, another project.

Project A (``acme``) holds interactions, feedback and signals, and for the Act routes one
object of each kind (rule, firing, webhook endpoint and delivery, review task, export, prompt
with a running A/B test, knowledge-base entry, flagged document); project B (``globex``) holds
nothing. Every route of the app (enumerated from the app itself, so a new endpoint cannot
escape) is called with B's secret key, B's public key, A's public key and no key against A's
objects. Object reads answer 404 or 401, indistinguishable from a missing object; scoped lists
answer B's (empty) data or 401; no body carries A's data. Writes with B's keys land in B's
project and never attach to, or change, A's objects. A's own secret key gets 2xx on every
call, so the matrix cannot pass because authentication is broken.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastapi.routing
import httpx
import pytest
import sqlalchemy as sa

from closedloop import make_event
from closedloop.analyze.quality_drift import store_alarm
from closedloop.ingest.app import create_app
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utcnow
from closedloop.store.users import Role, Users
from closedloop.ui.session import COOKIE
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
# ... and its Act objects: a rule, a webhook endpoint, a reviewer, a prompt, a flagged document.
A_RULE = "acme-rule"
A_HOOK = "acme-hook"
A_REVIEWER = "acme-reviewer"
A_DOC = "acme-doc-1"
A_CORRECTION = "ACME-CONFIDENTIAL-CORRECTION open valve 11"
A_TEMPLATE = "ACME-CONFIDENTIAL-TEMPLATE answer about the reactor"
A_KB_QUERY = "ACME-CONFIDENTIAL-KB how do I vent the reactor"
A_RULES_YAML = f"""rules:
  - name: {A_RULE}
    description: ACME-CONFIDENTIAL-RULE page the reactor team
    when: {{event: {{thumbs: down}}}}
    backfill: true
    actions:
      - webhook: {{endpoint: {A_HOOK}}}
      - review: {{reason: ACME-CONFIDENTIAL-REASON}}
"""

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
    "ACME-CONFIDENTIAL",
    A_RULE,
    A_HOOK,
    A_REVIEWER,
    A_DOC,
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
# Reads a public key may make (an app fetches its prompt with it).
PUBLIC_READS = {("GET", "/v1/prompts/{name}/resolve")}


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
    ui_ids: dict[str, str] | None = None  # A's objects, made once for the dashboard checks

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


# ---------------------------------------------------------------------------------------------
# The Act stage: A's rule, its firing, webhook endpoint and (dead) delivery, review task,
# export, prompt with a running A/B test, knowledge-base entry and flagged document.

# The objects no project holds (the control), by path parameter ({name} by route family).
NOBODY_ACT = {
    "rules": "none-rule",
    "webhooks": "none-hook",
    "prompts": "none-prompt",
    "task_id": "987654321",
    "delivery_id": "987654321",
    "entry_id": "987654321",
    "test_id": "987654321",
    "doc_id": "none-doc",
}


def _act_fill(path: str, ids: Mapping[str, str], verb: str = "promote") -> str:
    """``path`` aimed at ``ids``: ``{name}`` is the rule, endpoint or prompt by the route."""
    name = ids[path.split("/")[2]] if "{name}" in path else ""
    return _fill(path, {**ids, "name": name, "verb": verb})


async def _acted(w: World) -> dict[str, str]:
    """Give A one object of each Act kind, through its own routes where there is one; the
    ids of A's objects by path parameter."""
    h, c = w.a.headers(), w.client

    async def ok(method: str, url: str, body: Any = None, status: int = 200) -> Any:
        r = await _send(w, method, url, body, h)
        assert r.status_code == status, (method, url, r.text)
        return r.json()

    correction = {"interaction_id": A_INTERACTION, "correction": A_CORRECTION}
    events = [  # the late interaction lets event rules read past its waiting feedback
        _event("interaction", {"input": A_INPUT}, A_MISSING_INTERACTION, 6),
        _event("feedback", correction, "acme-fb-correction", 6),
    ]
    await ok("POST", "/v1/events", {"events": events})
    w.runtime.enricher.run()
    hook = {"name": A_HOOK, "url": "http://93.184.216.34/acme-hook"}  # never delivered here
    await ok("POST", "/v1/webhooks", hook, 201)
    await ok("POST", "/v1/rules/apply", A_RULES_YAML)
    later = utcnow() + dt.timedelta(minutes=1)  # once A's feedback has settled
    stats = w.runtime.rule_engine().run(w.a.project_id, now=later)
    assert stats.fired == 1, stats  # a firing, a delivery and a review task
    await ok("POST", "/v1/prompts", {"name": A_PROMPT, "template": A_TEMPLATE}, 201)
    test = await ok("POST", f"/v1/prompts/{A_PROMPT}/candidates", {"share": 0.1}, 201)
    task = await ok("POST", "/v1/review/next", {"reviewer": A_REVIEWER})
    await ok("POST", "/v1/exports", {"kind": "parquet"}, 201)
    entry = await ok("POST", "/v1/knowledge", {"query": A_KB_QUERY, "answer": A_OUTPUT}, 201)
    d, flags = models.webhook_deliveries, models.reindex_flags
    with w.runtime.engine.begin() as conn:  # the sender would have given up on it
        mine = d.c.project_id == w.a.project_id
        delivery_id = conn.execute(sa.select(d.c.id).where(mine)).scalar_one()
        conn.execute(d.update().where(mine).values(state="dead", last_error=A_HOOK))
        at = dt.datetime(2025, 6, 2, tzinfo=dt.UTC)
        examples = json.dumps([{"interaction_id": A_INTERACTION, "input": A_INPUT}])
        conn.execute(flags.insert().values(
            project_id=w.a.project_id, doc_id=A_DOC, negatives=3, examples=examples,
            state="flagged", first_flagged_at=at, last_flagged_at=at,
        ))  # fmt: skip
    r = await c.get("/v1/firings", headers=h)
    assert r.json()["firings"] and A_INTERACTION in r.text, r.text
    return {
        "rules": A_RULE,
        "webhooks": A_HOOK,
        "prompts": A_PROMPT,
        "task_id": str(task["id"]),
        "delivery_id": str(delivery_id),
        "entry_id": str(entry["id"]),
        "test_id": str(test["test"]["id"]),
        "doc_id": A_DOC,
    }


ACT_VIEW = (
    "/v1/rules",
    f"/v1/rules/{A_RULE}",
    "/v1/firings",
    "/v1/webhooks",
    "/v1/webhooks/deliveries",
    "/v1/review/tasks",
    "/v1/exports",
    "/v1/prompts",
    f"/v1/prompts/{A_PROMPT}",
    f"/v1/prompts/{A_PROMPT}/resolve",
    "/v1/knowledge?include_inactive=true",
    "/v1/knowledge/reindex",
)


async def act_view(w: World) -> dict[str, Any]:
    """Everything A's secret key sees of A's project, its Act objects included, and the
    signing secret of A's endpoint."""
    view = await w.a_view()
    for url in ACT_VIEW:
        r = await w.client.get(url, headers=w.a.headers())
        assert r.status_code == 200, (url, r.text)
        view[url] = r.json()
    e = models.webhook_endpoints
    with w.runtime.engine.connect() as conn:
        mine = e.c.project_id == w.a.project_id
        view["secrets"] = conn.execute(sa.select(e.c.name, e.c.secret).where(mine)).all()
    return view


async def _send(
    w: World, method: str, url: str, body: Any, headers: Mapping[str, str]
) -> httpx.Response:
    """A request with a JSON body, or a YAML one when ``body`` is text."""
    if isinstance(body, str):
        yaml = {**headers, "content-type": "application/yaml"}
        return await w.client.request(method, url, content=body, headers=yaml)
    return await w.client.request(method, url, json=body, headers=headers)


def _same_as_missing(
    r: httpx.Response, missing: httpx.Response, a: list[str], no: list[str]
) -> None:
    """``r`` (aimed at A's objects) reads exactly as ``missing`` (aimed at nobody's)."""

    def masked(r: httpx.Response, ids: list[str]) -> Any:
        text = r.text
        for value in sorted(ids, key=len, reverse=True):
            text = re.sub(rf"(?<![\w-]){re.escape(value)}(?![\w-])", "<id>", text)
        return r.status_code, r.headers.get("content-type"), text

    assert masked(r, a) == masked(missing, no), f"{r.request.url} reads unlike a missing object"


# Each list of A's Act objects, with a variant per query parameter aimed at A's objects.
ACT_LISTS: dict[str, list[dict[str, str]]] = {
    "/v1/rules": [],
    "/v1/firings": [{"rule": A_RULE}, {"limit": "1"}],
    "/v1/actions/report": [{"rule": A_RULE}, {"since": "2025-01-01T00:00:00Z"}, {"limit": "1"}],
    "/v1/webhooks": [],
    "/v1/webhooks/deliveries": [{"state": "dead"}, {"limit": "1"}],
    "/v1/review/tasks": [{"state": "open"}, {"assignee": A_REVIEWER}, {"limit": "1"}],
    "/v1/exports": [{"limit": "1"}],
    "/v1/prompts": [],
    "/v1/knowledge": [{"include_inactive": "true"}, {"limit": "1"}],
    "/v1/knowledge/reindex": [{"state": "flagged"}, {"limit": "1"}],
}


async def check_act_list(w: World, path: str) -> None:
    """GET of a list of Act objects, once per query parameter aimed at A's: B's secret key
    gets B's own empty lists, public keys and no key 401; A's secret key gets A's objects."""
    await _acted(w)
    variants = ACT_LISTS[path]
    missing = set(w.query_params(path)) - {name for v in variants for name in v}
    assert not missing, f"{path}?{missing}: add a variant aimed at A's objects to ACT_LISTS"
    for params in [{}, *variants]:
        for who, headers in w.callers().items():
            r = await w.client.get(path, params=params, headers=headers)
            if who == "B secret":
                assert r.status_code == 200, (params, r.text)
                assert not any(r.json().values()), (params, r.text)
            else:
                assert_unauthorized(r, who)
            assert_no_leak(r, echoed=params.values(), who=who)
        r = await w.client.get(path, params=params, headers=w.a.headers())
        assert r.status_code == 200, (params, r.text)
        first = next(iter(r.json().values()))
        assert first, f"positive control: A sees its own {path} {params}"


@dataclass(frozen=True)
class Call:
    """An Act route's call aimed at A's objects: B's secret key's status (404: exactly as for
    a missing object) and what its answer says, and A's own status (the positive control)."""

    b: int = 404
    a: int = 200
    body: Callable[[Mapping[str, str]], Any] = lambda ids: None
    a_body: Any = None  # A's own call's body, when not ``body``
    b_says: Callable[[httpx.Response], bool] = lambda r: True
    echo: tuple[str, ...] = ()
    public: bool = False  # the public key is accepted


def _empty(r: httpx.Response) -> bool:
    return not any(r.json().values())


ANSWER = {"reviewer": A_REVIEWER, "label": "globex-label", "comment": "globex says"}
ACT_CALLS: dict[tuple[str, str], Call] = {
    ("GET", "/v1/rules/{name}"): Call(),
    ("PUT", "/v1/rules/{name}"): Call(
        200,
        body=lambda ids: {"when": {"drift": "quality"}, "actions": [{"review": {}}]},
        b_says=lambda r: "drift" in r.json()["when"],
    ),
    ("DELETE", "/v1/rules/{name}"): Call(a=204),
    ("POST", "/v1/rules/{name}/test"): Call(),
    ("POST", "/v1/rules/check"): Call(
        200,
        body=lambda ids: A_RULES_YAML,
        echo=(A_RULE,),
        b_says=lambda r: r.json()["rules"] == [A_RULE],
    ),
    ("POST", "/v1/rules/apply"): Call(
        200,
        body=lambda ids: A_RULES_YAML,
        echo=(A_RULE,),
        b_says=lambda r: r.json() == {"applied": [A_RULE], "deleted": []},
    ),
    ("POST", "/v1/act"): Call(200, b_says=lambda r: r.json()["rules"] == r.json()["fired"] == 0),
    ("POST", "/v1/webhooks"): Call(
        201,
        201,
        body=lambda ids: {"name": A_HOOK, "url": "http://93.184.216.34/globex"},
        a_body={"name": "acme-hook-2", "url": "http://93.184.216.34/acme-2"},
        b_says=lambda r: r.json()["url"].endswith("/globex"),
    ),  # A's name: were B's endpoint in A's project, it would be refused as taken
    ("DELETE", "/v1/webhooks/{name}"): Call(),
    ("POST", "/v1/webhooks/{name}/rotate"): Call(),
    ("POST", "/v1/webhooks/{name}/test"): Call(a=202),
    ("POST", "/v1/webhooks/deliveries/{delivery_id}/retry"): Call(),
    ("POST", "/v1/review/tasks"): Call(
        a=201, body=lambda ids: {"interaction_id": ids["interaction_id"]}
    ),
    ("POST", "/v1/review/next"): Call(204, body=lambda ids: {"reviewer": A_REVIEWER}),
    ("POST", "/v1/review/tasks/{task_id}/answer"): Call(body=lambda ids: ANSWER),
    ("POST", "/v1/review/tasks/{task_id}/skip"): Call(body=lambda ids: {"reviewer": "globex"}),
    ("POST", "/v1/exports"): Call(
        201,
        201,
        body=lambda ids: {"kind": "parquet"},
        b_says=lambda r: r.json()["total"] == 0 and "globex" in r.text,
    ),
    ("POST", "/v1/prompts"): Call(
        201,
        201,
        body=lambda ids: {"name": A_PROMPT, "template": "globex template"},
        b_says=lambda r: r.json()["version"] == 1,
    ),
    ("GET", "/v1/prompts/{name}"): Call(),
    ("GET", "/v1/prompts/{name}/resolve"): Call(public=True),
    ("POST", "/v1/prompts/{name}/labels"): Call(
        body=lambda ids: {"label": "production", "version": 1}
    ),
    ("POST", "/v1/prompts/{name}/candidates"): Call(a=201, body=lambda ids: {"share": 0.1}),
    ("POST", "/v1/prompts/{name}/tests/{test_id}/{verb}"): Call(),
    ("POST", "/v1/knowledge"): Call(
        201, 201, body=lambda ids: {"query": "globex question", "answer": "globex answer"}
    ),
    ("POST", "/v1/knowledge/recall"): Call(
        200,
        body=lambda ids: {"query": "how do I vent the reactor", "k": 50, "min_score": -1},
        b_says=_empty,
    ),
    ("DELETE", "/v1/knowledge/{entry_id}"): Call(a=204),
    ("POST", "/v1/knowledge/reindex/{doc_id}/done"): Call(),
}


async def check_act(w: World, path: str, method: str) -> None:
    """An Act route aimed at A's objects (in its path or its body): B's secret key gets 404
    exactly as for objects nobody holds, or acts on B's project only (B's answer says so);
    public keys (unless accepted) and no key get 401; no answer carries A's data and A's
    project does not change. A's own secret key then gets its status."""
    a_ids = {**A_OBJECT, **await _acted(w)}
    no_ids = {**A_OBJECT, **NOBODY_OBJECT, **NOBODY_ACT}
    call = ACT_CALLS[(method, path)]
    if "{test_id}" in path:  # B holds a prompt of A's name: A's test id is still not B's
        r = await _send(
            w, "POST", "/v1/prompts", {"name": A_PROMPT, "template": "g"}, w.b.headers()
        )
        assert r.status_code == 201, r.text
    before = await act_view(w)
    params = re.findall(r"{(\w+)}", path.replace("{name}", "{" + path.split("/")[2] + "}"))
    for verb in ("promote", "rollback") if "{verb}" in path else ("promote",):
        url, body = _act_fill(path, a_ids, verb), call.body(a_ids)
        sent = [v for v in body.values() if isinstance(v, str)] if isinstance(body, dict) else []
        aimed = [k for k in a_ids if k in params or a_ids[k] in sent]
        echoed = [*call.echo, *sent, *(a_ids[k] for k in aimed)]
        for who, headers in w.callers().items():
            r = await _send(w, method, url, body, headers)
            if who == "A public" and call.public:
                assert r.status_code == call.a, (who, r.text)
                continue  # A's own data, with A's own key
            status = call.b if who == "B secret" or (call.public and who == "B public") else 401
            assert r.status_code == status, (who, method, url, r.text)
            if status == 401:
                assert_unauthorized(r, who)
            elif status == 404:
                control = _act_fill(path, no_ids, verb)
                missing = await _send(w, method, control, call.body(no_ids), headers)
                _same_as_missing(r, missing, [a_ids[k] for k in aimed], [no_ids[k] for k in aimed])
            else:
                assert call.b_says(r), (who, r.text)
            assert_no_leak(r, echoed=echoed, who=who)
        assert await act_view(w) == before, f"{method} {url} with another key changed project A"
    body = call.a_body or call.body(a_ids)
    r = await _send(w, method, _act_fill(path, a_ids), body, w.a.headers())
    assert r.status_code == call.a, f"positive control: A's own key: {r.text}"


def _act_check(method: str) -> Check:
    async def check(w: World, path: str) -> None:
        await check_act(w, path, method)

    return check


# ---------------------------------------------------------------------------------------------
# The dashboard: B's admin, signed in, against A's project and A's objects.

B_ADMIN = "admin@globex.example"


def _ui_fill(path: str, project: str, ids: Mapping[str, str]) -> str:
    """A dashboard path aimed at ``project`` and at A's objects (``{name}`` by the page)."""
    section = path.split("/")[4] if path.count("/") >= 4 else ""
    names = {"rules": A_RULE, "prompts": A_PROMPT, "webhooks": A_HOOK}
    values = {
        **ids,
        "project": project,
        "name": names.get(section, A_RULE),
        "id": ids["issue_id"],
        "lookup": "cl_sk_0000000000",
    }
    return _fill(path, values)


async def check_ui(w: World, path: str, method: str) -> None:
    """A dashboard route: without a session it shows nothing of A's (pages redirect to the
    sign-in); B's admin, signed in with a valid CSRF token, gets 404 on A's project, and on
    B's own project aimed at A's objects sees nothing of A's; A's project does not change."""
    if path.startswith("/ui/static") or not path.startswith("/ui/p/"):
        url = path + "/ui.css" if path.startswith("/ui/static") else path
        r = await w.client.request("GET" if method == "*" else method, url)
        assert r.status_code in (200, 303, 307, 403), (method, path, r.status_code)
        assert_no_leak(r, who="no session")
        return
    if w.ui_ids is None:
        w.ui_ids = {**A_OBJECT, **await _acted(w), "issue_id": await _a_issue(w)}
        users = Users(w.runtime.engine)
        users.create(B_ADMIN, "correct horse battery")
        users.grant(B_ADMIN, w.b.project_id, Role.ADMIN)
    ids = w.ui_ids
    before = await act_view(w)
    users = Users(w.runtime.engine)
    form = {"csrf_token": "", "version": "1", "kind": "secret", "origins": "",
            "email": B_ADMIN, "role": "viewer", "label": "x", "rating": "1"}  # fmt: skip
    url_a = _ui_fill(path, w.a.name, ids)
    r = await w.client.request(method, url_a, data=form if method == "POST" else None)
    assert r.status_code == 303 and "/ui/login" in r.headers["location"], (url_a, r.text)
    token, session = users.start_session(users.get(B_ADMIN), lifetime=dt.timedelta(hours=1))
    w.client.cookies.set(COOKIE, token)
    try:
        form["csrf_token"] = session.csrf
        r = await w.client.request(method, url_a, data=form if method == "POST" else None)
        assert r.status_code == 404, (method, url_a, r.status_code, r.text[:300])
        assert_no_leak(r, echoed=[*ids.values(), w.a.name], who="B's admin")
        url_b = _ui_fill(path, w.b.name, ids)
        r = await w.client.request(method, url_b, data=form if method == "POST" else None)
        assert r.status_code < 500, (method, url_b, r.text[:500])
        assert_no_leak(r, echoed=ids.values(), who="B's admin on B")
    finally:
        w.client.cookies.clear()
    assert await act_view(w) == before, f"{method} {path} changed project A"


async def _a_issue(w: World) -> str:
    """The id of one of A's issues (the analysis run for real)."""
    await _analyzed(w)
    r = await w.client.get("/v1/issues", headers=w.a.headers())
    return str(r.json()["issues"][0]["id"])


UI_ROUTES = [route for route in ROUTES if route[1].startswith("/ui")]


def _ui_check(method: str) -> Check:
    async def check(w: World, path: str) -> None:
        await check_ui(w, path, method)

    return check


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
    **{("GET", path): check_act_list for path in ACT_LISTS},
    **{route: _act_check(route[0]) for route in ACT_CALLS},
    **{route: _ui_check(route[0]) for route in UI_ROUTES},
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


API_ROUTES = [route for route in ROUTES if route not in UI_ROUTES]


@pytest.mark.parametrize(("method", "path"), API_ROUTES, ids=[f"{m} {p}" for m, p in API_ROUTES])
async def test_no_route_lets_another_project_read_or_touch_project_a(
    world: World, method: str, path: str
) -> None:
    check = CASES.get((method, path))
    assert check is not None, f"{method} {path} is not in the tenancy matrix: add a check"
    await check(world, path)


async def test_no_dashboard_route_lets_another_project_read_or_touch_project_a(
    world: World,
) -> None:
    """Every dashboard route in one world (A's objects made once: the pages read them all)."""
    assert len(UI_ROUTES) > 10, "the dashboard's routes are enumerated"
    for method, path in UI_ROUTES:
        await CASES[(method, path)](world, path)


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


async def test_a_rule_of_project_b_naming_project_a_s_endpoint_acts_in_project_b_only(
    world: World,
) -> None:
    """B's copy of A's rule (naming A's endpoint) fires on B's feedback: its webhook fails for
    want of an endpoint in B's project, its review task is B's; A's objects stay as they were."""
    await _acted(world)
    before, b = await act_view(world), world.b.headers()
    r = await _send(world, "POST", "/v1/rules/apply", A_RULES_YAML, b)
    assert r.status_code == 200, r.text
    events = [
        make_event("interaction", {"input": "globex question"}, id="globex-int"),
        make_event("feedback", {"interaction_id": "globex-int", "thumbs": -1}, id="globex-fb"),
    ]
    r = await world.client.post("/v1/events", json={"events": events}, headers=b)
    assert r.status_code == 200, r.text
    world.runtime.enricher.run()
    later = utcnow() + dt.timedelta(minutes=1)
    stats = world.runtime.rule_engine().run(world.b.project_id, now=later)
    assert (stats.fired, stats.actions_ok, stats.actions_failed) == (1, 1, 1), stats
    [firing] = (await world.client.get("/v1/firings", headers=b)).json()["firings"]
    assert firing["trigger"]["interaction_ids"] == ["globex-int"], firing
    assert [a["ok"] for a in firing["actions"]] == [False, True], firing
    r = await world.client.get("/v1/review/tasks", headers=b)
    assert [t["interaction_id"] for t in r.json()["tasks"]] == ["globex-int"]
    r = await world.client.get("/v1/webhooks/deliveries", headers=b)
    assert r.json()["deliveries"] == []
    assert await act_view(world) == before


async def test_an_export_url_of_project_b_never_reaches_project_a_s_export_folder(
    world: World,
) -> None:
    """B naming A's export folder, or a new folder beside it, in ``url`` writes nothing under
    A's folder and cannot tell A's existing folder from a fresh one."""
    await _acted(world)
    a_dir = world.runtime.settings.resolved_export_dir() / "acme"
    a_files = sorted(a_dir.rglob("*"))
    [export] = (await world.client.get("/v1/exports", headers=world.a.headers())).json()["exports"]
    taken = Path(export["url"]).parent.relative_to(a_dir.parent).as_posix()
    event = make_event("interaction", {"input": "globex q", "output": "globex a"}, id="g-int")
    r = await world.client.post("/v1/events", json={"events": [event]}, headers=world.b.headers())
    assert r.status_code == 200, r.text
    statuses = set()
    for url in (taken, "acme/fresh"):
        body = {"kind": "parquet", "url": url}
        r = await world.client.post("/v1/exports", json=body, headers=world.b.headers())
        statuses.add(r.status_code)
        assert_no_leak(r, echoed=[url], who="B secret")
    assert len(statuses) == 1, f"A's export folder reads unlike a fresh one: {statuses}"
    assert sorted(a_dir.rglob("*")) == a_files, "B wrote into A's export folder"


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
    for path in [p for p in reads if ("GET", p) not in PUBLIC_READS]:
        url = _act_fill(path, {**A_OBJECT, **NOBODY_ACT, "issue_id": "1"})
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
