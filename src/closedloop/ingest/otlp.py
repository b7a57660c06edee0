"""OTLP traces to interaction events: decode an ``ExportTraceServiceRequest``, map its LLM spans.

Two attribute conventions are understood, side by side:

* the OpenTelemetry GenAI semantic conventions (``gen_ai.provider.name`` / ``gen_ai.system``,
  ``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.*``,
  ``gen_ai.input.messages`` / ``gen_ai.output.messages``, the legacy indexed
  ``gen_ai.prompt.N.role`` / ``gen_ai.completion.N.content`` and the ``gen_ai.*`` span events);
* OpenInference (``openinference.span.kind``, ``llm.model_name``, ``llm.input_messages.N...``,
  ``llm.token_count.*``, ``input.value``, ``session.id``, ``retrieval.documents.N...``,
  ``metadata``, ``tag.tags``).

Each LLM span becomes one ``interaction`` event whose id, ``otel-<trace id>-<span id>``, makes a
re-export idempotent. Retriever spans of the same trace become the retrieved documents of the
LLM span that follows them; tool spans are listed in the metadata of the LLM span that
preceded them. Trace, span and parent span ids are kept under ``metadata.otel``. Other spans
are accepted and not stored.

Examples
--------
>>> body = b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "5b8efff798038103d2'
>>> body += b'69b633813fc60c", "spanId": "eee19b7ec3c1b174", "name": "chat", "startTimeUnixNano'
>>> body += b'": "1767225600000000000", "endTimeUnixNano": "1767225601500000000", "attributes":'
>>> body += b' [{"key": "llm.model_name", "value": {"stringValue": "gpt-4o"}}, {"key": "input.v'
>>> body += b'alue", "value": {"stringValue": "hi"}}, {"key": "output.value", "value": {"string'
>>> body += b'Value": "hello"}}]}]}]}]}'
>>> mapped = map_request(decode_request(body, JSON))
>>> event = json.loads(mapped.raws[0])
>>> event["id"], event["body"]["input"], event["body"]["latency_ms"]
('otel-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174', 'hi', 1500.0)
"""

from __future__ import annotations

import bisect
import datetime as dt
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from closedloop.events import LIMITS
from closedloop.ingest.otlp_wire import JSON, PROTOBUF, decode_request, encode_response

__all__ = [
    "JSON",
    "PROTOBUF",
    "MappedSpans",
    "decode_request",
    "encode_response",
    "event_id",
    "map_request",
]

_TOOLS_KEPT = 16
_TOOL_TEXT = 1_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


# -- spans ---------------------------------------------------------------------------------


@dataclass
class _Span:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    start: int
    end: int
    attrs: dict[str, Any]
    events: list[tuple[str, dict[str, Any]]]
    status: Status
    service: str | None
    scope: str | None
    valid: bool
    kind: str = "other"
    retrieved: list[_Span] = field(default_factory=list)
    tools: list[_Span] = field(default_factory=list)


@dataclass(frozen=True)
class MappedSpans:
    """The interaction events of one export request.

    ``raws`` are the JSON events, one per LLM span; ``invalid`` holds the messages of LLM
    spans that could not become an event at all (bad ids); ``spans`` counts every span.
    """

    raws: list[bytes]
    invalid: list[str]
    spans: int


def event_id(trace_id: str, span_id: str) -> str:
    """The interaction id of a span: stable, so a re-exported span is a duplicate.

    >>> event_id("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")
    'otel-5b8efff798038103d269b633813fc60c-eee19b7ec3c1b174'
    """
    return f"otel-{trace_id}-{span_id}"


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if which == "bytes_value":
        return value.bytes_value.hex()
    return getattr(value, which)


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def _spans(request: ExportTraceServiceRequest) -> Iterator[_Span]:
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        service = resource.get("service.name")
        for scope_spans in resource_spans.scope_spans:
            scope = scope_spans.scope.name or None
            for span in scope_spans.spans:
                yield _span(span, service if isinstance(service, str) else None, scope)


def _span(span: Span, service: str | None, scope: str | None) -> _Span:
    attrs = _attributes(span.attributes)
    out = _Span(
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=span.parent_span_id.hex(),
        name=span.name,
        start=span.start_time_unix_nano,
        end=span.end_time_unix_nano,
        attrs=attrs,
        events=[(e.name, _attributes(e.attributes)) for e in span.events],
        status=span.status,
        service=service,
        scope=scope,
        valid=len(span.trace_id) == 16
        and any(span.trace_id)
        and len(span.span_id) == 8
        and any(span.span_id),
    )
    out.kind = _kind(attrs, out.events)
    return out


_LLM_OPERATIONS = frozenset({"chat", "text_completion", "generate_content", "completion"})
_MODEL_KEYS = ("gen_ai.request.model", "gen_ai.response.model", "llm.model_name")


def _kind(attrs: dict[str, Any], events: list[tuple[str, dict[str, Any]]]) -> str:
    """``llm``, ``retriever``, ``tool`` or ``other``."""
    oi = attrs.get("openinference.span.kind")
    if isinstance(oi, str):
        return {"LLM": "llm", "RETRIEVER": "retriever", "TOOL": "tool"}.get(oi.upper(), "other")
    operation = attrs.get("gen_ai.operation.name") or attrs.get("llm.request.type")
    if operation in _LLM_OPERATIONS:
        return "llm"
    if operation == "execute_tool":
        return "tool"
    if operation in ("retrieval", "retrieve"):
        return "retriever"
    if operation is None and (
        any(k in attrs for k in _MODEL_KEYS)
        or "gen_ai.input.messages" in attrs
        or "gen_ai.prompt.0.content" in attrs
        or any(name.startswith("gen_ai.content.") for name, _ in events)
    ):
        return "llm"
    return "other"


# -- mapping -------------------------------------------------------------------------------


def map_request(request: ExportTraceServiceRequest) -> MappedSpans:
    """The interaction events of every LLM span of ``request``, in span order."""
    spans = list(_spans(request))
    by_trace: dict[str, list[_Span]] = {}
    for span in spans:
        by_trace.setdefault(span.trace_id, []).append(span)
    for trace in by_trace.values():
        _attach(trace)
    raws: list[bytes] = []
    invalid: list[str] = []
    for span in spans:
        if span.kind != "llm":
            continue
        if not span.valid:
            invalid.append(
                # not the span's name: it is free text, and this answer is not redacted
                f"an LLM span (#{len(invalid) + 1} rejected): trace_id must be 16 bytes and "
                "span_id 8 bytes, not all zero"
            )
            continue
        raws.append(json.dumps(_event(span), separators=(",", ":")).encode())
    return MappedSpans(raws=raws, invalid=invalid, spans=len(spans))


def _attach(trace: list[_Span]) -> None:
    """Give retriever spans to the next LLM span and tool spans to the previous one."""
    llms = sorted((s for s in trace if s.kind == "llm"), key=lambda s: (s.start, s.span_id))
    if not llms:
        return
    starts = [s.start for s in llms]
    by_end = sorted(llms, key=lambda s: (s.end, s.span_id))
    ends = [s.end for s in by_end]
    for span in trace:
        if span.kind == "retriever":  # the first LLM call starting after it, else the last
            i = bisect.bisect_left(starts, span.start)
            (llms[i] if i < len(llms) else llms[-1]).retrieved.append(span)
        elif span.kind == "tool":  # the last LLM call ended before it, else started before it
            i = bisect.bisect_right(ends, span.start) - 1
            j = bisect.bisect_right(starts, span.start) - 1
            (by_end[i] if i >= 0 else llms[max(j, 0)]).tools.append(span)


def _event(span: _Span) -> dict[str, Any]:
    a = span.attrs
    details = _merged_events(span, "gen_ai.client.inference.operation.details")
    body: dict[str, Any] = {}
    given = _input(span, details)
    if given is not None:  # else the contract rejects it: ``body.input`` is required
        body["input"] = given
    output = _output(span, details)
    if output is not None:
        body["output"] = output
    session = _first(a, "session.id", "gen_ai.conversation.id")
    if session is not None:
        body["session_id"] = str(session)
    user = _first(a, "user.id", "enduser.id")
    if user is not None:
        body["user_id"] = str(user)
    model = _model(a)
    if model:
        body["model"] = model
    prompt_name = a.get("closedloop.prompt.name")
    if prompt_name is not None:
        body["prompt"] = {"name": str(prompt_name)}
        version = _first(a, "closedloop.prompt.version", "llm.prompt_template.version")
        if version is not None:
            body["prompt"]["version"] = str(version)
    retrieved = _retrieved(span)
    if retrieved:
        body["retrieved"] = retrieved[: LIMITS.retrieved_documents]
    if span.start and span.end >= span.start:
        body["latency_ms"] = (span.end - span.start) / 1e6
    tokens = _tokens(a)
    if tokens:
        body["tokens"] = tokens
    cost = _number(a.get("llm.cost.total"))
    if cost is not None:
        body["cost_usd"] = cost
    body["metadata"] = _metadata(span, len(retrieved))
    tags = a.get("tag.tags")
    if isinstance(tags, list) and tags:
        body["tags"] = list(dict.fromkeys(str(t) for t in tags))
    return {
        "id": event_id(span.trace_id, span.span_id),
        "type": "interaction",
        "timestamp": _iso(span.end or span.start),
        "body": body,
    }


def _first(attrs: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = attrs.get(key)
        if value is not None and value != "":
            return value
    return None


def _model(a: dict[str, Any]) -> dict[str, str]:
    requested = _first(a, "gen_ai.request.model", "llm.model_name")
    responded = a.get("gen_ai.response.model")
    name = requested or responded
    if name is None:
        return {}
    model = {"name": str(name)}
    if responded and responded != name:
        model["version"] = str(responded)
    provider = _first(a, "gen_ai.provider.name", "gen_ai.system", "llm.provider", "llm.system")
    if provider is not None:
        model["provider"] = str(provider)
    return model


def _tokens(a: dict[str, Any]) -> dict[str, int]:
    tokens = {
        "input": _count(
            _first(
                a,
                "gen_ai.usage.input_tokens",
                "gen_ai.usage.prompt_tokens",
                "llm.token_count.prompt",
            )
        ),
        "output": _count(
            _first(
                a,
                "gen_ai.usage.output_tokens",
                "gen_ai.usage.completion_tokens",
                "llm.token_count.completion",
            )
        ),
        "total": _count(_first(a, "llm.token_count.total", "llm.usage.total_tokens")),
    }
    if tokens["total"] is None and tokens["input"] is not None and tokens["output"] is not None:
        tokens["total"] = tokens["input"] + tokens["output"]
    return {k: v for k, v in tokens.items() if v is not None}


def _count(value: Any) -> int | None:
    number = _number(value)
    return int(number) if number is not None else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _iso(nanos: int) -> str:
    try:
        when = _EPOCH + dt.timedelta(microseconds=nanos // 1000)
    except OverflowError:
        return "9999-12-31T23:59:59Z"  # the contract rejects it as a clock error, with a reason
    return when.isoformat().replace("+00:00", "Z")


# -- messages ------------------------------------------------------------------------------


def _text(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def _loads(value: Any) -> Any:
    """A JSON-encoded attribute decoded, or the value itself when it is not JSON."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def _parts_text(parts: Any) -> str | None:
    """The text of GenAI message parts (``[{"type": "text", "content": ...}]``)."""
    if isinstance(parts, str) or parts is None:
        return parts
    if not isinstance(parts, list):
        return _text(parts)
    texts = []
    for part in parts:
        if not isinstance(part, dict):
            texts.append(_text(part) or "")
        elif isinstance(part.get("content"), str):
            texts.append(part["content"])
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part.get("type") == "tool_call_response":
            texts.append(_text(part.get("response") or part.get("result")) or "")
        elif part.get("type") == "tool_call":
            texts.append(
                _text({"tool_call": part.get("name"), "arguments": part.get("arguments")}) or ""
            )
    return "\n".join(texts) if texts else None


def _message(obj: Any, role: str = "user") -> dict[str, Any]:
    if not isinstance(obj, dict):
        return {"role": role, "content": _text(obj)}
    message: dict[str, Any] = {"role": str(obj.get("role") or role)}
    content = _parts_text(obj.get("parts")) if "parts" in obj else _parts_text(obj.get("content"))
    if content is not None:
        message["content"] = content
    if isinstance(obj.get("name"), str):
        message["name"] = obj["name"]
    return message


def _structured(value: Any) -> list[dict[str, Any]] | None:
    value = _loads(value)
    if isinstance(value, list) and value:
        return [_message(m) for m in value]
    return None


_INDEXED = re.compile(r"^(\d+)\.(.+)$")


def _indexed(attrs: dict[str, Any], prefix: str) -> list[dict[str, Any]]:
    """``prefix.N.rest`` attributes grouped by ``N`` in index order: ``[{rest: value}]``."""
    groups: dict[int, dict[str, Any]] = {}
    for key, value in attrs.items():
        if key.startswith(prefix):
            match = _INDEXED.match(key[len(prefix) :])
            if match:
                groups.setdefault(int(match.group(1)), {})[match.group(2)] = value
    return [groups[i] for i in sorted(groups)]


def _indexed_messages(attrs: dict[str, Any], prefix: str, sub: str) -> list[dict[str, Any]]:
    """OpenInference ``llm.input_messages.N.message.*`` or legacy ``gen_ai.prompt.N.*``."""
    out = []
    for fields in _indexed(attrs, prefix):
        content = fields.get(f"{sub}content")
        if content is None:  # OpenInference multi-part contents
            parts = _indexed(fields, f"{sub}contents.")
            texts = [p.get("message_content.text") for p in parts]
            content = "\n".join(t for t in texts if isinstance(t, str)) or None
        if content is None:
            calls = _indexed(fields, f"{sub}tool_calls.")
            content = _text(calls) if calls else None
        message = _message({"role": fields.get(f"{sub}role"), "content": content})
        if isinstance(fields.get(f"{sub}name"), str):
            message["name"] = fields[f"{sub}name"]
        out.append(message)
    return out


def _merged_events(span: _Span, name: str) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for event_name, attrs in span.events:
        if event_name == name:
            merged.update(attrs)
    return merged


_ROLE_EVENTS = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def _event_messages(span: _Span) -> list[dict[str, Any]]:
    out = []
    for name, attrs in span.events:
        role = _ROLE_EVENTS.get(name)
        if role is None:
            continue
        body = _loads(attrs.get("gen_ai.event.content"))
        if isinstance(body, dict):
            out.append(_message(body, role))
        else:
            out.append(
                _message({"role": attrs.get("role") or role, "content": attrs.get("content")})
            )
    return out


def _input(span: _Span, details: dict[str, Any]) -> str | list[dict[str, Any]] | None:
    a = span.attrs
    messages = (
        _structured(a.get("gen_ai.input.messages"))
        or _structured(details.get("gen_ai.input.messages"))
        or _indexed_messages(a, "llm.input_messages.", "message.")
        or _indexed_messages(a, "gen_ai.prompt.", "")
        or _event_messages(span)
    )
    if not messages:
        prompt = _merged_events(span, "gen_ai.content.prompt").get("gen_ai.prompt")
        prompt = prompt if prompt is not None else a.get("gen_ai.prompt")
        messages = _structured(prompt) or []
        if not messages:
            text = _first({"p": prompt, "i": a.get("input.value")}, "p", "i")
            return _text(text)
    system = _parts_text(
        _loads(a.get("gen_ai.system_instructions") or details.get("gen_ai.system_instructions"))
    )
    if system and messages[0].get("role") != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _output(span: _Span, details: dict[str, Any]) -> str | None:
    a = span.attrs
    for messages in (
        _structured(a.get("gen_ai.output.messages")),
        _structured(details.get("gen_ai.output.messages")),
        _indexed_messages(a, "llm.output_messages.", "message."),
        _indexed_messages(a, "gen_ai.completion.", ""),
    ):
        if messages:
            return _text(messages[0].get("content"))
    for name, attrs in span.events:
        if name == "gen_ai.choice":
            message = _loads(attrs.get("message"))
            if isinstance(message, dict):
                return _message(message, "assistant").get("content")
            return _text(attrs.get("content"))
    completion = _merged_events(span, "gen_ai.content.completion").get("gen_ai.completion")
    completion = completion if completion is not None else a.get("gen_ai.completion")
    structured = _structured(completion)
    if structured:
        return _text(structured[0].get("content"))
    return _text(_first({"c": completion, "o": a.get("output.value")}, "c", "o"))


# -- context: documents, tools, metadata ---------------------------------------------------


def _documents(span: _Span) -> list[dict[str, Any]]:
    out = []
    for i, fields in enumerate(_indexed(span.attrs, "retrieval.documents.")):
        doc_id = fields.get("document.id")
        doc: dict[str, Any] = {
            "id": str(doc_id) if doc_id not in (None, "") else f"{span.span_id}.{i}"
        }
        score = _number(fields.get("document.score"))
        if score is not None:
            doc["score"] = score
        text = fields.get("document.content")
        if text is not None:
            doc["text"] = _text(text)
        meta = _loads(fields.get("document.metadata"))
        source = _first(meta, "source", "url", "uri") if isinstance(meta, dict) else None
        if isinstance(source, str) and len(source) <= LIMITS.name_length:
            doc["source"] = source
        out.append(doc)
    return out


def _retrieved(span: _Span) -> list[dict[str, Any]]:
    docs = _documents(span)
    for retriever in span.retrieved:
        docs.extend(_documents(retriever))
    return docs


def _clip(value: Any) -> str | None:
    text = _text(value)
    return text if text is None or len(text) <= _TOOL_TEXT else text[:_TOOL_TEXT] + "…"


def _tool(span: _Span) -> dict[str, Any]:
    a = span.attrs
    tool: dict[str, Any] = {
        "name": str(_first(a, "tool.name", "gen_ai.tool.name") or span.name),
        "span_id": span.span_id,
    }
    arguments = _first(a, "input.value", "gen_ai.tool.call.arguments", "tool.parameters")
    result = _first(a, "output.value", "gen_ai.tool.call.result")
    for key, value in (("input", arguments), ("output", result)):
        if value is not None:
            tool[key] = _clip(value)
    if span.status.code == Status.STATUS_CODE_ERROR:
        tool["error"] = _clip(span.status.message) or "error"
    return tool


def _metadata(span: _Span, documents: int) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    given = _loads(span.attrs.get("metadata"))
    if isinstance(given, dict):
        meta.update(given)
    otel: dict[str, Any] = {"trace_id": span.trace_id, "span_id": span.span_id}
    if span.parent_span_id:
        otel["parent_span_id"] = span.parent_span_id
    otel["span_name"] = span.name
    if span.service:
        otel["service_name"] = span.service
    if span.scope:
        otel["scope"] = span.scope
    if span.status.code == Status.STATUS_CODE_ERROR:
        otel["error"] = _clip(span.status.message) or "error"
    reasons = span.attrs.get("gen_ai.response.finish_reasons")
    if reasons:
        otel["finish_reasons"] = reasons
    if span.retrieved:
        otel["retrieval_span_ids"] = [s.span_id for s in span.retrieved]
    if documents > LIMITS.retrieved_documents:
        otel["retrieved_documents_dropped"] = documents - LIMITS.retrieved_documents
    if span.tools:
        otel["tools"] = [_tool(s) for s in span.tools[:_TOOLS_KEPT]]
        if len(span.tools) > _TOOLS_KEPT:
            otel["tools_dropped"] = len(span.tools) - _TOOLS_KEPT
    meta["otel"] = otel
    return meta
