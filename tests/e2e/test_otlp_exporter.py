"""The real OpenTelemetry SDK and OTLP/HTTP exporter against a real ``closedloop serve``, on
SQLite and PostgreSQL: GenAI-convention and OpenInference spans become interactions."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator, Sequence

import httpx
import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.conftest import BACKENDS
from tests.e2e.server import LiveServer, ProjectKeys, backend_server


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, ProjectKeys]]:
    """One server per backend for the whole module."""
    with backend_server(request, tmp_path_factory, "otlp") as (server, keys):
        yield server, keys


def _record(build: object) -> list[ReadableSpan]:
    """Spans made by ``build(tracer)`` with the real SDK, finished and collected."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support-bot"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    build(provider.get_tracer("closedloop.tests"))  # type: ignore[operator]
    provider.shutdown()
    return list(memory.get_finished_spans())


def _export(server: LiveServer, keys: ProjectKeys, spans: Sequence[ReadableSpan]) -> bool:
    exporter = OTLPSpanExporter(
        endpoint=f"{server.url}/v1/traces",
        headers=keys.headers(),
        compression=Compression.Gzip,
        timeout=10,
    )
    try:
        return exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()


def _interaction_id(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"otel-{span.context.trace_id:032x}-{span.context.span_id:016x}"


def _get(server: LiveServer, keys: ProjectKeys, id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/v1/interactions/{id}", headers=keys.headers(), timeout=10)


def _genai(tracer: object) -> None:
    with tracer.start_as_current_span("chat gpt-4o") as span:  # type: ignore[attr-defined]
        span.set_attributes(
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.provider.name": "openai",
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.response.model": "gpt-4o-2024-08-06",
                "gen_ai.usage.input_tokens": 21,
                "gen_ai.usage.output_tokens": 4,
                "gen_ai.conversation.id": "conv-1",
                "user.id": "u-42",
                "gen_ai.input.messages": json.dumps(
                    [{"role": "user", "parts": [{"type": "text", "content": "2+2?"}]}]
                ),
                "gen_ai.output.messages": json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": "4"}]}]
                ),
            }
        )


def _openinference(tracer: object) -> None:
    with tracer.start_as_current_span("rag") as chain:  # type: ignore[attr-defined]
        chain.set_attributes({"openinference.span.kind": "CHAIN", "input.value": "refund?"})
        with tracer.start_as_current_span("retrieve") as retriever:  # type: ignore[attr-defined]
            retriever.set_attributes(
                {
                    "openinference.span.kind": "RETRIEVER",
                    "retrieval.documents.0.document.id": "policy-3",
                    "retrieval.documents.0.document.score": 0.8,
                    "retrieval.documents.0.document.content": "Refunds within 30 days.",
                }
            )
        with tracer.start_as_current_span("llm") as llm:  # type: ignore[attr-defined]
            llm.set_attributes(
                {
                    "openinference.span.kind": "LLM",
                    "llm.model_name": "claude-3-5-sonnet",
                    "llm.provider": "anthropic",
                    "llm.input_messages.0.message.role": "user",
                    "llm.input_messages.0.message.content": "Can I get a refund?",
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.content": "Yes, within 30 days.",
                    "llm.token_count.prompt": 30,
                    "llm.token_count.completion": 6,
                    "llm.token_count.total": 36,
                    "session.id": "s-7",
                    "metadata": json.dumps({"channel": "web"}),
                    "tag.tags": ["refunds"],
                }
            )
        with tracer.start_as_current_span("send_email") as tool:  # type: ignore[attr-defined]
            tool.set_attributes({"openinference.span.kind": "TOOL", "tool.name": "send_email"})


def test_genai_spans_exported_by_the_sdk_are_stored_as_interactions(
    shared: tuple[LiveServer, ProjectKeys],
) -> None:
    server, keys = shared
    (span,) = _record(_genai)
    assert _export(server, keys, [span])
    r = _get(server, keys, _interaction_id(span))
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["input"] == [{"role": "user", "content": "2+2?"}]
    assert got["output"] == "4"
    assert got["model"] == {"name": "gpt-4o", "version": "gpt-4o-2024-08-06", "provider": "openai"}
    assert got["tokens"] == {"input": 21, "output": 4, "total": 25}
    assert (got["session_id"], got["user_id"]) == ("conv-1", "u-42")
    assert got["latency_ms"] >= 0
    assert got["metadata"]["otel"]["service_name"] == "support-bot"
    # Exporting the same spans again (an exporter retry) stores nothing twice.
    assert _export(server, keys, [span])


def test_an_openinference_rag_trace_exported_by_the_sdk_keeps_its_documents_and_tools(
    shared: tuple[LiveServer, ProjectKeys],
) -> None:
    server, keys = shared
    spans = _record(_openinference)
    assert _export(server, keys, spans)
    by_name = {s.name: s for s in spans}
    llm, chain = by_name["llm"], by_name["rag"]
    got = _get(server, keys, _interaction_id(llm)).json()
    assert got["input"] == [{"role": "user", "content": "Can I get a refund?"}]
    assert got["output"] == "Yes, within 30 days."
    assert got["model"] == {"name": "claude-3-5-sonnet", "provider": "anthropic"}
    assert got["tokens"] == {"input": 30, "output": 6, "total": 36}
    assert got["session_id"] == "s-7"
    assert got["tags"] == ["refunds"]
    assert got["retrieved"] == [{"id": "policy-3", "score": 0.8, "text": "Refunds within 30 days."}]
    assert got["metadata"]["channel"] == "web"
    otel = got["metadata"]["otel"]
    assert chain.context is not None
    assert otel["trace_id"] == f"{chain.context.trace_id:032x}"
    assert otel["parent_span_id"] == f"{chain.context.span_id:016x}"
    assert [t["name"] for t in otel["tools"]] == ["send_email"]
    for other in ("rag", "retrieve", "send_email"):
        assert _get(server, keys, _interaction_id(by_name[other])).status_code == 404


def test_otlp_json_of_sdk_spans_is_stored_and_a_public_key_is_refused(
    shared: tuple[LiveServer, ProjectKeys],
) -> None:
    # The exporter sends only protobuf; OTLP/JSON is the same message with hex ids.
    server, keys = shared
    (span,) = _record(_genai)
    doc = json_format.MessageToDict(encode_spans([span]))
    for resource in doc["resourceSpans"]:
        for scope in resource["scopeSpans"]:
            for s in scope["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in s:
                        s[key] = base64.b64decode(s[key]).hex()
    r = httpx.post(f"{server.url}/v1/traces", json=doc, headers=keys.headers(), timeout=10)
    assert r.status_code == 200, r.text
    assert r.json() == {}
    assert _get(server, keys, _interaction_id(span)).json()["output"] == "4"

    (other,) = _record(_genai)
    assert not _export(server, ProjectKeys(keys.project, keys.public_key, keys.public_key), [other])
    assert _get(server, keys, _interaction_id(other)).status_code == 404
