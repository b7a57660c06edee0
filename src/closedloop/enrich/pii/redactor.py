"""Find and redact PII in text and in events: mask, keyed hash or drop, per entity type.

Examples
--------
>>> redactor = PiiRedactor(PiiParams(modes={"email": "hash"}, secret="s3cret"))
>>> redactor.redact_text("Mail ana@example.org or call +1 415-555-0132")
'Mail <EMAIL:...> or call <PHONE>'
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import msgspec

from closedloop.enrich.pii import _names, _structured
from closedloop.events import (
    Event,
    FeedbackEvent,
    InteractionEvent,
    Message,
    RetrievedDocument,
    SignalEvent,
)

__all__ = ["ENTITY_TYPES", "EntityType", "Mode", "PiiParams", "PiiRedactor", "Span"]

EntityType = Literal[
    "credentials",
    "secret",
    "email",
    "iban",
    "card",
    "ssn",
    "ip",
    "dob",
    "address",
    "phone",
    "person",
    "location",
]
Mode = Literal["mask", "hash", "drop"]
ENTITY_TYPES: tuple[EntityType, ...] = get_args(EntityType)
"""Every entity type, in priority order: an earlier type wins where two overlap."""

_Finder = Callable[[str], Iterator[tuple[int, int, str]]]
_FINDERS: dict[str, _Finder] = {
    "credentials": _structured.find_credentials,
    "secret": _structured.find_secrets,
    "email": _structured.find_emails,
    "iban": _structured.find_ibans,
    "card": _structured.find_cards,
    "ssn": _structured.find_ssns,
    "ip": _structured.find_ips,
    "phone": _structured.find_phones,
    "dob": _structured.find_dobs,
    "address": _names.find_addresses,
    "person": _names.find_persons,
    "location": _names.find_locations,
}
_PRIORITY: dict[str, int] = {name: i for i, name in enumerate(ENTITY_TYPES)}
_DIGIT = re.compile(r"\d")
# Cheap gates: a finder runs only when the text could hold its entity.
_NEEDS_AT = frozenset({"email", "credentials"})
_NEEDS_DIGIT = frozenset({"iban", "card", "ssn", "ip", "phone", "dob"})
_NON_DIGIT = re.compile(r"\D")
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Span:
    """One finding: ``text[start:end]`` is PII of type ``entity``."""

    start: int
    end: int
    entity: str
    value: str


@dataclass(frozen=True, kw_only=True)
class PiiParams:
    """What to find and how to replace it.

    Parameters
    ----------
    entities
        The entity types to look for (default: all of :data:`ENTITY_TYPES`).
    modes
        Mode per entity type: ``mask`` (``<EMAIL>``), ``hash`` (``<EMAIL:3f2a9c1b>``, an
        HMAC-SHA256 of the normalised value under ``secret``: stable, so the same value still
        groups) or ``drop`` (removed). Types not listed use ``default_mode``.
    default_mode
        ``mask`` by default.
    secret
        The project's key for ``hash`` mode; required when any type hashes.
    allowlist
        Values never redacted, compared case-insensitively after trimming.
    max_chars
        Strings longer than this are replaced whole by ``<REDACTED:TOO_LONG>``: fail closed
        rather than spend unbounded time (default 200,000, twice the contract's text limit).
    hash_chars
        Hex digits of the pseudonym (default 8).
    """

    entities: tuple[str, ...] = ENTITY_TYPES
    modes: Mapping[str, Mode] = field(default_factory=dict)
    default_mode: Mode = "mask"
    secret: str | bytes | None = None
    allowlist: frozenset[str] = frozenset()
    max_chars: int = 200_000
    hash_chars: int = 8

    def __post_init__(self) -> None:
        unknown = set(self.entities) - set(ENTITY_TYPES)
        unknown |= set(self.modes) - set(ENTITY_TYPES)
        if unknown:
            raise ValueError(f"unknown entity types {sorted(unknown)}; use {ENTITY_TYPES}")
        for mode in (*self.modes.values(), self.default_mode):
            if mode not in get_args(Mode):
                raise ValueError(f"unknown mode {mode!r}; use mask, hash or drop")
        hashing = self.default_mode == "hash" or "hash" in self.modes.values()
        if hashing and not self.secret:
            raise ValueError("hash mode needs a secret: set PiiParams(secret=...)")
        if not 4 <= self.hash_chars <= 64:
            raise ValueError("hash_chars must lie within [4, 64]")
        if self.max_chars < 1:
            raise ValueError("max_chars must be positive")


def _normalise(entity: str, value: str) -> str:
    if entity in ("phone", "card", "ssn"):
        return _NON_DIGIT.sub("", value)
    if entity == "iban":
        return value.replace(" ", "").upper()
    return _SPACE.sub(" ", value).strip().casefold()


class PiiRedactor:
    """The PII step of the ingest path: a :data:`closedloop.types.Redactor`.

    Redacts every free-text field of an event: input text and message contents (and names),
    output, retrieved document text and source, feedback label, correction and comment,
    signal text and target, metadata values (keys kept, recursively) and tags. Ids
    (``user_id``, ``session_id``, ``interaction_id``, ...) and model / prompt names are kept.
    """

    def __init__(self, params: PiiParams | None = None) -> None:
        self.params = params if params is not None else PiiParams()
        self._finders = [
            (name, _FINDERS[name]) for name in ENTITY_TYPES if name in self.params.entities
        ]
        self._allow = frozenset(
            _SPACE.sub(" ", v).strip().casefold() for v in self.params.allowlist
        )
        secret = self.params.secret
        self._key = secret.encode() if isinstance(secret, str) else (secret or b"")

    def find(self, text: str) -> list[Span]:
        """The PII spans of ``text``, sorted and non-overlapping."""
        if not text or len(text) > self.params.max_chars:
            return []
        hits: list[tuple[int, int, str]] = []
        has_at = "@" in text
        has_digit = _DIGIT.search(text) is not None
        for name, finder in self._finders:
            if (name in _NEEDS_AT and not has_at) or (name in _NEEDS_DIGIT and not has_digit):
                continue
            hits.extend(finder(text))
        hits.sort(key=lambda h: (_PRIORITY[h[2]], h[0] - h[1], h[0]))
        taken: list[tuple[int, int, str]] = []
        for start, end, entity in hits:
            if end <= start or any(start < e and s < end for s, e, _ in taken):
                continue
            value = text[start:end]
            if _SPACE.sub(" ", value).strip().casefold() in self._allow:
                continue
            taken.append((start, end, entity))
        taken.sort()
        return [Span(s, e, ent, text[s:e]) for s, e, ent in taken]

    def replacement(self, span: Span) -> str:
        """The text that stands for ``span`` under its entity's mode."""
        mode = self.params.modes.get(span.entity, self.params.default_mode)
        if mode == "drop":
            return ""
        tag = span.entity.upper()
        if mode == "hash":
            message = f"{span.entity}:{_normalise(span.entity, span.value)}".encode()
            digest = hmac.new(self._key, message, hashlib.sha256).hexdigest()
            return f"<{tag}:{digest[: self.params.hash_chars]}>"
        return f"<{tag}>"

    def redact_text(self, text: str) -> str:
        """``text`` with every PII span replaced."""
        if len(text) > self.params.max_chars:
            return "<REDACTED:TOO_LONG>"
        spans = self.find(text)
        if not spans:
            return text
        out: list[str] = []
        pos = 0
        for span in spans:
            out.append(text[pos : span.start])
            out.append(self.replacement(span))
            pos = span.end
        out.append(text[pos:])
        return "".join(out)

    def __call__(self, event: Event) -> Event:
        """A copy of ``event`` with its free-text fields redacted."""
        rt, rn = self.redact_text, self._redact_name
        if isinstance(event, InteractionEvent):
            b = event.body
            inp: Any = (
                rt(b.input) if isinstance(b.input, str) else [self._message(m) for m in b.input]
            )
            body: Any = msgspec.structs.replace(
                b,
                input=inp,
                output=_opt(rt, b.output),
                retrieved=[self._document(d) for d in b.retrieved],
                metadata=self._value(b.metadata),
                tags=self._tags(b.tags),
            )
        elif isinstance(event, FeedbackEvent):
            f = event.body
            body = msgspec.structs.replace(
                f,
                label=_opt(rn, f.label),
                correction=_opt(rt, f.correction),
                comment=_opt(rt, f.comment),
                metadata=self._value(f.metadata),
                tags=self._tags(f.tags),
            )
        elif isinstance(event, SignalEvent):
            s = event.body
            body = msgspec.structs.replace(
                s,
                text=_opt(rt, s.text),
                target=_opt(rt, s.target),
                metadata=self._value(s.metadata),
            )
        else:  # pragma: no cover - the union is closed
            raise TypeError(f"not an event: {type(event).__name__}")
        return msgspec.structs.replace(event, body=body)

    def _redact_name(self, text: str) -> str:
        # fields with min_length=1 must not become empty under drop
        return self.redact_text(text) or "<REDACTED>"

    def _message(self, m: Message) -> Message:
        return msgspec.structs.replace(
            m, content=_opt(self.redact_text, m.content), name=_opt(self._redact_name, m.name)
        )

    def _document(self, d: RetrievedDocument) -> RetrievedDocument:
        return msgspec.structs.replace(
            d, text=_opt(self.redact_text, d.text), source=_opt(self._redact_name, d.source)
        )

    def _tags(self, tags: Iterable[str]) -> list[str]:
        out = [self.redact_text(t)[:64] for t in tags]
        return [t for t in out if t]

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v) for v in value]
        return value


def _opt(fn: Callable[[str], str], value: str | None) -> str | None:
    return None if value is None else fn(value)
