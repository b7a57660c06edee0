"""``POST /v1/events``: the HTTP way into the ingest path; ``GET /v1/schema``."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Request, Response
from starlette.responses import JSONResponse

from closedloop.events import LIMITS, Event, event_json_schema
from closedloop.ingest.body import read_body
from closedloop.ingest.cors import refuse_origin
from closedloop.ingest.deps import get_runtime, is_not_at_capacity, require_key
from closedloop.ingest.pipeline import decode_batch
from closedloop.types import BatchResult, ProjectKey

__all__ = ["batch_response", "batch_schema_components", "router"]

router = APIRouter(prefix="/v1", tags=["events"])


class Batch(msgspec.Struct):
    """A batch of events: ``{"events": [event, ...]}`` (at most ``batch_events`` events)."""

    events: list[Event]


def batch_response(result: BatchResult) -> Response:
    """The answer to a batch: 200 when every event was stored, else 207; per-event results."""
    content = msgspec.json.encode(
        {
            "stored": result.count("stored"),
            "duplicate": result.count("duplicate"),
            "rejected": result.count("rejected"),
            "dropped": result.count("dropped"),
            "results": [r.to_json() for r in result.results],
        }
    )
    return Response(
        content, status_code=200 if result.all_stored else 207, media_type="application/json"
    )


def batch_schema_components() -> tuple[dict[str, Any], dict[str, Any]]:
    """The request body schema of ``POST /v1/events`` and its OpenAPI components."""
    (schema,), components = msgspec.json.schema_components(
        [Batch], ref_template="#/components/schemas/{name}"
    )
    return schema, components


_RESULT_EXAMPLE = {
    "stored": 1,
    "duplicate": 1,
    "rejected": 1,
    "dropped": 0,
    "results": [
        {"id": "0192f0c1-0000-7000-8000-000000000001", "status": "stored"},
        {"id": "0192f0c1-0000-7000-8000-000000000002", "status": "duplicate"},
        {
            "id": "0192f0c1-0000-7000-8000-000000000003",
            "status": "rejected",
            "error": {"field": "body.thumbs", "message": "must be -1 or 1"},
        },
    ],
}


@router.post(
    "/events",
    summary="Ingest a batch of events",
    description=(
        "Stores interactions, feedback and signals. 200: every event stored. 207: some were "
        "duplicates or rejected (see `results`). A per-event `stored` means committed. "
        f"At most {LIMITS.batch_events} events; gzip accepted (`Content-Encoding: gzip`)."
    ),
    dependencies=[Depends(is_not_at_capacity)],
    responses={
        200: {"description": "All events stored.", "content": {"application/json": {}}},
        207: {
            "description": "Some events were not stored; per-event results say why.",
            "content": {"application/json": {"example": _RESULT_EXAMPLE}},
        },
        400: {"description": "The body is not JSON of the documented shape."},
        401: {"description": "Missing, unknown or revoked key."},
        403: {"description": "A public key used from an origin its project does not allow."},
        413: {"description": "Body or batch over the limit."},
        415: {"description": "Wrong Content-Type or Content-Encoding."},
        429: {"description": "Write queue full; retry after Retry-After."},
        503: {"description": "Database unreachable; retry after Retry-After."},
    },
    openapi_extra={"x-closedloop-batch": True},
)
async def post_events(
    request: Request, key: Annotated[ProjectKey, Depends(require_key)]
) -> Response:
    runtime = get_runtime(request)
    refused = refuse_origin(request, key)
    if refused is not None:
        return refused
    body = await read_body(request, runtime.settings.max_body_bytes)
    raws = decode_batch(body, max_events=runtime.settings.max_batch_events)
    result = await runtime.ingestor.aingest(key, raws)
    return batch_response(result)


@router.get("/schema", summary="JSON Schema of one event envelope")
async def get_schema() -> JSONResponse:
    return JSONResponse(event_json_schema())
