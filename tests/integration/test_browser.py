"""Browser capture: the sendBeacon-friendly ``POST /v1/browser/events`` and the snippet."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from closedloop import make_event
from closedloop.runtime import Runtime
from tests.conftest import Tenant

APP = "https://app.example.com"
EVIL = "https://evil.example.com"
URL = "/v1/browser/events"
TEXT = {"content-type": "text/plain;charset=UTF-8"}


@pytest.fixture
def acme(runtime: Runtime, tenant: Tenant) -> Tenant:
    """Project acme allows its app's origin."""
    runtime.projects.set_origins("acme", (APP,))
    return tenant


def thumbs_down(id: str, interaction_id: str = "i-1") -> dict[str, Any]:
    return make_event("feedback", {"interaction_id": interaction_id, "thumbs": -1}, id=id)


def edit(id: str, text: str = "kept") -> dict[str, Any]:
    return make_event("signal", {"interaction_id": "i-1", "kind": "edit", "text": text}, id=id)


def beacon(key: str | None, *events: dict[str, Any]) -> bytes:
    body: dict[str, Any] = {"events": list(events)}
    if key is not None:
        body["key"] = key
    return json.dumps(body).encode()


async def stored(client: httpx.AsyncClient, tenant: Tenant, kind: str) -> list[dict[str, Any]]:
    r = await client.get(f"/v1/{kind}", headers=tenant.headers())
    assert r.status_code == 200, r.text
    data: list[dict[str, Any]] = r.json()["data"]
    return data


async def test_a_text_plain_beacon_with_the_key_in_the_body_stores_feedback_and_signals(
    client: httpx.AsyncClient, acme: Tenant
) -> None:
    body = beacon(acme.public_key, thumbs_down("f-1"), edit("s-1", "the kept text"))
    r = await client.post(URL, content=body, headers={**TEXT, "origin": APP})
    assert r.status_code == 200, r.text
    assert r.json()["stored"] == 2
    assert r.headers["access-control-allow-origin"] == APP
    assert [f["thumbs"] for f in await stored(client, acme, "feedback")] == [-1]
    r = await client.get("/v1/signals/s-1", headers=acme.headers())
    assert r.json()["kind"] == "edit" and r.json()["text"] == "the kept text"


async def test_the_key_may_travel_in_the_query_instead(
    client: httpx.AsyncClient, acme: Tenant
) -> None:
    r = await client.post(
        URL,
        params={"key": acme.public_key},
        content=beacon(None, thumbs_down("f-1")),
        headers={"content-type": "application/json", "origin": APP},
    )
    assert r.status_code == 200, r.text
    assert [f["id"] for f in await stored(client, acme, "feedback")] == ["f-1"]


async def test_a_request_without_an_origin_is_let_through_like_on_post_events(
    client: httpx.AsyncClient, acme: Tenant
) -> None:
    r = await client.post(URL, content=beacon(acme.public_key, thumbs_down("f-1")), headers=TEXT)
    assert r.status_code == 200, r.text
    assert "access-control-allow-origin" not in r.headers


async def test_interactions_are_rejected_per_event_and_the_rest_is_stored(
    client: httpx.AsyncClient, acme: Tenant
) -> None:
    interaction = make_event("interaction", {"input": "q", "output": "a"}, id="i-9")
    body = beacon(acme.public_key, interaction, thumbs_down("f-1"))
    r = await client.post(URL, content=body, headers={**TEXT, "origin": APP})
    assert r.status_code == 207, r.text
    first, second = r.json()["results"]
    assert first["status"] == "rejected" and first["error"]["field"] == "type"
    assert second["status"] == "stored"
    assert await stored(client, acme, "interactions") == []


@pytest.mark.parametrize("key", ["cl_pk_unknown", "", None])
async def test_a_missing_or_unknown_key_gets_401(
    client: httpx.AsyncClient, acme: Tenant, key: str | None
) -> None:
    r = await client.post(URL, content=beacon(key, thumbs_down("f-1")), headers=TEXT)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["field"] == "key"
    assert await stored(client, acme, "feedback") == []


async def test_a_secret_key_is_refused_outright_and_told_to_rotate(
    client: httpx.AsyncClient, acme: Tenant
) -> None:
    r = await client.post(URL, content=beacon(acme.secret_key, thumbs_down("f-1")), headers=TEXT)
    assert r.status_code == 401, r.text
    assert "public key" in r.json()["detail"] and "rotate" in r.json()["detail"]
    assert await stored(client, acme, "feedback") == []


async def test_a_revoked_public_key_gets_401(
    client: httpx.AsyncClient, runtime: Runtime, acme: Tenant
) -> None:
    runtime.projects.revoke(acme.public_key)
    r = await client.post(URL, content=beacon(acme.public_key, thumbs_down("f-1")), headers=TEXT)
    assert r.status_code == 401, r.text


async def test_an_origin_outside_the_allowlist_gets_403_without_cors_headers(
    client: httpx.AsyncClient, acme: Tenant
) -> None:
    body = beacon(acme.public_key, thumbs_down("f-1"))
    r = await client.post(URL, content=body, headers={**TEXT, "origin": EVIL})
    assert r.status_code == 403, r.text
    assert r.json()["field"] == "origin"
    assert "access-control-allow-origin" not in r.headers
    assert await stored(client, acme, "feedback") == []


async def test_an_origin_allowed_for_another_project_is_refused(
    client: httpx.AsyncClient, runtime: Runtime, acme: Tenant, other_tenant: Tenant
) -> None:
    runtime.projects.set_origins("globex", (EVIL,))
    body = beacon(acme.public_key, thumbs_down("f-1"))
    r = await client.post(URL, content=body, headers={**TEXT, "origin": EVIL})
    assert r.status_code == 403, r.text


async def test_a_preflight_from_an_allowed_origin_is_answered_for_the_fetch_fallback(
    client: httpx.AsyncClient, acme: Tenant
) -> None:
    headers = {
        "origin": APP,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    r = await client.options(URL, headers=headers)
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == APP
    r = await client.options(URL, headers={**headers, "origin": EVIL})
    assert r.status_code == 403
    assert "access-control-allow-origin" not in r.headers


async def test_errors_to_an_allowed_origin_carry_cors_headers(
    client: httpx.AsyncClient, acme: Tenant
) -> None:
    r = await client.post(URL, content=b"not json", headers={**TEXT, "origin": APP})
    assert r.status_code == 401  # no key can be found in a body that is not JSON
    assert r.headers["access-control-allow-origin"] == APP
    r = await client.post(
        URL, params={"key": acme.public_key}, content=b"not json", headers={**TEXT, "origin": APP}
    )
    assert r.status_code == 400
    assert r.json()["field"] == "body"
    assert r.headers["access-control-allow-origin"] == APP


@pytest.mark.parametrize(
    "headers",
    [{"content-type": "application/x-www-form-urlencoded"}, {}, {**TEXT, "content-encoding": "br"}],
)
async def test_other_media_types_get_415(
    client: httpx.AsyncClient, acme: Tenant, headers: dict[str, str]
) -> None:
    r = await client.post(URL, content=beacon(acme.public_key), headers=headers)
    assert r.status_code == 415, r.text


async def test_a_key_that_is_not_a_string_gets_400(client: httpx.AsyncClient, acme: Tenant) -> None:
    r = await client.post(URL, content=b'{"key": 7, "events": []}', headers=TEXT)
    assert r.status_code == 400
    assert r.json()["field"] == "key"


async def test_an_oversized_body_gets_413_before_the_key_is_looked_up(
    client: httpx.AsyncClient, runtime: Runtime, acme: Tenant
) -> None:
    big = b" " * (runtime.settings.max_body_bytes + 1)
    r = await client.post(URL, content=big, headers=TEXT)
    assert r.status_code == 413


async def test_the_snippet_is_served_as_cacheable_javascript(client: httpx.AsyncClient) -> None:
    r = await client.get("/sdk/closedloop.js")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "max-age" in r.headers["cache-control"]
    assert r.headers["x-content-type-options"] == "nosniff"
    source = r.text
    for name in ("sendBeacon", "keepalive", "/v1/browser/events", "visibilitychange", "pagehide"):
        assert name in source, name
    assert "import " not in source and "require(" not in source, "no dependencies"
    assert len(r.content) < 8_000, "the snippet stays small"
    again = await client.get("/sdk/closedloop.js", headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304
    assert again.content == b""


async def test_the_browser_endpoint_is_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    post = document["paths"]["/v1/browser/events"]["post"]
    assert set(post["requestBody"]["content"]) == {"text/plain", "application/json"}
    assert "/sdk/closedloop.js" not in document["paths"]
