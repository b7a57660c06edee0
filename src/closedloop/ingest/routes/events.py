"""``POST /v1/events``: the HTTP way into the ingest path; ``GET /v1/schema``."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Request, Response
from starlette.responses import JSONResponse

from closedloop.events import LIMITS, Event, event_json_schema
from closedloop.ingest.body import read_body
from closedloop.ingest.deps import get_runtime, is_not_at_capacity, require_key
from closedloop.ingest.pipeline import decode_batch
from closedloop.ingest.problems import problem
from closedloop.types import ProjectKey

__all__ = ["batch_schema_components", "router"]

router = APIRouter(prefix="/v1", tags=["events"])


class Batch(msgspec.Struct):
    """A batch of events: ``{"events": [event, ...]}`` (at most ``batch_events`` events)."""

    events: list[Event]


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


def _origin_allowed(origin: str, allowed: tuple[str, ...] | set[str]) -> bool:
    return "*" in allowed or origin.rstrip("/") in allowed


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
        403: {"description": "The browser origin is not allowed for this project."},
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
    origin = request.headers.get("origin")
    cors: dict[str, str] = {}
    if origin is not None:
        if key.kind == "public" and not _origin_allowed(origin, key.cors_origins):
            return problem(
                403,
                "Origin not allowed",
                f"origin {origin!r} may not use this project's public key; add it with "
                "`closedloop projects origins NAME ORIGIN`",
                field="origin",
            )
        if _origin_allowed(origin, key.cors_origins):
            cors = {"access-control-allow-origin": origin, "vary": "Origin"}
    body = await read_body(request, runtime.settings.max_body_bytes)
    raws = decode_batch(body, max_events=runtime.settings.max_batch_events)
    result = await runtime.ingestor.aingest(key, raws)
    stored, duplicate, rejected = (
        result.count("stored"),
        result.count("duplicate"),
        result.count("rejected"),
    )
    content = msgspec.json.encode(
        {
            "stored": stored,
            "duplicate": duplicate,
            "rejected": rejected,
            "results": [r.to_json() for r in result.results],
        }
    )
    return Response(
        content,
        status_code=200 if result.all_stored else 207,
        media_type="application/json",
        headers=cors,
    )


@router.options("/events", include_in_schema=False)
async def preflight_events(request: Request) -> Response:
    """CORS preflight: allowed when some project allows the origin; the POST itself then
    checks the origin against the key's own project."""
    origin = request.headers.get("origin", "")
    if not origin or not _origin_allowed(origin, get_runtime(request).keys.origins()):
        return Response(status_code=403)
    return Response(
        status_code=204,
        headers={
            "access-control-allow-origin": origin,
            "access-control-allow-methods": "POST",
            "access-control-allow-headers": "authorization, content-type, content-encoding",
            "access-control-max-age": "600",
            "vary": "Origin",
        },
    )


@router.get("/schema", summary="JSON Schema of one event envelope")
async def get_schema() -> JSONResponse:
    return JSONResponse(event_json_schema())
