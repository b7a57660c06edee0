"""The one ingest path: decode -> validate -> redact -> group commit -> per-event results.

Every way in (HTTP batch, OTLP, browser beacons, ``closedloop import``, the SDK's embedded
mode) calls :meth:`Ingestor.ingest` (or its async twin). Everything slower than this runs in
workers after the commit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import msgspec

from closedloop.errors import ContractError, PayloadTooLarge
from closedloop.events import (
    LIMITS,
    Event,
    Feedback,
    FeedbackEvent,
    Interaction,
    InteractionEvent,
    SignalEvent,
    decode_event,
    encode,
    find_nul,
)
from closedloop.ingest.committer import GroupCommitter
from closedloop.ingest.metrics import IngestMetrics
from closedloop.store.erased import ErasedCheck, ErasedUsers
from closedloop.types import BatchResult, EventResult, PreparedEvent, ProjectKey, RedactorLookup

__all__ = ["Ingestor", "Pending", "decode_batch"]


class _Batch(msgspec.Struct):
    events: list[msgspec.Raw]


class _IdOnly(msgspec.Struct):
    id: Any = None


_batch_decoder = msgspec.json.Decoder(_Batch)
_id_decoder = msgspec.json.Decoder(_IdOnly)


def decode_batch(body: bytes, *, max_events: int = LIMITS.batch_events) -> list[msgspec.Raw]:
    """Split a request body ``{"events": [...]}`` into raw events, without decoding them.

    Raises
    ------
    ContractError
        when the body is not UTF-8 JSON of that shape (``field`` names where).
    PayloadTooLarge
        when it holds more than ``max_events`` events.
    """
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ContractError("body", f"is not valid UTF-8 at byte {exc.start}") from exc
    try:
        batch = _batch_decoder.decode(body)
    except msgspec.ValidationError as exc:
        message = str(exc)
        if "missing required field" in message:
            raise ContractError("events", 'is required: send {"events": [event, ...]}') from exc
        raise ContractError("events", f'{message}; send {{"events": [event, ...]}}') from exc
    except msgspec.DecodeError as exc:
        lone = _lone_surrogate(body)
        if lone is not None:  # msgspec reports these as "truncated", which misleads
            raise ContractError(
                "body",
                f"holds an unpaired UTF-16 surrogate escape at byte {lone}; send valid Unicode",
            ) from exc
        raise ContractError("body", f"is not valid JSON: {exc}") from exc
    if len(batch.events) > max_events:
        raise PayloadTooLarge(
            f"the batch holds {len(batch.events)} events; the limit is {max_events}: "
            "split it into smaller batches",
            field="events",
        )
    return batch.events


_SURROGATE = re.compile(rb"\\u[dD]([89abAB]|[c-fC-F])[0-9a-fA-F]{2}")


def _lone_surrogate(body: bytes) -> int | None:
    r"""Byte offset of the first unpaired surrogate escape (``\ud800``), if any.

    >>> _lone_surrogate(rb'"\ud83d\ude00 ok"') is None, _lone_surrogate(rb'"x\ud800"')
    (True, 2)
    """
    pending: int | None = None
    end = -1
    for match in _SURROGATE.finditer(body):
        high = match.group(1) in b"89abAB"
        if pending is not None and not high and match.start() == end:
            pending = None  # the low half of a pair
        elif pending is not None:
            return pending
        elif high:
            pending = match.start()
        else:
            return match.start()
        end = match.end()
    return pending


def _ts(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC)


def _interaction_row(project_id: int, event: InteractionEvent) -> dict[str, Any]:
    body: Interaction = event.body
    model, prompt, tokens = body.model, body.prompt, body.tokens
    return {
        "project_id": project_id,
        "id": event.id,
        "ts": _ts(event.timestamp),
        "session_id": body.session_id,
        "user_id": body.user_id,
        "model_name": model.name if model else None,
        "model_version": model.version if model else None,
        "model_provider": model.provider if model else None,
        "prompt_name": prompt.name if prompt else None,
        "prompt_version": prompt.version if prompt else None,
        "latency_ms": body.latency_ms,
        "tokens_input": tokens.input if tokens else None,
        "tokens_output": tokens.output if tokens else None,
        "cost_usd": body.cost_usd,
        "body": encode(body).decode(),
    }


def _feedback_row(project_id: int, event: FeedbackEvent) -> dict[str, Any]:
    body: Feedback = event.body
    return {
        "project_id": project_id,
        "id": event.id,
        "ts": _ts(event.timestamp),
        "interaction_id": body.interaction_id,
        "thumbs": body.thumbs,
        "rating": body.rating,
        "rating_min": body.rating_min if body.rating is not None else None,
        "rating_max": body.rating_max if body.rating is not None else None,
        "label": body.label,
        "correction": body.correction,
        "comment": body.comment,
        "source": body.source,
        "given_by": body.given_by,
        "session_id": body.session_id,
        "user_id": body.user_id,
        "body": encode(body).decode(),
    }


def _signal_row(project_id: int, event: SignalEvent) -> dict[str, Any]:
    body = event.body
    return {
        "project_id": project_id,
        "id": event.id,
        "ts": _ts(event.timestamp),
        "interaction_id": body.interaction_id,
        "kind": body.kind,
        "session_id": body.session_id,
        "user_id": body.user_id,
        "body": encode(body).decode(),
    }


def _row(project_id: int, event: Event) -> dict[str, Any]:
    if isinstance(event, InteractionEvent):
        return _interaction_row(project_id, event)
    if isinstance(event, FeedbackEvent):
        return _feedback_row(project_id, event)
    return _signal_row(project_id, event)


def _names_erased(event: Event, erased: ErasedCheck) -> bool:
    """Whether ``event`` is an erased user's, or feedback or a signal on one of their
    interactions."""
    body: Any = event.body
    for name in ("user_id", "given_by"):
        value = getattr(body, name, None)
        if value is not None and erased(value):
            return True
    interaction_id = getattr(body, "interaction_id", None)
    return interaction_id is not None and erased.interaction(interaction_id)


def _raw_id(raw: bytes) -> str | None:
    try:
        value = _id_decoder.decode(raw).id
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) else None


@dataclass
class Pending:
    """A batch after validation: results so far, and the events waiting for the commit."""

    results: list[EventResult | None]
    prepared: list[PreparedEvent]
    slots: list[int]  # position in ``results`` of each prepared event


class Ingestor:
    """The ingest pipeline of one process.

    Parameters
    ----------
    committer
        The group committer writing to the hot store.
    metrics
        Counters; ``received = stored + duplicate + rejected + dropped`` always holds.
    redactors
        Each project's synchronous redaction step, applied to every event before the commit
        (none: events are stored as sent).
    erased
        Each project's erased users: their later events are refused or dropped, as the
        project's retention says, and counted.
    """

    def __init__(
        self,
        committer: GroupCommitter,
        metrics: IngestMetrics,
        *,
        redactors: RedactorLookup | None = None,
        erased: ErasedUsers | None = None,
    ) -> None:
        self.committer = committer
        self.metrics = metrics
        self.redactors = redactors
        self.erased = erased

    def prepare(self, key: ProjectKey, raws: Sequence[bytes | msgspec.Raw]) -> Pending:
        """Decode, validate and redact ``raws``; reject what fails, with the field."""
        self.metrics.received(len(raws))
        results: list[EventResult | None] = [None] * len(raws)
        prepared: list[PreparedEvent] = []
        slots: list[int] = []
        seen: set[str] = set()
        redact = self.redactors.get(key.project_id) if self.redactors is not None else None
        erased = self.erased.checker(key.project_id) if self.erased is not None else None
        for i, raw in enumerate(raws):
            data = bytes(raw)
            try:
                event = decode_event(data)
                if b"\\u0000" in data:
                    path = find_nul(msgspec.to_builtins(event))
                    if path is not None:
                        raise ContractError(
                            path,
                            "contains a NUL character (U+0000), which cannot be stored; "
                            "remove it from the text",
                        )
                if key.kind == "public" and event.type != "feedback" and event.type != "signal":
                    raise ContractError(
                        "type",
                        "a public key may send only feedback and signal events; send "
                        "interactions with the project's secret key",
                    )
                if redact is not None:
                    event = redact(event)
            except ContractError as exc:
                results[i] = EventResult(
                    id=_raw_id(data), status="rejected", field=exc.field, message=exc.message
                )
                self.metrics.rejected(_reason(exc.field))
                continue
            if erased is not None and _names_erased(event, erased):
                if erased.mode == "drop":
                    results[i] = EventResult(id=event.id, status="dropped", message="erased_user")
                    self.metrics.dropped("erased_user", 1)
                else:
                    results[i] = EventResult(
                        id=event.id,
                        status="rejected",
                        field="body.user_id",
                        message="this user's data was erased; the project refuses their events",
                    )
                    self.metrics.rejected("erased_user")
                continue
            if event.id in seen:
                results[i] = EventResult(id=event.id, status="duplicate")
                self.metrics.duplicate(1)
                continue
            seen.add(event.id)
            prepared.append(
                PreparedEvent(
                    project_id=key.project_id,
                    event_id=event.id,
                    type=event.type,
                    row=_row(key.project_id, event),
                )
            )
            slots.append(i)
        return Pending(results=results, prepared=prepared, slots=slots)

    def submit(self, pending: Pending) -> Future[list[bool]]:
        """Queue the prepared events; count them as dropped if the queue refuses."""
        try:
            return self.committer.submit(pending.prepared)
        except Exception as exc:
            self.metrics.dropped(type(exc).__name__, len(pending.prepared))
            raise

    def finish(self, pending: Pending, fresh: list[bool]) -> BatchResult:
        """Combine validation results with the commit's answer."""
        results = pending.results
        for slot, event, is_new in zip(pending.slots, pending.prepared, fresh, strict=True):
            results[slot] = EventResult(
                id=event.event_id, status="stored" if is_new else "duplicate"
            )
        stored = sum(fresh)
        self.metrics.stored(stored)
        self.metrics.duplicate(len(fresh) - stored)
        return BatchResult(results=tuple(r for r in results if r is not None))

    def _failed(self, pending: Pending, exc: BaseException) -> None:
        self.metrics.dropped(type(exc).__name__, len(pending.prepared))

    def ingest(self, key: ProjectKey, raws: Sequence[bytes | msgspec.Raw]) -> BatchResult:
        """Ingest a batch and wait for the commit (for import, the embedded SDK, tests)."""
        pending = self.prepare(key, raws)
        future = self.submit(pending)
        try:
            fresh = future.result()
        except BaseException as exc:
            self._failed(pending, exc)
            raise
        return self.finish(pending, fresh)

    async def aingest(self, key: ProjectKey, raws: Sequence[bytes | msgspec.Raw]) -> BatchResult:
        """Ingest a batch without blocking the event loop.

        Validation and redaction run on the loop for a small batch whose project's redaction
        step is at hand, and in a worker thread otherwise (reading the policy is I/O, and
        redacting a large batch or a long text takes milliseconds).
        """
        small = len(raws) <= _INLINE_EVENTS and sum(len(r) for r in raws) <= _INLINE_BYTES
        at_hand = (
            self.redactors is None or self.redactors.cached(key.project_id) is not None
        ) and (self.erased is None or self.erased.cached(key.project_id))
        if small and at_hand:
            pending = self.prepare(key, raws)
        else:
            pending = await asyncio.to_thread(self.prepare, key, raws)
        future = self.submit(pending)
        try:
            fresh = await asyncio.wrap_future(future)
        except BaseException as exc:
            self._failed(pending, exc)
            raise
        return self.finish(pending, fresh)


# Batches up to this size are prepared on the event loop; larger ones (whose redaction can
# take milliseconds, or longer on pathological text) in a worker thread.
_INLINE_EVENTS = 8
_INLINE_BYTES = 16_384


def _reason(field: str) -> str:
    """A bounded label for the rejected counter: the top-level part of the field."""
    if not field:
        return "malformed"
    head = field.split(".")[0]
    if head == "body":
        parts = field.split(".")
        return "body." + parts[1] if len(parts) > 1 and not parts[1].isdigit() else "body"
    return head if head in ("id", "type", "timestamp") else "other"
