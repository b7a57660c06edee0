"""``POST /v1/traces``: the OTLP/HTTP way into the ingest path.

Takes an ``ExportTraceServiceRequest`` as protobuf or OTLP/JSON (gzip accepted), maps its LLM
spans to interaction events (:mod:`closedloop.ingest.otlp`) and passes them through the one
ingest path. Answers as the OTLP spec says: 200 with an ``ExportTraceServiceResponse`` in the
request's encoding, carrying ``partial_success`` when LLM spans were rejected.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from starlette.concurrency import run_in_threadpool

from closedloop.ingest.body import read_body
from closedloop.ingest.deps import get_runtime, is_not_at_capacity, require_secret_key
from closedloop.ingest.otlp import (
    JSON,
    PROTOBUF,
    MappedSpans,
    decode_request,
    encode_response,
    map_request,
)
from closedloop.types import ProjectKey

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["otlp"])

_REASONS_SHOWN = 5


def _decode_and_map(body: bytes, media_type: str) -> MappedSpans:
    return map_request(decode_request(body, media_type))


@router.post(
    "/traces",
    summary="Ingest OpenTelemetry traces (OTLP/HTTP)",
    description=(
        "An OTLP/HTTP trace receiver: `application/x-protobuf` or `application/json`, gzip "
        "accepted, authenticated with the project's secret key. Each LLM span (GenAI "
        "semantic conventions or OpenInference) becomes one interaction with id "
        "`otel-<trace id>-<span id>`; retriever spans of the trace become its retrieved "
        "documents, tool spans and the trace, span and parent ids go to `metadata.otel`. "
        "Other spans are accepted and not stored. Answers an `ExportTraceServiceResponse` in "
        "the request's encoding, with `partial_success` when LLM spans were rejected."
    ),
    dependencies=[Depends(is_not_at_capacity)],
    responses={
        200: {
            "description": "Accepted; `partial_success.rejected_spans` counts rejected spans.",
            "content": {PROTOBUF: {}, JSON: {}},
        },
        400: {"description": "The body is not an ExportTraceServiceRequest."},
        401: {"description": "Missing, unknown, revoked or public key."},
        413: {"description": "Body over the limit."},
        415: {"description": "Content-Type other than protobuf or JSON, or unknown encoding."},
        429: {"description": "Write queue full; retry after Retry-After."},
        503: {"description": "Database unreachable; retry after Retry-After."},
    },
)
async def post_traces(
    request: Request, key: Annotated[ProjectKey, Depends(require_secret_key)]
) -> Response:
    runtime = get_runtime(request)
    body = await read_body(request, runtime.settings.max_body_bytes, media_types=(PROTOBUF, JSON))
    media_type = request.headers["content-type"].split(";")[0].strip().lower()
    # Decoding and mapping a large export is CPU work: keep it off the event loop.
    mapped = await run_in_threadpool(_decode_and_map, body, media_type)
    reasons = list(mapped.invalid)
    step = runtime.settings.max_batch_events
    for start in range(0, len(mapped.raws), step):
        # A batch at most as large as ``POST /v1/events`` takes. If a later one fails (429,
        # 503), the exporter retries the whole export: the ids make the first ones duplicates.
        result = await runtime.ingestor.aingest(key, mapped.raws[start : start + step])
        reasons += [
            f"interaction {r.id}: {r.field}: {r.message}" if r.field else f"{r.id}: {r.message}"
            for r in result.results
            if r.status == "rejected"
        ]
    message = ""
    if reasons:
        llm_spans = len(mapped.raws) + len(mapped.invalid)
        shown = "; ".join(reasons[:_REASONS_SHOWN])
        more = len(reasons) - _REASONS_SHOWN
        message = f"{len(reasons)} of {llm_spans} LLM spans rejected: {shown}" + (
            f"; and {more} more" if more > 0 else ""
        )
    return Response(
        encode_response(media_type, len(reasons), message),
        status_code=200,
        media_type=media_type,
    )
