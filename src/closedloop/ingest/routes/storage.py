"""Storage of a project: its retention, its lake, and erasure of one end user (secret key)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Path, Request
from starlette.concurrency import run_in_threadpool

from closedloop.ingest.body import read_body
from closedloop.ingest.deps import get_runtime, require_secret_key
from closedloop.store.retention import Retention
from closedloop.types import ProjectKey

__all__ = ["retention_schema", "router"]

router = APIRouter(prefix="/v1", tags=["storage"])

Key = Annotated[ProjectKey, Depends(require_secret_key)]
_POLICY_BYTES = 16 * 1024


def retention_schema() -> dict[str, Any]:
    """The JSON Schema of :class:`Retention` (for the OpenAPI document)."""
    (_schema,), components = msgspec.json.schema_components([Retention])
    return dict(components["Retention"])


@router.get("/project/retention", summary="The project's retention")
async def get_retention(request: Request, key: Key) -> dict[str, Any]:
    runtime = get_runtime(request)
    text = await run_in_threadpool(runtime.projects.retention, key.project_id)
    return Retention.from_json(text or "{}").to_json()


@router.put(
    "/project/retention",
    summary="Replace the project's retention",
    description="Days in the hot store before rows move to the lake, days in the lake, days of "
    "vectors, and what happens to events for an erased user. The jobs apply it on their next "
    "run.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Retention"}}},
        }
    },
)
async def put_retention(request: Request, key: Key) -> dict[str, Any]:
    runtime = get_runtime(request)
    policy = Retention.from_json(await read_body(request, _POLICY_BYTES))
    await run_in_threadpool(runtime.projects.set_retention, key.project_id, policy.encode())
    runtime.erased.forget(key.project_id)
    return policy.to_json()


@router.get("/lake", summary="The project's lake: files, rows and bytes per entity")
def get_lake(request: Request, key: Key) -> dict[str, Any]:
    runtime = get_runtime(request)
    return runtime.lake_summary(key.project_id)


@router.delete(
    "/users/{user_id}",
    summary="Erase one end user from every tier",
    description="Removes the user's interactions, the feedback and signals on them or given by "
    "them, their sessions, vectors, lake rows (rewriting the affected Parquet files) and the "
    "export files that held them, and records a tombstone so their later events are refused "
    "or dropped (the project's retention says which). `user_id` is the id the app sends; "
    "projects that store ids hashed are looked up by the hash too. Safe to repeat. Answers "
    "with a receipt of what was removed where.",
)
def erase(
    request: Request,
    key: Key,
    user_id: Annotated[str, Path(min_length=1, max_length=128, description="The app's user id.")],
) -> dict[str, Any]:
    runtime = get_runtime(request)
    receipt = runtime.erase_user(key.project_id, user_id)
    return {"user_id": user_id, **receipt.to_json()}
