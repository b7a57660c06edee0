"""``POST /v1/traces`` through the ASGI app, on both backends: OTLP protobuf and JSON, gzip,
hex ids, partial success, and the errors (400, 401, 415)."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import httpx
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import Tenant

PROTOBUF = {"content-type": "application/x-protobuf"}
JSON = {"content-type": "application/json"}
TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
T0 = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z in nanoseconds


def _any(value: Any) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, float):
        return AnyValue(double_value=value)
    if isinstance(value, list):
        out = AnyValue()
        out.array_value.values.extend(_any(v) for v in value)
        return out
    return AnyValue(string_value=str(value))


def span(
    span_id: int,
    attrs: dict[str, Any],
    *,
    parent: int | None = None,
    start_ms: int = 0,
    end_ms: int = 100,
    name: str = "span",
    trace: bytes = TRACE,
    events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
) -> Span:
    s = Span(
        trace_id=trace,
        span_id=span_id.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent else b"",
        name=name,
        start_time_unix_nano=T0 + start_ms * 1_000_000,
        end_time_unix_nano=T0 + end_ms * 1_000_000,
        attributes=[KeyValue(key=k, value=_any(v)) for k, v in attrs.items()],
    )
    for event_name, event_attrs in events:
        s.events.add(
            name=event_name,
            time_unix_nano=s.start_time_unix_nano,
            attributes=[KeyValue(key=k, value=_any(v)) for k, v in event_attrs.items()],
        )
    return s


def export(*spans: Span, service: str = "rag-app") -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name", value=_any(service))
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = "tests"
    scope_spans.spans.extend(spans)
    return request


def otlp_json(request: ExportTraceServiceRequest) -> bytes:
    """OTLP/JSON: the protobuf JSON mapping with trace and span ids in hex, as the spec says."""
    doc = json_format.MessageToDict(request)
    for resource in doc.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for s in scope.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in s:
                        s[key] = base64.b64decode(s[key]).hex()
                s["kind"] = 1  # enums as integers
    return json.dumps(doc).encode()


def sid(n: int) -> str:
    return f"otel-{TRACE.hex()}-{n:016x}"


OPENINFERENCE_LLM = {
    "openinference.span.kind": "LLM",
    "llm.model_name": "gpt-4o-mini",
    "llm.provider": "openai",
    "llm.input_messages.0.message.role": "system",
    "llm.input_messages.0.message.content": "Answer from the context.",
    "llm.input_messages.1.message.role": "user",
    "llm.input_messages.1.message.content": "How do I reset my password?",
    "llm.output_messages.0.message.role": "assistant",
    "llm.output_messages.0.message.content": "Open Settings, then Security.",
    "llm.token_count.prompt": 42,
    "llm.token_count.completion": 7,
    "llm.token_count.total": 49,
    "session.id": "sess-1",
    "user.id": "user-1",
    "metadata": json.dumps({"tenant": "eu"}),
    "tag.tags": ["rag", "support"],
}
RETRIEVER = {
    "openinference.span.kind": "RETRIEVER",
    "input.value": "reset password",
    "retrieval.documents.0.document.id": "kb-12",
    "retrieval.documents.0.document.score": 0.91,
    "retrieval.documents.0.document.content": "Passwords are reset under Settings > Security.",
    "retrieval.documents.0.document.metadata": json.dumps({"source": "kb/security.md"}),
    "retrieval.documents.1.document.id": "kb-7",
    "retrieval.documents.1.document.score": 0.55,
}
TOOL = {
    "openinference.span.kind": "TOOL",
    "tool.name": "lookup_account",
    "input.value": '{"user": "user-1"}',
    "output.value": '{"plan": "pro"}',
}
CHAIN = {"openinference.span.kind": "CHAIN", "input.value": "q", "output.value": "a"}


async def _get(client: httpx.AsyncClient, tenant: Tenant, id: str) -> httpx.Response:
    return await client.get(f"/v1/interactions/{id}", headers=tenant.headers())


async def test_an_openinference_trace_in_protobuf_becomes_one_interaction_with_its_context(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    request = export(
        span(1, CHAIN, name="rag", end_ms=900),
        span(2, RETRIEVER, parent=1, start_ms=10, end_ms=50, name="retrieve"),
        span(3, OPENINFERENCE_LLM, parent=1, start_ms=60, end_ms=310, name="llm"),
        span(4, TOOL, parent=1, start_ms=320, end_ms=330, name="tool"),
    )
    r = await client.post(
        "/v1/traces", content=request.SerializeToString(), headers=tenant.headers() | PROTOBUF
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/x-protobuf"
    answer = ExportTraceServiceResponse.FromString(r.content)
    assert not answer.HasField("partial_success")

    r = await _get(client, tenant, sid(3))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["timestamp"].startswith("2026-01-01T00:00:00.31")
    assert got["input"] == [
        {"role": "system", "content": "Answer from the context."},
        {"role": "user", "content": "How do I reset my password?"},
    ]
    assert got["output"] == "Open Settings, then Security."
    assert got["model"] == {"name": "gpt-4o-mini", "provider": "openai"}
    assert got["tokens"] == {"input": 42, "output": 7, "total": 49}
    assert got["latency_ms"] == 250.0
    assert (got["session_id"], got["user_id"]) == ("sess-1", "user-1")
    assert got["tags"] == ["rag", "support"]
    assert got["retrieved"] == [
        {
            "id": "kb-12",
            "score": 0.91,
            "text": "Passwords are reset under Settings > Security.",
            "source": "kb/security.md",
        },
        {"id": "kb-7", "score": 0.55},
    ]
    assert got["metadata"]["tenant"] == "eu"
    otel = got["metadata"]["otel"]
    assert otel["trace_id"] == TRACE.hex()
    assert (otel["span_id"], otel["parent_span_id"]) == (f"{3:016x}", f"{1:016x}")
    assert otel["service_name"] == "rag-app"
    assert otel["retrieval_span_ids"] == [f"{2:016x}"]
    assert otel["tools"] == [
        {
            "name": "lookup_account",
            "span_id": f"{4:016x}",
            "input": '{"user": "user-1"}',
            "output": '{"plan": "pro"}',
        }
    ]
    # Only the LLM span is an interaction; the chain, retriever and tool spans are not.
    for other in (1, 2, 4):
        assert (await _get(client, tenant, sid(other))).status_code == 404


async def test_a_genai_span_in_gzipped_otlp_json_with_hex_ids_becomes_an_interaction(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    attrs = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
        "gen_ai.response.model": "gpt-4o-2024-08-06",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 5,
        "gen_ai.conversation.id": "conv-9",
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.system_instructions": json.dumps([{"type": "text", "content": "Be brief."}]),
        "gen_ai.input.messages": json.dumps(
            [{"role": "user", "parts": [{"type": "text", "content": "What is two plus two?"}]}]
        ),
        "gen_ai.output.messages": json.dumps(
            [
                {
                    "role": "assistant",
                    "parts": [{"type": "text", "content": "Paris."}],
                    "finish_reason": "stop",
                }
            ]
        ),
    }
    body = gzip.compress(otlp_json(export(span(7, attrs, name="chat gpt-4o", end_ms=80))))
    r = await client.post(
        "/v1/traces",
        content=body,
        headers=tenant.headers() | JSON | {"content-encoding": "gzip"},
    )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {}

    got = (await _get(client, tenant, sid(7))).json()
    assert got["input"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is two plus two?"},
    ]
    assert got["output"] == "Paris."
    assert got["model"] == {"name": "gpt-4o", "version": "gpt-4o-2024-08-06", "provider": "openai"}
    assert got["tokens"] == {"input": 12, "output": 5, "total": 17}
    assert got["session_id"] == "conv-9"
    assert got["latency_ms"] == 80.0
    assert got["metadata"]["otel"]["trace_id"] == TRACE.hex()
    assert got["metadata"]["otel"]["span_id"] == f"{7:016x}"
    assert "parent_span_id" not in got["metadata"]["otel"]
    assert got["metadata"]["otel"]["finish_reasons"] == ["stop"]


async def test_legacy_genai_indexed_attributes_and_events_are_mapped(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    indexed = {
        "gen_ai.system": "anthropic",
        "gen_ai.request.model": "claude-3-5-haiku",
        "gen_ai.prompt.0.role": "user",
        "gen_ai.prompt.0.content": "Hello?",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": "Hi there.",
        "gen_ai.usage.prompt_tokens": 3,
        "gen_ai.usage.completion_tokens": 2,
    }
    by_events = {"gen_ai.system": "openai", "gen_ai.request.model": "gpt-4o"}
    events = [
        ("gen_ai.content.prompt", {"gen_ai.prompt": "Tell a joke"}),
        ("gen_ai.content.completion", {"gen_ai.completion": "No."}),
    ]
    request = export(span(1, indexed), span(2, by_events, events=events))
    r = await client.post(
        "/v1/traces", content=request.SerializeToString(), headers=tenant.headers() | PROTOBUF
    )
    assert r.status_code == 200, r.text
    first = (await _get(client, tenant, sid(1))).json()
    assert first["input"] == [{"role": "user", "content": "Hello?"}]
    assert first["output"] == "Hi there."
    assert first["model"] == {"name": "claude-3-5-haiku", "provider": "anthropic"}
    assert first["tokens"] == {"input": 3, "output": 2, "total": 5}
    second = (await _get(client, tenant, sid(2))).json()
    assert (second["input"], second["output"]) == ("Tell a joke", "No.")


async def test_re_exporting_the_same_spans_is_idempotent(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = export(span(3, OPENINFERENCE_LLM)).SerializeToString()
    for _ in range(2):
        r = await client.post("/v1/traces", content=body, headers=tenant.headers() | PROTOBUF)
        assert r.status_code == 200, r.text
        assert not ExportTraceServiceResponse.FromString(r.content).HasField("partial_success")
    r = await client.get("/v1/interactions", headers=tenant.headers())
    assert [i["id"] for i in r.json()["data"]] == [sid(3)]


async def test_rejected_llm_spans_are_reported_as_partial_success(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    no_input = {"gen_ai.operation.name": "chat", "gen_ai.request.model": "gpt-4o"}
    bad_session = {**OPENINFERENCE_LLM, "session.id": "has spaces"}
    request = export(
        span(1, OPENINFERENCE_LLM), span(2, no_input), span(3, bad_session), span(4, CHAIN)
    )
    for encode, headers in (
        (lambda: request.SerializeToString(), PROTOBUF),
        (lambda: otlp_json(request), JSON),
    ):
        r = await client.post("/v1/traces", content=encode(), headers=tenant.headers() | headers)
        assert r.status_code == 200, r.text
        if headers is PROTOBUF:
            partial = ExportTraceServiceResponse.FromString(r.content).partial_success
            rejected, message = partial.rejected_spans, partial.error_message
        else:
            partial_json = r.json()["partialSuccess"]
            rejected, message = int(partial_json["rejectedSpans"]), partial_json["errorMessage"]
        assert rejected == 2
        assert message.startswith("2 of 3 LLM spans rejected")
        assert f"{sid(2)}: body.input: is required" in message
        assert f"{sid(3)}: body.session_id" in message
    assert (await _get(client, tenant, sid(1))).status_code == 200
    assert (await _get(client, tenant, sid(2))).status_code == 404


async def test_spans_without_an_llm_call_are_accepted_and_not_stored(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    request = export(span(1, CHAIN), span(2, {"http.method": "GET"}), span(3, RETRIEVER))
    r = await client.post("/v1/traces", content=otlp_json(request), headers=tenant.headers() | JSON)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    r = await client.post("/v1/traces", content=b"", headers=tenant.headers() | PROTOBUF)
    assert r.status_code == 200, r.text
    assert r.content == b""  # an empty ExportTraceServiceResponse
    r = await client.get("/v1/interactions", headers=tenant.headers())
    assert r.json()["data"] == []


async def test_undecodable_bodies_are_answered_400(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    base64_ids = json_format.MessageToJson(export(span(1, OPENINFERENCE_LLM))).encode()
    for body, headers in (
        (b"\xff\x00garbage", PROTOBUF),
        (b"{not json", JSON),
        (b"[1, 2]", JSON),
        (b'{"resourceSpans": 5}', JSON),
        (base64_ids, JSON),  # protobuf's JSON mapping, not OTLP/JSON: ids must be hex
        (gzip.compress(b"x")[:-4], PROTOBUF | {"content-encoding": "gzip"}),
    ):
        r = await client.post("/v1/traces", content=body, headers=tenant.headers() | headers)
        assert r.status_code == 400, (body, r.text)
        assert r.headers["content-type"] == "application/problem+json"


async def test_other_content_types_are_answered_415(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    body = export(span(1, OPENINFERENCE_LLM)).SerializeToString()
    for headers in ({"content-type": "text/plain"}, {}, PROTOBUF | {"content-encoding": "br"}):
        r = await client.post("/v1/traces", content=body, headers=tenant.headers() | headers)
        assert r.status_code == 415, r.text


async def test_a_public_key_cannot_send_traces(client: httpx.AsyncClient, tenant: Tenant) -> None:
    body = export(span(1, OPENINFERENCE_LLM)).SerializeToString()
    r = await client.post("/v1/traces", content=body, headers=tenant.headers("public") | PROTOBUF)
    assert r.status_code == 401
    assert "secret key" in r.json()["detail"]
    r = await client.post("/v1/traces", content=body, headers=PROTOBUF)
    assert r.status_code == 401
    assert (await _get(client, tenant, sid(1))).status_code == 404


async def test_an_agent_run_gives_each_llm_call_its_own_tools_and_documents(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    # plan (LLM) -> tool -> retrieve -> answer (LLM): the tool follows the first call, the
    # documents precede the second.
    request = export(
        span(1, CHAIN, name="agent", end_ms=1000),
        span(2, OPENINFERENCE_LLM, parent=1, start_ms=0, end_ms=100),
        span(3, TOOL, parent=1, start_ms=110, end_ms=150),
        span(4, RETRIEVER, parent=1, start_ms=160, end_ms=200),
        span(5, OPENINFERENCE_LLM, parent=1, start_ms=210, end_ms=400),
    )
    r = await client.post("/v1/traces", content=otlp_json(request), headers=tenant.headers() | JSON)
    assert r.status_code == 200, r.text
    plan = (await _get(client, tenant, sid(2))).json()
    answer = (await _get(client, tenant, sid(5))).json()
    assert [t["name"] for t in plan["metadata"]["otel"]["tools"]] == ["lookup_account"]
    assert "retrieved" not in plan or plan["retrieved"] == []
    assert "tools" not in answer["metadata"]["otel"]
    assert [d["id"] for d in answer["retrieved"]] == ["kb-12", "kb-7"]
    assert plan["metadata"]["otel"]["trace_id"] == answer["metadata"]["otel"]["trace_id"]


async def test_an_export_larger_than_one_batch_is_ingested_in_batches(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    llm = {"openinference.span.kind": "LLM", "input.value": "q", "output.value": "a"}
    request = export(*(span(n, llm) for n in range(1, 1_003)))
    r = await client.post(
        "/v1/traces", content=request.SerializeToString(), headers=tenant.headers() | PROTOBUF
    )
    assert r.status_code == 200, r.text
    assert not ExportTraceServiceResponse.FromString(r.content).HasField("partial_success")
    for n in (1, 1_000, 1_001, 1_002):
        assert (await _get(client, tenant, sid(n))).status_code == 200
