"""OTLP/HTTP on the wire: decode an ``ExportTraceServiceRequest`` (protobuf or JSON) and encode
the ``ExportTraceServiceResponse``.

OTLP/JSON writes trace and span ids as hex where protobuf's JSON mapping expects base64: they
are converted before parsing, as the OTLP specification says. Decoding uses the
``opentelemetry-proto`` package; nothing here parses protobuf by hand.
"""

from __future__ import annotations

import base64
import importlib
import json
from collections.abc import Iterator
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from closedloop.errors import ContractError

__all__ = ["JSON", "PROTOBUF", "decode_request", "encode_response"]

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

# Imported by name: google.protobuf ships no type stubs (``types-protobuf`` is separate).
json_format: Any = importlib.import_module("google.protobuf.json_format")


# -- decoding ------------------------------------------------------------------------------


def decode_request(body: bytes, media_type: str) -> ExportTraceServiceRequest:
    """Decode an OTLP/HTTP body (``application/x-protobuf`` or ``application/json``).

    OTLP/JSON differs from the protobuf JSON mapping: trace and span ids are hex, not base64.
    They are converted before parsing; enums as integers and 64-bit integers as strings or
    numbers are both accepted, and unknown fields are ignored, as the OTLP spec asks.

    Raises
    ------
    ContractError
        when the body cannot be decoded (the route answers 400).
    """
    request = ExportTraceServiceRequest()
    if media_type == PROTOBUF:
        try:
            request.ParseFromString(body)
        except Exception as exc:  # DecodeError, and RecursionError on hostile nesting
            raise ContractError(
                "body", f"is not an OTLP protobuf ExportTraceServiceRequest: {exc}"
            ) from exc
        return request
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ContractError("body", f"is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ContractError("body", "must be a JSON object (an OTLP ExportTraceServiceRequest)")
    _hex_ids_to_base64(doc)
    try:
        json_format.ParseDict(doc, request, ignore_unknown_fields=True)
    except Exception as exc:  # ParseError, and TypeError/ValueError on odd shapes
        raise ContractError(
            "body", f"is not an OTLP/JSON ExportTraceServiceRequest: {exc}"
        ) from exc
    return request


_ID_KEYS = ("traceId", "trace_id", "spanId", "span_id", "parentSpanId", "parent_span_id")


def _hex_ids_to_base64(doc: dict[str, Any]) -> None:
    """Rewrite the hex ids of spans and links in place as the base64 protobuf JSON expects."""
    for i, resource in enumerate(_items(doc, "resourceSpans", "resource_spans")):
        for j, scope in enumerate(_items(resource, "scopeSpans", "scope_spans")):
            for k, span in enumerate(_items(scope, "spans")):
                where = f"resourceSpans.{i}.scopeSpans.{j}.spans.{k}"
                _convert_ids(span, where)
                for n, link in enumerate(_items(span, "links")):
                    _convert_ids(link, f"{where}.links.{n}")


def _items(obj: Any, *names: str) -> Iterator[Any]:
    if not isinstance(obj, dict):
        return
    for name in names:
        value = obj.get(name)
        if isinstance(value, list):
            yield from (v for v in value if isinstance(v, dict))


def _convert_ids(obj: dict[str, Any], where: str) -> None:
    for key in _ID_KEYS:
        value = obj.get(key)
        if not isinstance(value, str):
            continue
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise ContractError(
                f"{where}.{key}", "must be hex-encoded (OTLP/JSON), not base64"
            ) from None
        obj[key] = base64.b64encode(raw).decode("ascii")


def encode_response(media_type: str, rejected: int = 0, message: str = "") -> bytes:
    """An ``ExportTraceServiceResponse`` in the request's encoding; ``partial_success`` is
    set only when spans were rejected."""
    response = ExportTraceServiceResponse()
    if rejected or message:
        response.partial_success.rejected_spans = rejected
        response.partial_success.error_message = message
    if media_type == PROTOBUF:
        return bytes(response.SerializeToString())
    return json.dumps(json_format.MessageToDict(response), separators=(",", ":")).encode()
