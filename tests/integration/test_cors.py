"""Browsers and the public key: CORS preflights and the origin check on ``POST /v1/events``."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from closedloop import make_event
from closedloop.runtime import Runtime
from tests.conftest import Tenant

APP = "https://app.example.com"
EVIL = "https://evil.example.com"
GLOBEX = "https://globex.example.com"


@pytest.fixture
def origins(runtime: Runtime, tenant: Tenant) -> Tenant:
    """Project acme allows its app's origin."""
    runtime.projects.set_origins("acme", (APP,))
    return tenant


def preflight_headers(origin: str) -> dict[str, str]:
    return {
        "origin": origin,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }


def thumbs(id: str) -> dict[str, Any]:
    return make_event("feedback", {"interaction_id": "i-1", "thumbs": 1}, id=id)


async def stored_feedback(client: httpx.AsyncClient, tenant: Tenant) -> list[str]:
    r = await client.get("/v1/feedback", headers=tenant.headers())
    assert r.status_code == 200
    return [x["id"] for x in r.json()["data"]]


async def test_a_preflight_from_an_allowed_origin_gets_204_with_the_cors_headers(
    client: httpx.AsyncClient, origins: Tenant
) -> None:
    r = await client.options("/v1/events", headers=preflight_headers(APP))
    assert r.status_code == 204
    assert r.content == b""
    assert r.headers["access-control-allow-origin"] == APP
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = {h.strip() for h in r.headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "content-encoding"} <= allowed
    assert int(r.headers["access-control-max-age"]) > 0
    assert r.headers["vary"] == "Origin"
    assert "access-control-allow-credentials" not in r.headers, "keys travel in a header"


@pytest.mark.parametrize(
    "origin",
    [EVIL, "http://app.example.com", "https://app.example.com:8443", "https://sub.app.example.com"],
)
async def test_a_preflight_from_another_origin_is_refused_with_403(
    client: httpx.AsyncClient, origins: Tenant, origin: str
) -> None:
    r = await client.options("/v1/events", headers=preflight_headers(origin))
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers


async def test_a_preflight_without_an_origin_is_refused(
    client: httpx.AsyncClient, origins: Tenant
) -> None:
    r = await client.options("/v1/events", headers={"access-control-request-method": "POST"})
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers


async def test_no_origin_is_allowed_until_a_project_allows_one(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    r = await client.options("/v1/events", headers=preflight_headers(APP))
    assert r.status_code == 403
    runtime.projects.set_origins("acme", (APP + "/",))  # stored without the trailing slash
    assert runtime.projects.get("acme").cors_origins == (APP,)
    r = await client.options("/v1/events", headers=preflight_headers(APP))
    assert r.status_code == 204
    runtime.projects.set_origins("acme", ())
    r = await client.options("/v1/events", headers=preflight_headers(APP))
    assert r.status_code == 403


async def test_a_public_key_from_an_allowed_origin_is_stored_and_the_origin_echoed(
    client: httpx.AsyncClient, origins: Tenant
) -> None:
    headers = {**origins.headers("public"), "origin": APP}
    r = await client.post("/v1/events", json={"events": [thumbs("fb-ok")]}, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["access-control-allow-origin"] == APP
    assert r.headers["vary"] == "Origin"
    assert r.json()["stored"] == 1
    assert await stored_feedback(client, origins) == ["fb-ok"]


async def test_a_partly_rejected_batch_from_an_allowed_origin_is_readable_by_the_page(
    client: httpx.AsyncClient, origins: Tenant
) -> None:
    headers = {**origins.headers("public"), "origin": APP}
    bad = make_event("feedback", {"interaction_id": "i-1", "thumbs": 5}, id="fb-bad")
    r = await client.post("/v1/events", json={"events": [thumbs("fb-1"), bad]}, headers=headers)
    assert r.status_code == 207
    assert r.headers["access-control-allow-origin"] == APP
    assert r.json()["results"][1]["error"]["field"] == "body.thumbs"


@pytest.mark.parametrize("origin", [EVIL, "null", "http://app.example.com", APP + ".evil.com"])
async def test_a_public_key_from_a_disallowed_origin_gets_a_403_problem_and_stores_nothing(
    client: httpx.AsyncClient, origins: Tenant, origin: str
) -> None:
    headers = {**origins.headers("public"), "origin": origin}
    r = await client.post("/v1/events", json={"events": [thumbs("fb-no")]}, headers=headers)
    assert r.status_code == 403
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == 403 and body["field"] == "origin"
    assert "closedloop projects origins" in body["detail"]
    assert "access-control-allow-origin" not in r.headers
    assert await stored_feedback(client, origins) == []
    r = await client.get("/v1/feedback/fb-no", headers=origins.headers())
    assert r.status_code == 404


async def test_an_origin_allowed_by_another_project_does_not_open_this_projects_public_key(
    client: httpx.AsyncClient, runtime: Runtime, origins: Tenant, other_tenant: Tenant
) -> None:
    runtime.projects.set_origins("globex", (GLOBEX,))
    r = await client.options("/v1/events", headers=preflight_headers(GLOBEX))
    assert r.status_code == 204, "the preflight cannot know the key; the POST checks it"
    headers = {**origins.headers("public"), "origin": GLOBEX}
    r = await client.post("/v1/events", json={"events": [thumbs("fb-x")]}, headers=headers)
    assert r.status_code == 403
    assert await stored_feedback(client, origins) == []
    headers = {**other_tenant.headers("public"), "origin": GLOBEX}
    r = await client.post("/v1/events", json={"events": [thumbs("fb-g")]}, headers=headers)
    assert r.status_code == 200
    assert await stored_feedback(client, other_tenant) == ["fb-g"]


async def test_a_wildcard_origin_lets_every_page_use_the_public_key(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    runtime.projects.set_origins("acme", ("*",))
    r = await client.options("/v1/events", headers=preflight_headers(EVIL))
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == EVIL
    headers = {**tenant.headers("public"), "origin": EVIL}
    r = await client.post("/v1/events", json={"events": [thumbs("fb-any")]}, headers=headers)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == EVIL


async def test_an_origin_change_applies_to_the_next_request(
    client: httpx.AsyncClient, runtime: Runtime, origins: Tenant
) -> None:
    headers = {**origins.headers("public"), "origin": APP}
    r = await client.post("/v1/events", json={"events": [thumbs("fb-1")]}, headers=headers)
    assert r.status_code == 200
    runtime.projects.set_origins("acme", ("https://new.example.com",))
    r = await client.post("/v1/events", json={"events": [thumbs("fb-2")]}, headers=headers)
    assert r.status_code == 403
    assert await stored_feedback(client, origins) == ["fb-1"]


async def test_a_public_key_without_an_origin_is_not_a_browser_and_is_accepted(
    client: httpx.AsyncClient, origins: Tenant
) -> None:
    r = await client.post(
        "/v1/events", json={"events": [thumbs("fb-app")]}, headers=origins.headers("public")
    )
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers


async def test_a_secret_key_from_a_disallowed_origin_gets_no_cors_header(
    client: httpx.AsyncClient, origins: Tenant
) -> None:
    headers = {**origins.headers("secret"), "origin": EVIL}
    r = await client.post("/v1/events", json={"events": [thumbs("fb-s")]}, headers=headers)
    assert r.status_code == 200
    assert "access-control-allow-origin" not in r.headers, "no page of that origin can read it"


async def test_a_public_key_from_an_allowed_origin_still_cannot_send_interactions_or_read(
    client: httpx.AsyncClient, origins: Tenant
) -> None:
    headers = {**origins.headers("public"), "origin": APP}
    event = make_event("interaction", {"input": "x"}, id="int-browser")
    r = await client.post("/v1/events", json={"events": [event]}, headers=headers)
    assert r.status_code == 207
    assert r.json()["results"][0]["error"]["field"] == "type"
    r = await client.get("/v1/interactions", headers=headers)
    assert r.status_code == 401
