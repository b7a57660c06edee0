"""The project's PII policy: read it, replace it (secret key)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from closedloop.enrich.privacy import PiiPolicy
from closedloop.ingest.body import read_body
from closedloop.ingest.deps import get_runtime, require_secret_key
from closedloop.types import ProjectKey

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["privacy"])

Key = Annotated[ProjectKey, Depends(require_secret_key)]
_POLICY_BYTES = 64 * 1024


def policy_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`PiiPolicy` (for the OpenAPI document)."""
    (schema,), components = msgspec.json.schema_components([PiiPolicy])
    return dict(components["PiiPolicy"])


@router.get("/project/pii", summary="The project's PII policy")
async def get_pii(request: Request, key: Key) -> dict[str, Any]:
    runtime = get_runtime(request)
    policy_json, _secret = await run_in_threadpool(runtime.projects.pii, key.project_id)
    return PiiPolicy.from_json(policy_json).to_json()


@router.put(
    "/project/pii",
    summary="Replace the project's PII policy",
    description="Takes effect for events received after the answer (in other server processes "
    "within `CLOSEDLOOP_AUTH_CACHE_SECONDS`). Stored events are not rewritten.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PiiPolicy"}}},
        }
    },
)
async def put_pii(request: Request, key: Key) -> dict[str, Any]:
    runtime = get_runtime(request)
    policy = PiiPolicy.from_json(await read_body(request, _POLICY_BYTES))

    def store() -> None:
        runtime.projects.set_pii(key.project_id, msgspec.json.encode(policy).decode())
        runtime.redactors.forget(key.project_id)

    await run_in_threadpool(store)
    return policy.to_json()
