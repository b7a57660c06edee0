"""``POST /v1/traces`` across projects: a key writes only into its own project, and only a
secret key writes at all.

:func:`check_post_traces` has the shape of the checks of the cross-tenant matrix
(``tests/integration/test_tenancy.py``), so the matrix can list it for ``POST /v1/traces``;
the test below runs it on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from tests.conftest import Tenant
from tests.integration.test_otlp import PROTOBUF, export, sid, span

SECRET = "ACME-OTLP-CONFIDENTIAL reactor vent sequence"
LLM = {
    "openinference.span.kind": "LLM",
    "llm.model_name": "acme-otlp-model",
    "input.value": SECRET,
    "output.value": SECRET + " answer",
}


class TenancyWorld(Protocol):
    """What the check needs of the matrix's ``World``: a client and both projects."""

    client: httpx.AsyncClient
    a: Tenant
    b: Tenant

    def callers(self) -> dict[str, dict[str, str]]: ...


async def check_post_traces(w: TenancyWorld, path: str) -> None:
    """The same span ids sent with B's secret key land in B, never in A; public keys and no
    key get 401; A's secret key gets 200."""
    body = export(span(9, LLM)).SerializeToString()
    r = await w.client.post(path, content=body, headers=w.a.headers() | PROTOBUF)
    assert r.status_code == 200, r.text
    a_before = (await w.client.get(f"/v1/interactions/{sid(9)}", headers=w.a.headers())).json()

    other = export(span(9, {**LLM, "input.value": "globex", "output.value": "globex"}))
    for who, headers in w.callers().items():
        r = await w.client.post(path, content=other.SerializeToString(), headers=headers | PROTOBUF)
        if who == "B secret":
            assert r.status_code == 200, (who, r.text)
        else:
            assert r.status_code == 401, (who, r.status_code, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
        assert SECRET not in r.text and "acme" not in r.text, (who, r.text)

    r = await w.client.get(f"/v1/interactions/{sid(9)}", headers=w.a.headers())
    assert r.json() == a_before, "B's export changed A's interaction"
    r = await w.client.get(f"/v1/interactions/{sid(9)}", headers=w.b.headers())
    assert r.status_code == 200, r.text
    assert r.json()["input"] == "globex"
    assert SECRET not in r.text


@dataclass
class _World:
    client: httpx.AsyncClient
    a: Tenant
    b: Tenant

    def callers(self) -> dict[str, dict[str, str]]:
        return {
            "B secret": self.b.headers("secret"),
            "B public": self.b.headers("public"),
            "A public": self.a.headers("public"),
            "no key": {},
        }


async def test_traces_sent_with_another_projects_key_never_reach_project_a(
    client: httpx.AsyncClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    world: Any = _World(client, tenant, other_tenant)
    await check_post_traces(world, "/v1/traces")
