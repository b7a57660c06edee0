"""The wire contract: event envelopes ``{id, type, timestamp, body}``.

Three event types travel from apps to closedloop:

* ``interaction`` - one AI response, with its session, user, model, prompt, input, output,
  retrieved documents, latency, tokens, cost, metadata and tags;
* ``feedback`` - explicit feedback on an interaction: thumbs, rating (with its scale), label,
  correction, comment, and who gave it;
* ``signal`` - implicit feedback: edit, copy, regenerate, accept, click, dwell, abandon,
  escalate, rephrase.

Decoding uses msgspec (about 3x faster than pydantic on this path). Every field is bounded; the
limits are the constants below and are published with the JSON Schema (``GET /v1/schema``).

This module needs only msgspec, so the light SDK can use it.

Examples
--------
>>> raw = b'{"id": "evt-1", "type": "feedback", "timestamp": "2026-01-01T00:00:00Z",'
>>> raw += b' "body": {"interaction_id": "int-1", "thumbs": -1}}'
>>> event = decode_event(raw)
>>> event.type, event.body.thumbs, event.body.source
('feedback', -1, 'user')
>>> decode_event(b'{"id": "e", "type": "feedback", "timestamp": "2026-01-01T00:00:00Z",'
...              b' "body": {"interaction_id": "i", "thumbs": 3}}')
Traceback (most recent call last):
  ...
closedloop.errors.ContractError: body.thumbs: must be -1 or 1
"""

from __future__ import annotations

import datetime as dt
import inspect
import re
from typing import Annotated, Any, ClassVar, Literal

import msgspec

from closedloop.errors import ContractError

__all__ = [
    "FEEDBACK_KINDS",
    "LIMITS",
    "SIGNAL_KINDS",
    "Event",
    "Feedback",
    "FeedbackEvent",
    "Interaction",
    "InteractionEvent",
    "Limits",
    "Message",
    "Model",
    "Prompt",
    "RetrievedDocument",
    "Signal",
    "SignalEvent",
    "SignalKind",
    "Tokens",
    "decode_event",
    "encode",
    "event_json_schema",
    "find_nul",
]


class Limits(msgspec.Struct, frozen=True):
    """Bounds on every field of the contract (documented in docs/contract.md)."""

    id_length: int = 128
    name_length: int = 256
    text_length: int = 100_000
    messages: int = 256
    retrieved_documents: int = 100
    tags: int = 32
    tag_length: int = 64
    metadata_bytes: int = 16_384
    metadata_depth: int = 5
    metadata_keys: int = 256
    batch_events: int = 1_000
    future_skew_seconds: int = 86_400


LIMITS = Limits()
EARLIEST = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
"""Events older than this are refused: a clock or unit error, not history."""

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$"
EventId = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=LIMITS.id_length,
        pattern=ID_PATTERN,
        description="Client-generated id (UUIDv7 recommended): letters, digits, . _ : -",
    ),
]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=LIMITS.name_length)]
Text = Annotated[str, msgspec.Meta(max_length=LIMITS.text_length)]
Tag = Annotated[str, msgspec.Meta(min_length=1, max_length=LIMITS.tag_length)]
NonNegative = Annotated[float, msgspec.Meta(ge=0, le=1e12)]
Finite = Annotated[float, msgspec.Meta(ge=-1e12, le=1e12)]
Count = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]
Timestamp = Annotated[
    dt.datetime, msgspec.Meta(tz=True, description="RFC 3339 timestamp with a UTC offset.")
]
Metadata = Annotated[
    dict[str, Any],
    msgspec.Meta(
        description=(
            f"Free JSON object: at most {LIMITS.metadata_keys} keys in all, nesting depth "
            f"{LIMITS.metadata_depth}, {LIMITS.metadata_bytes} bytes encoded."
        )
    ),
]
Tags = Annotated[list[Tag], msgspec.Meta(max_length=LIMITS.tags)]

FEEDBACK_KINDS = ("thumbs", "rating", "label", "correction", "comment")
SIGNAL_KINDS = (
    "edit",
    "copy",
    "regenerate",
    "accept",
    "click",
    "dwell",
    "abandon",
    "escalate",
    "rephrase",
)
SignalKind = Literal[
    "edit", "copy", "regenerate", "accept", "click", "dwell", "abandon", "escalate", "rephrase"
]


class Model(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The model that produced the output."""

    name: Name
    version: Name | None = None
    provider: Name | None = None


class Prompt(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """The prompt template, by name and version."""

    name: Name
    version: Name | None = None


class Message(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """One chat message of the input."""

    role: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    content: Text | None = None
    name: Name | None = None


class RetrievedDocument(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """A document the answer was grounded on (RAG)."""

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=LIMITS.name_length)]
    score: Finite | None = None
    text: Text | None = None
    source: Name | None = None


class Tokens(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Token counts of the call."""

    input: Count | None = None
    output: Count | None = None
    total: Count | None = None


class Interaction(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Body of an ``interaction`` event: one AI response."""

    input: Text | Annotated[list[Message], msgspec.Meta(max_length=LIMITS.messages)]
    output: Text | None = None
    session_id: EventId | None = None
    user_id: EventId | None = None
    model: Model | None = None
    prompt: Prompt | None = None
    retrieved: Annotated[
        list[RetrievedDocument], msgspec.Meta(max_length=LIMITS.retrieved_documents)
    ] = []
    latency_ms: NonNegative | None = None
    tokens: Tokens | None = None
    cost_usd: NonNegative | None = None
    metadata: Metadata = {}
    tags: Tags = []

    def __post_init__(self) -> None:
        _check_metadata(self.metadata)


class Feedback(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Body of a ``feedback`` event: explicit feedback on one interaction.

    At least one of ``thumbs``, ``rating``, ``label``, ``correction`` or ``comment`` is set.
    ``rating`` lies within ``[rating_min, rating_max]`` (default 1 to 5).
    """

    interaction_id: EventId
    thumbs: int | None = None
    rating: Finite | None = None
    rating_min: Finite = 1.0
    rating_max: Finite = 5.0
    label: Name | None = None
    correction: Text | None = None
    comment: Text | None = None
    source: Literal["user", "reviewer", "evaluator"] = "user"
    given_by: EventId | None = None
    session_id: EventId | None = None
    user_id: EventId | None = None
    metadata: Metadata = {}
    tags: Tags = []

    def __post_init__(self) -> None:
        if self.thumbs is not None and self.thumbs not in (-1, 1):
            raise ContractError("body.thumbs", "must be -1 or 1")
        if self.rating_min >= self.rating_max:
            raise ContractError("body.rating_min", "must be less than rating_max")
        if self.rating is not None and not self.rating_min <= self.rating <= self.rating_max:
            raise ContractError(
                "body.rating",
                f"must lie within the scale [{self.rating_min:g}, {self.rating_max:g}]; "
                "send rating_min and rating_max for another scale",
            )
        if all(getattr(self, kind) is None for kind in FEEDBACK_KINDS):
            raise ContractError(
                "body", "set at least one of thumbs, rating, label, correction or comment"
            )
        _check_metadata(self.metadata)


class Signal(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Body of a ``signal`` event: implicit feedback on one interaction.

    ``edit`` needs ``text`` (what the user kept); ``dwell`` needs ``duration_ms``; ``click``
    may carry ``target`` and ``rank``; ``rephrase`` may carry the new input as ``text``.
    """

    interaction_id: EventId
    kind: SignalKind
    text: Text | None = None
    target: Annotated[str, msgspec.Meta(max_length=2048)] | None = None
    rank: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] | None = None
    duration_ms: NonNegative | None = None
    session_id: EventId | None = None
    user_id: EventId | None = None
    metadata: Metadata = {}

    def __post_init__(self) -> None:
        if self.kind == "edit" and self.text is None:
            raise ContractError("body.text", "an edit signal needs the text the user kept")
        if self.kind == "dwell" and self.duration_ms is None:
            raise ContractError("body.duration_ms", "a dwell signal needs duration_ms")
        _check_metadata(self.metadata)


class _Envelope(msgspec.Struct, forbid_unknown_fields=True, tag_field="type"):
    id: EventId
    timestamp: Timestamp


class InteractionEvent(_Envelope, tag="interaction"):
    """An ``interaction`` envelope."""

    type: ClassVar[str] = "interaction"
    body: Interaction


class FeedbackEvent(_Envelope, tag="feedback"):
    """A ``feedback`` envelope."""

    type: ClassVar[str] = "feedback"
    body: Feedback


class SignalEvent(_Envelope, tag="signal"):
    """A ``signal`` envelope."""

    type: ClassVar[str] = "signal"
    body: Signal


Event = InteractionEvent | FeedbackEvent | SignalEvent

_decoder = msgspec.json.Decoder(Event)
_encoder = msgspec.json.Encoder()
_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_INDEX = re.compile(r"\[(\d+)\]")


def encode(obj: Any) -> bytes:
    """Encode ``obj`` (an event, a body or plain data) as compact JSON."""
    return _encoder.encode(obj)


def decode_event(raw: bytes | str) -> Event:
    """Decode and validate one event envelope.

    Raises
    ------
    ContractError
        with ``field`` set to the dotted path of the first offending field.
    """
    try:
        event: Event = _decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise _contract_error(exc) from exc
    except msgspec.DecodeError as exc:
        raise ContractError("", f"not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ContractError("", f"not valid UTF-8 at byte {exc.start}") from exc
    now = dt.datetime.now(dt.UTC)
    if (event.timestamp - now).total_seconds() > LIMITS.future_skew_seconds:
        raise ContractError(
            "timestamp", "lies more than a day in the future; check the client's clock and zone"
        )
    if event.timestamp < EARLIEST:
        raise ContractError(
            "timestamp", "lies before 2000-01-01; check the client's clock and the unit sent"
        )
    return event


_ALLOWED = {
    "type": "interaction, feedback, signal",
    "kind": ", ".join(SIGNAL_KINDS),
    "source": "user, reviewer, evaluator",
}


def _contract_error(exc: msgspec.ValidationError) -> ContractError:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ContractError):
        return cause
    text = str(exc)
    match = _PATH.search(text)
    field = ""
    if match:
        text = text[: match.start()]
        # msgspec writes a value inside a free-form mapping as `[...]` (the key is unknown):
        # name the mapping itself, so ``field`` stays a dotted path.
        path = match.group("path").split("[...]")[0]
        field = _INDEX.sub(r".\1", path).lstrip(".")
    if text.startswith("Object contains unknown field"):
        name = text.split("`")[1]
        field = f"{field}.{name}" if field else name
        text = "is not a field of the contract; remove it or move it into metadata"
    elif text.startswith("Object missing required field"):
        name = text.split("`")[1]
        field = f"{field}.{name}" if field else name
        text = "is required"
    elif text.startswith(("Invalid value", "Invalid enum value")):
        # msgspec quotes the value it refused; the answer (and every log that repeats it)
        # must not carry what could be personal data: name the allowed values instead.
        allowed = _ALLOWED.get(field.rsplit(".", 1)[-1])
        text = "is not an allowed value" + (f"; use one of {allowed}" if allowed else "")
    return ContractError(field, text[:1].lower() + text[1:] if text else text)


def _check_metadata(metadata: dict[str, Any]) -> None:
    if not metadata:
        return
    keys = 0

    def walk(value: Any, depth: int) -> None:
        nonlocal keys
        if depth > LIMITS.metadata_depth:
            raise ContractError(
                "body.metadata",
                f"nests deeper than {LIMITS.metadata_depth} levels; flatten it",
            )
        if isinstance(value, dict):
            keys += len(value)
            for item in value.values():
                walk(item, depth + 1)
        elif isinstance(value, list):
            for item in value:
                walk(item, depth + 1)

    walk(metadata, 1)
    if keys > LIMITS.metadata_keys:
        raise ContractError(
            "body.metadata", f"has {keys} keys; the limit is {LIMITS.metadata_keys}"
        )
    size = len(_encoder.encode(metadata))
    if size > LIMITS.metadata_bytes:
        raise ContractError(
            "body.metadata",
            f"is {size} bytes encoded; the limit is {LIMITS.metadata_bytes}: store large "
            "values elsewhere and keep a reference",
        )


def find_nul(obj: Any, path: str = "") -> str | None:
    """Return the dotted path of the first string holding a NUL (U+0000), or ``None``.

    PostgreSQL's text type cannot store NUL, so closedloop rejects such events on every
    database alike instead of altering the text.

    >>> find_nul({"body": {"output": "a\\x00b"}})
    'body.output'
    >>> find_nul({"body": {"tags": ["ok"]}}) is None
    True
    """
    if isinstance(obj, str):
        return path if "\x00" in obj else None
    if isinstance(obj, dict):
        for key, value in obj.items():
            shown = str(key).replace("\x00", "\\u0000")  # never echo a raw NUL
            key_path = f"{path}.{shown}" if path else shown
            if "\x00" in str(key):
                return key_path
            found = find_nul(value, key_path)
            if found is not None:
                return found
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            found = find_nul(value, f"{path}.{i}" if path else str(i))
            if found is not None:
                return found
    elif isinstance(obj, msgspec.Struct):
        return find_nul(msgspec.to_builtins(obj), path)
    return None


def event_json_schema() -> dict[str, Any]:
    """The JSON Schema of one event envelope (a tagged union on ``type``)."""
    schema: dict[str, Any] = _clean_descriptions(msgspec.json.schema(Event))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "closedloop event"
    schema["x-limits"] = msgspec.to_builtins(LIMITS)
    return schema


def _clean_descriptions(node: Any) -> Any:
    """Descriptions dedented (msgspec releases differ in whether they dedent docstrings)."""
    if isinstance(node, dict):
        return {
            k: inspect.cleandoc(v)
            if k == "description" and isinstance(v, str)
            else _clean_descriptions(v)
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_clean_descriptions(v) for v in node]
    return node
