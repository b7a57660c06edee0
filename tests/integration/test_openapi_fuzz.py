"""Schemathesis against the app's own OpenAPI document, through the ASGI app, with a valid
secret key: no operation may answer a 5xx, whatever it is sent.

Runs on both backends; the number of examples is bounded so the module stays well under a
minute.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from starlette.types import Receive, Scope, Send

from closedloop import make_event
from closedloop.ingest.app import create_app
from closedloop.runtime import Runtime
from tests.conftest import Tenant


def _app_without_lifespan(runtime: Runtime) -> Any:
    """The app on the fixture's runtime; its lifespan is refused so that the ASGI client
    neither starts the runtime a second time nor stops it (the ``runtime`` fixture owns both).
    """
    app = create_app(runtime=runtime)
    app.state.runtime = runtime

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            # Raising before receiving any message is how an ASGI app declines the lifespan.
            raise RuntimeError("the runtime fixture starts and stops the runtime")
        await app(scope, receive, send)

    return asgi


@pytest.fixture
async def seeded_tenant(client: httpx.AsyncClient, tenant: Tenant) -> Tenant:
    """A tenant whose store holds an interaction with feedback and a signal, so the read
    endpoints have rows to serve."""
    events = [
        make_event("interaction", {"input": "hi", "output": "hello"}, id="i-1"),
        make_event("feedback", {"interaction_id": "i-1", "rating": 4, "label": "ok"}, id="f-1"),
        make_event("signal", {"interaction_id": "i-1", "kind": "copy"}, id="s-1"),
    ]
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    return tenant


def _operations(schema: Any) -> list[Any]:
    operations = []
    for result in schema.get_all_operations():
        operations.append(result.ok())  # an operation the loader cannot read fails here
    return operations


# A few dozen examples per operation and mode keeps a backend under ~10 s.
FUZZ = settings(
    max_examples=30,
    deadline=None,
    database=None,  # no example database shared with other runs: each run stands alone
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_no_operation_answers_a_server_error_to_any_generated_request(
    runtime: Runtime, seeded_tenant: Tenant, subtests: pytest.Subtests
) -> None:
    # Generated requests are meant to go wrong in every way but one: the key is valid, so they
    # get past authentication and reach the code behind it. (Driven by ``as_strategy`` rather
    # than ``schemathesis.pytest.from_fixture``, whose node-id bookkeeping breaks on pytest 9.)
    schema = schemathesis.openapi.from_asgi("/openapi.json", _app_without_lifespan(runtime))
    operations = _operations(schema)
    labels = {op.label for op in operations}
    assert {"POST /v1/events", "GET /v1/interactions", "GET /v1/feedback"} <= labels
    headers = seeded_tenant.headers()
    for operation in operations:
        modes = [GenerationMode.POSITIVE]
        if list(operation.query) or list(operation.body):
            # Only a query or a body can be made invalid; a bare string path parameter cannot.
            modes.append(GenerationMode.NEGATIVE)
        for mode in modes:
            strategy = operation.as_strategy(mode, headers=headers)

            @FUZZ
            @given(case=strategy)
            def fuzz(case: schemathesis.Case) -> None:
                response = case.call(headers=headers)
                case.validate_response(response, checks=[not_a_server_error])

            with subtests.test(f"{operation.label} ({mode})"):
                fuzz()


async def test_the_openapi_document_describes_the_batch_body_of_post_events(
    client: httpx.AsyncClient,
) -> None:
    # The route reads raw bytes and decodes them with msgspec, so FastAPI cannot see the body:
    # the app's ``_openapi`` injects it, and this is what clients and fuzzers rely on.
    r = await client.get("/openapi.json")
    assert r.status_code == 200
    document = r.json()
    post = document["paths"]["/v1/events"]["post"]
    body = post["requestBody"]
    assert body["required"] is True
    batch = body["content"]["application/json"]["schema"]
    components = document["components"]["schemas"]
    if "$ref" in batch:
        batch = components[batch["$ref"].rsplit("/", 1)[1]]
    assert batch["required"] == ["events"]
    items = batch["properties"]["events"]["items"]
    refs = {ref["$ref"].rsplit("/", 1)[1] for ref in items["anyOf"]}
    assert refs == {"InteractionEvent", "FeedbackEvent", "SignalEvent"}
    assert items["discriminator"]["propertyName"] == "type"
    # Every reference resolves inside the document.
    for name in ("InteractionEvent", "FeedbackEvent", "SignalEvent", "Interaction", "Feedback"):
        assert name in components
    assert "x-closedloop-batch" not in post
    for status in ("200", "207", "400", "401", "413", "415", "429", "503"):
        assert status in post["responses"], status
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
