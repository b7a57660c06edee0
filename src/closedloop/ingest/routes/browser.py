"""Browser capture: ``POST /v1/browser/events`` and the snippet at ``GET /sdk/closedloop.js``.

``navigator.sendBeacon`` cannot set headers and sends cross-origin only CORS-safelisted
content types, so this endpoint differs from ``POST /v1/events`` in three ways: the key
travels in the body (``{"key": "cl_pk_...", "events": [...]}``) or the query (``?key=``), a
``text/plain`` body is accepted as JSON, and only the project's *public* key is taken. A
secret key is refused outright (it must never reach a browser), and the public key sends
feedback and signals only: the ingest path rejects interactions per event.

An ``Origin`` header must be in the key's project allowlist (``closedloop projects origins``);
a request without one (a server, curl) is let through, as on ``POST /v1/events``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from closedloop.errors import AuthError, ContractError
from closedloop.ingest.body import read_body
from closedloop.ingest.cors import refuse_origin
from closedloop.ingest.deps import get_runtime, is_not_at_capacity
from closedloop.ingest.pipeline import decode_batch
from closedloop.ingest.problems import problem
from closedloop.ingest.routes.events import batch_response
from closedloop.types import ProjectKey

__all__ = ["BROWSER_EVENTS", "SNIPPET", "router", "snippet"]

BROWSER_EVENTS = "/v1/browser/events"
SNIPPET = "/sdk/closedloop.js"
CONTENT_TYPES = frozenset({"text/plain", "application/json"})

router = APIRouter(tags=["browser"])


class _KeyOnly(msgspec.Struct):
    key: Any = None


_key_decoder = msgspec.json.Decoder(_KeyOnly)


def _body_key(body: bytes) -> str | None:
    """The ``key`` member of a JSON object body; ``None`` if absent or the body is not JSON
    (``decode_batch`` then says what is wrong with it)."""
    try:
        value = _key_decoder.decode(body).key
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if value is not None and not isinstance(value, str):
        raise ContractError("key", "must be a string: the project's public key (cl_pk_...)")
    return value


def _unauthorized(detail: str) -> Response:
    return problem(401, "Unauthorized", detail, field="key")


async def _verify(request: Request, token: str) -> ProjectKey | Response:
    runtime = get_runtime(request)
    key = runtime.keys.cached(token)
    if key is None:
        try:
            key = await run_in_threadpool(runtime.verify, token)
        except AuthError as exc:
            return _unauthorized(str(exc))
    if key.kind != "public":
        return _unauthorized(
            "a secret key may never be sent from a browser: use the project's public key "
            "(cl_pk_...), and rotate this secret key, which has been exposed: "
            "`closedloop projects rotate NAME --kind secret`"
        )
    return key


_BODY_SCHEMA = {
    "type": "object",
    "required": ["events"],
    "properties": {
        "key": {"type": "string", "description": "The project's public key (cl_pk_...)."},
        "events": {
            "type": "array",
            "items": {"type": "object"},
            "description": "Feedback and signal event envelopes (see POST /v1/events).",
        },
    },
}


@router.post(
    BROWSER_EVENTS,
    summary="Ingest feedback and signals from a browser (sendBeacon)",
    description=(
        "For `navigator.sendBeacon` and `fetch(..., {keepalive: true})`: the public key goes "
        'in the body (`{"key": "cl_pk_...", "events": [...]}`) or the `key` query parameter, '
        "and a `text/plain` body is read as JSON. Feedback and signals only; a secret key is "
        "refused. Answers as `POST /v1/events` does (200, or 207 with per-event results)."
    ),
    dependencies=[Depends(is_not_at_capacity)],
    responses={
        200: {"description": "All events stored.", "content": {"application/json": {}}},
        207: {"description": "Some events were not stored; per-event results say why."},
        400: {"description": "The body is not JSON of the documented shape."},
        401: {"description": "Missing, unknown, revoked or secret key."},
        403: {"description": "An origin the key's project does not allow."},
        413: {"description": "Body or batch over the limit."},
        415: {"description": "Content-Type other than text/plain or application/json."},
        429: {"description": "Write queue full; retry after Retry-After."},
        503: {"description": "Database unreachable; retry after Retry-After."},
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "text/plain": {"schema": _BODY_SCHEMA},
                "application/json": {"schema": _BODY_SCHEMA},
            },
        }
    },
)
async def post_browser_events(
    request: Request,
    key: Annotated[
        str | None,
        Query(max_length=256, description="The public key, when it is not in the body."),
    ] = None,
) -> Response:
    runtime = get_runtime(request)
    # sendBeacon sends a text Blob as text/plain and cannot set a Content-Encoding
    body = await read_body(
        request,
        runtime.settings.max_body_bytes,
        media_types=tuple(sorted(CONTENT_TYPES, reverse=True)),
        encodings=("identity",),
    )
    token = key or _body_key(body)
    if not token:
        return _unauthorized(
            'send the project\'s public key in the body ({"key": "cl_pk_...", "events": '
            "[...]}) or as the `key` query parameter"
        )
    verified = await _verify(request, token)
    if isinstance(verified, Response):
        return verified
    refused = refuse_origin(request, verified)
    if refused is not None:
        return refused
    raws = decode_batch(body, max_events=runtime.settings.max_batch_events)
    result = await runtime.ingestor.aingest(verified, raws)
    return batch_response(result)


@functools.cache
def snippet() -> tuple[bytes, str]:
    """The browser snippet from the package data, and its ETag."""
    source = importlib.resources.files("closedloop.ingest").joinpath("static/closedloop.js")
    data = source.read_bytes()
    return data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"'


@router.get(SNIPPET, include_in_schema=False)
async def get_snippet(request: Request) -> Response:
    data, etag = snippet()
    headers = {
        "cache-control": "public, max-age=3600",
        "etag": etag,
        "access-control-allow-origin": "*",  # a public file; lets pages use crossorigin/SRI
        "x-content-type-options": "nosniff",
    }
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type="text/javascript; charset=utf-8", headers=headers)
