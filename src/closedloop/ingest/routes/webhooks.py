"""Webhook endpoints and the delivery outbox (secret key)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import pydantic
from fastapi import APIRouter, Depends, Path, Query, Request

from closedloop.act.webhooks.endpoints import Endpoints
from closedloop.act.webhooks.outbox import deliveries, enqueue, retry
from closedloop.act.webhooks.ssrf import SsrfGuard
from closedloop.ingest.deps import NO_NUL, get_runtime, require_secret_key
from closedloop.store.db import utcnow
from closedloop.types import ProjectKey

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["webhooks"])

Key = Annotated[ProjectKey, Depends(require_secret_key)]
Name = Annotated[
    str, Path(pattern=NO_NUL, min_length=1, max_length=64, description="The endpoint's name.")
]
State = Literal["pending", "sending", "delivered", "failed", "dead"]
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such endpoint or delivery in this project."}
}


class EndpointIn(pydantic.BaseModel):
    """A new webhook endpoint."""

    model_config = pydantic.ConfigDict(extra="forbid")

    name: str = pydantic.Field(min_length=1, max_length=64, description="a-z, 0-9, _ . -")
    url: str = pydantic.Field(min_length=1, max_length=2048, description="http(s) URL.")
    format: Literal["standard", "slack"] = pydantic.Field(
        default="standard", description="Standard Webhooks envelope, or a Slack message."
    )
    allow_private: bool = pydantic.Field(
        default=False,
        description="May reach a non-public address, if it is in CLOSEDLOOP_WEBHOOK_ALLOW.",
    )


def _endpoints(request: Request) -> Endpoints:
    runtime = get_runtime(request)
    return Endpoints(runtime.engine, SsrfGuard(runtime.settings.webhook_allow))


@router.post(
    "/webhooks",
    status_code=201,
    summary="Create a webhook endpoint; its signing secret is shown once",
    description="The URL must be http(s) and reach a public address (the SSRF guard; a "
    "non-public one needs `allow_private` and the operator's CLOSEDLOOP_WEBHOOK_ALLOW). "
    "Deliveries are signed with the returned Standard Webhooks secret (`whsec_...`).",
)
def post_webhook(request: Request, key: Key, body: EndpointIn) -> dict[str, Any]:
    endpoint = _endpoints(request).create(
        key.project_id,
        body.name,
        body.url,
        format=body.format,
        allow_private=body.allow_private,
    )
    return {**endpoint.to_json(), "secret": endpoint.secret}


@router.get("/webhooks", summary="The project's webhook endpoints (without secrets)")
def get_webhooks(request: Request, key: Key) -> dict[str, Any]:
    return {"endpoints": [e.to_json() for e in _endpoints(request).list(key.project_id)]}


@router.get(
    "/webhooks/deliveries",
    summary="Webhook deliveries, newest first",
    description="States: `pending`, `sending` (leased by a sender), `delivered`, `failed` "
    "(retried at `next_attempt_at`) and `dead` (attempts exhausted; see `last_error`).",
)
def get_deliveries(
    request: Request,
    key: Key,
    state: Annotated[State | None, Query(description="Only this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    runtime = get_runtime(request)
    return {"deliveries": deliveries(runtime.engine, key.project_id, state=state, limit=limit)}


@router.post(
    "/webhooks/deliveries/{delivery_id}/retry",
    summary="Send a failed or dead delivery again, now",
    responses=NOT_FOUND,
)
def post_retry(
    request: Request, key: Key, delivery_id: Annotated[int, Path(ge=1, le=2**62)]
) -> dict[str, Any]:
    return retry(get_runtime(request).engine, key.project_id, delivery_id)


@router.delete("/webhooks/{name}", summary="Remove a webhook endpoint", responses=NOT_FOUND)
def delete_webhook(request: Request, key: Key, name: Name) -> dict[str, Any]:
    _endpoints(request).delete(key.project_id, name)
    return {"deleted": name}


@router.post(
    "/webhooks/{name}/rotate",
    summary="Give an endpoint a new signing secret (shown once)",
    responses=NOT_FOUND,
)
def post_rotate(request: Request, key: Key, name: Name) -> dict[str, Any]:
    endpoint = _endpoints(request).rotate(key.project_id, name)
    return {**endpoint.to_json(), "secret": endpoint.secret}


@router.post(
    "/webhooks/{name}/test",
    status_code=202,
    summary="Queue a `closedloop.test` event to an endpoint",
    responses=NOT_FOUND,
)
def post_test(request: Request, key: Key, name: Name) -> dict[str, Any]:
    runtime = get_runtime(request)
    data = {"message": "a test event from closedloop", "sent_at": utcnow()}
    with runtime.engine.begin() as conn:
        delivery_id = enqueue(conn, key.project_id, name, "closedloop.test", data)
    return {"delivery_id": delivery_id}
