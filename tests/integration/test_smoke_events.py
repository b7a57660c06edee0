from __future__ import annotations

import httpx

from closedloop import make_event
from tests.conftest import Tenant


async def test_a_batch_is_stored_and_read_back_with_its_feedback(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    events = [
        make_event("feedback", {"interaction_id": "i-1", "thumbs": -1}, id="f-1"),
        make_event("interaction", {"input": "hi", "output": "hello"}, id="i-1"),
    ]
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert [x["status"] for x in r.json()["results"]] == ["stored", "stored"]
    r = await client.get("/v1/interactions/i-1", headers=tenant.headers())
    assert r.status_code == 200
    assert [f["id"] for f in r.json()["feedback"]] == ["f-1"]
