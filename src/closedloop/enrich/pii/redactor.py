"""Find and redact PII in text and in events: mask, keyed hash or drop, per entity type.

Examples
--------
>>> redactor = PiiRedactor(PiiParams(modes={"email": "hash"}, secret="s3cret"))
>>> redactor.redact_text("Mail ana@example.org or call +1 415-555-0132")
'Mail <EMAIL:...> or call <PHONE>'
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import hmac
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

import msgspec

from closedloop.enrich.pii import _names, _structured
from closedloop.enrich.pii._doc import REPLACEMENT, Doc
from closedloop.events import (
    LIMITS,
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

# Each finder takes the shared Doc and gates itself on its cheap views (digits, "@", ...).
_Finder = Callable[[Doc], Iterator[tuple[int, int, str]]]
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
_FUZZY = frozenset({"person", "location"})
_TRIM = " \t\n,;:.-'’\"("
_CACHED_CHARS = 2048  # texts up to this long are cached (repeated prompts, documents, tags)
_TAG = "<tag>"  # a replacement already in the text, or an identifier: ranks first, unreported

_NON_DIGIT = re.compile(r"\D")
_SPACE = re.compile(r"\s+")
_TARGET_LENGTH = 2048  # Signal.target's limit in the contract
_JSON = msgspec.json.Encoder()


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
    cache_entries
        Redactions of short texts (up to 2,048 characters) remembered, least recently used
        first out (default 8,192; 0 turns the cache off).
    """

    entities: tuple[str, ...] = ENTITY_TYPES
    modes: Mapping[str, Mode] = field(default_factory=dict)
    default_mode: Mode = "mask"
    secret: str | bytes | None = None
    allowlist: frozenset[str] = frozenset()
    max_chars: int = 200_000
    hash_chars: int = 8
    cache_entries: int = 8192

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
        if self.cache_entries < 0:
            raise ValueError("cache_entries must not be negative (0 turns the cache off)")


def _rank(hit: tuple[int, int, str]) -> tuple[int, int, int]:
    """Overlaps go to the earlier entity type, then to the longer span, then to the first."""
    return _PRIORITY.get(hit[2], -1), hit[0] - hit[1], hit[0]


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
        self._finders = [_FINDERS[name] for name in ENTITY_TYPES if name in self.params.entities]
        self._allow = frozenset(
            _SPACE.sub(" ", v).strip().casefold() for v in self.params.allowlist
        )
        secret = self.params.secret
        self._key = secret.encode() if isinstance(secret, str) else (secret or b"")
        # Per instance (a policy change builds a new redactor): raw text stays in this
        # process's memory only, and a redaction is a pure function of the text.
        self._cached: Callable[[str], str] | None = (
            functools.lru_cache(maxsize=self.params.cache_entries)(self._redact_text)
            if self.params.cache_entries
            else None
        )

    def find(self, text: str) -> list[Span]:
        """The PII spans of ``text``, sorted and non-overlapping."""
        if not text or len(text) > self.params.max_chars:
            return []
        doc = Doc(text)
        hits: list[tuple[int, int, str]] = []
        for finder in self._finders:
            hits.extend(finder(doc))
        if not hits:
            return []
        if doc.digits:
            # identifiers are never PII, nor is anything read out of their digits
            hits.extend((m.start(), m.end(), _TAG) for m in _structured.IDENTIFIER.finditer(text))
        if "<" in text:
            # what an earlier pass put in ("<PERSON>", "<EMAIL:3f2a9c1b>") is never PII:
            # redacting redacted text changes nothing
            hits.extend((m.start(), m.end(), _TAG) for m in REPLACEMENT.finditer(text))
        if len(hits) > 1:
            hits.sort(key=_rank)
        allow = self._allow
        # the spans kept so far, sorted and disjoint: an overlap test is a bisection
        starts: list[int] = []
        kept: list[tuple[int, int, str]] = []
        for start, end, entity in hits:
            if end <= start:
                continue
            k = bisect.bisect_right(starts, start)
            if (k and kept[k - 1][1] > start) or (k < len(kept) and kept[k][0] < end):
                if entity not in _FUZZY or (k and kept[k - 1][1] > start):
                    continue
                # a name or a place cut by a stronger span ("Mr John Smithana@example.org"):
                # keep the words before it, as a second pass over the result would find them
                end = len(text[start : kept[k][0]].rstrip(_TRIM)) + start
                if end <= start or not any(ch.isalpha() for ch in text[start:end]):
                    continue
            if allow and _SPACE.sub(" ", text[start:end]).strip().casefold() in allow:
                continue
            starts.insert(k, start)
            kept.insert(k, (start, end, entity))
        return [Span(s, e, ent, text[s:e]) for s, e, ent in kept if ent != _TAG]

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
        """``text`` with every PII span replaced (from the cache when ``text`` is short and
        was seen lately: system prompts, retrieved documents, tags repeat).

        Redacting the result again changes nothing: a replacement glued to a word
        ("+14155550132José María" -> "+14155550132<PERSON>") changes the context of its
        neighbour, so such a result is redacted once more (at most twice).
        """
        if len(text) <= _CACHED_CHARS and self._cached is not None:
            return self._cached(text)
        return self._redact_text(text)

    def _redact_text(self, text: str) -> str:
        if len(text) > self.params.max_chars:
            return "<REDACTED:TOO_LONG>"
        spans = self.find(text)
        for _ in range(3):
            if not spans:
                return text
            text, glued = self._apply(text, spans)
            if len(text) > self.params.max_chars:  # replacements can be longer than values
                return "<REDACTED:TOO_LONG>"
            if not glued:
                break
            spans = self.find(text)
        return text

    def _apply(self, text: str, spans: list[Span]) -> tuple[str, bool]:
        """``text`` with ``spans`` replaced, and whether a replacement touches a word or a
        number in the result."""
        out: list[str] = []
        edges: list[int] = []  # where each replacement starts and ends in the result
        pos = 0
        size = 0
        for span in spans:
            kept = text[pos : span.start]
            new = self.replacement(span)
            out.append(kept)
            out.append(new)
            size += len(kept)
            edges.append(size)
            size += len(new)
            edges.append(size)
            pos = span.end
        out.append(text[pos:])
        result = "".join(out)
        glued = False
        for k in range(0, len(edges), 2):
            start, end = edges[k], edges[k + 1]
            if start == end:
                continue  # dropped
            before = result[max(0, start - 2) : start]
            after = result[end : end + 2]
            if _glued(before[-1:], after[:1]) or _near_digit(before, after):
                glued = True
                break
        return result, glued

    def __call__(self, event: Event) -> Event:
        """A copy of ``event`` with its free-text fields redacted."""
        rt, rn = self._redact_field, self._redact_name
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
                metadata=self._metadata(b.metadata),
                tags=self._tags(b.tags),
            )
        elif isinstance(event, FeedbackEvent):
            f = event.body
            body = msgspec.structs.replace(
                f,
                label=_opt(rn, f.label),
                correction=_opt(rt, f.correction),
                comment=_opt(rt, f.comment),
                metadata=self._metadata(f.metadata),
                tags=self._tags(f.tags),
            )
        elif isinstance(event, SignalEvent):
            s = event.body
            body = msgspec.structs.replace(
                s,
                text=_opt(rt, s.text),
                target=_opt(self._redact_target, s.target),
                metadata=self._metadata(s.metadata),
            )
        else:  # pragma: no cover - the union is closed
            raise TypeError(f"not an event: {type(event).__name__}")
        return msgspec.structs.replace(event, body=body)

    # Replacements can be longer than the values they replace ("a@b.io" -> "<EMAIL>"): each
    # field is cut back to its contract limit so that the redacted event stays valid.

    def _redact_field(self, text: str) -> str:
        return self.redact_text(text)[: LIMITS.text_length]

    def _redact_target(self, text: str) -> str:
        return self.redact_text(text)[:_TARGET_LENGTH]

    def _redact_name(self, text: str) -> str:
        # fields with min_length=1 must not become empty under drop
        return self.redact_text(text)[: LIMITS.name_length] or "<REDACTED>"

    def _message(self, m: Message) -> Message:
        return msgspec.structs.replace(
            m, content=_opt(self._redact_field, m.content), name=_opt(self._redact_name, m.name)
        )

    def _document(self, d: RetrievedDocument) -> RetrievedDocument:
        return msgspec.structs.replace(
            d, text=_opt(self._redact_field, d.text), source=_opt(self._redact_name, d.source)
        )

    def _tags(self, tags: Iterable[str]) -> list[str]:
        out = [self.redact_text(t)[: LIMITS.tag_length] for t in tags]
        return [t for t in out if t]

    def _metadata(self, metadata: Any) -> Any:
        redacted = self._value(metadata)
        if redacted != metadata and len(_JSON.encode(redacted)) > LIMITS.metadata_bytes:
            return {"redacted": "<REDACTED:TOO_LONG>"}  # fail closed, stay within the contract
        return redacted

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact_text(value)
        if isinstance(value, dict):
            return {k: self._value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._value(v) for v in value]
        return value


def _glued(before: str, after: str) -> bool:
    """Anything but a space or sentence punctuation right against a replacement ("::<EMAIL>",
    "<SECRET>@", "<EMAIL>+1415..."): its context changed."""
    return bool(before) and before not in _LOOSE or bool(after) and after not in _LOOSE


_LOOSE = frozenset(" \t\n\r.,;!?\"'()[]")


def _near_digit(before: str, after: str) -> bool:
    """A digit one separator away ("1111 <CARD>"): digit runs with separators are read as
    one number, so cutting one changes how its neighbours read."""
    return (before[:1].isdigit() and before[1:] in _SEPARATORS) or (
        after[1:].isdigit() and after[:1] in _SEPARATORS
    )


_SEPARATORS = frozenset(" -./()")


def _opt(fn: Callable[[str], str], value: str | None) -> str | None:
    return None if value is None else fn(value)
