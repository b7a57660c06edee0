"""A project's PII policy, and the redactor built from it for the ingest path.

Every project redacts PII by default (every entity type, mask mode). A project may change the
mode per entity type, allow values, switch redaction off, and store the identifiers its app
sends (``user_id``, ``session_id``) as keyed hashes instead of as sent. The hash key is the
project's own secret (``projects.pii_secret``): the same email or user id always gets the same
pseudonym within a project and a different one in another project.

Examples
--------
>>> policy = PiiPolicy.from_json(b'{"modes": {"email": "hash"}, "ids": "hash"}')
>>> redact = project_redactor(policy, secret="k")
>>> from closedloop.events import decode_event
>>> event = decode_event(
...     b'{"id": "i-1", "type": "interaction", "timestamp": "2026-01-01T00:00:00Z",'
...     b' "body": {"input": "mail ana@example.org", "user_id": "u-7"}}'
... )
>>> out = redact(event)
>>> out.body.input.startswith("mail <EMAIL:"), out.body.user_id == pseudonym("k", "u-7")
(True, True)
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from closedloop.errors import ContractError
from closedloop.events import Event
from closedloop.types import Redactor

__all__ = ["IdMode", "PiiPolicy", "chain", "project_redactor", "pseudonym"]

IdMode = Literal["keep", "hash"]
_MODES = ("mask", "hash", "drop")


class PiiPolicy(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """What a project redacts and how (stored as JSON in ``projects.pii``).

    Parameters
    ----------
    enabled
        Redact at all (default ``True``). Switching it off stores text exactly as sent.
    entities
        Entity types to look for; ``None`` (default) means every type the redactor knows.
    modes
        Mode per entity type: ``mask`` (``<EMAIL>``), ``hash`` (``<EMAIL:3f2a9c1b>``, stable
        within the project) or ``drop``.
    default_mode
        Mode of the types ``modes`` does not name (default ``mask``).
    allowlist
        Values never redacted (say, the support address the assistant is meant to quote).
    ids
        ``keep`` (default) stores ``user_id`` / ``session_id`` as the app sent them
        (pseudonymous by contract); ``hash`` stores their keyed hashes.
    """

    enabled: bool = True
    entities: list[str] | None = None
    modes: dict[str, str] = {}
    default_mode: str = "mask"
    allowlist: list[str] = []
    ids: IdMode = "keep"

    @classmethod
    def from_json(cls, data: bytes | str) -> PiiPolicy:
        """Decode and validate a policy; :class:`ContractError` names the field at fault."""
        try:
            policy = msgspec.json.decode(data, type=cls)
        except msgspec.ValidationError as exc:
            raise ContractError(_path(str(exc)), _hint(str(exc))) from exc
        except msgspec.DecodeError as exc:
            raise ContractError("body", f"is not valid JSON: {exc}") from exc
        policy.check()
        return policy

    def check(self) -> None:
        """Raise :class:`ContractError` (naming the field) unless every value is known."""
        from closedloop.enrich.pii import ENTITY_TYPES

        known = set(ENTITY_TYPES)
        for i, entity in enumerate(self.entities or ()):
            if entity not in known:
                raise ContractError(
                    f"entities[{i}]", f"{entity!r} is not an entity type; use {sorted(known)}"
                )
        for entity, mode in self.modes.items():
            if entity not in known:
                raise ContractError(
                    f"modes.{entity}", f"is not an entity type; use {sorted(known)}"
                )
            if mode not in _MODES:
                raise ContractError(f"modes.{entity}", f"{mode!r} is not a mode; use {_MODES}")
        if self.default_mode not in _MODES:
            raise ContractError(
                "default_mode", f"{self.default_mode!r} is not a mode; use {_MODES}"
            )
        for i, value in enumerate(self.allowlist):
            if not value.strip() or len(value) > 256:
                raise ContractError(f"allowlist[{i}]", "must hold 1-256 non-blank characters")
        if len(self.allowlist) > 1000:
            raise ContractError("allowlist", "holds more than 1000 values; keep the common ones")

    def to_json(self) -> dict[str, Any]:
        """Every field, defaults included (what the API answers)."""
        from closedloop.enrich.pii import ENTITY_TYPES

        return {
            "enabled": self.enabled,
            "entities": list(self.entities) if self.entities is not None else list(ENTITY_TYPES),
            "modes": dict(self.modes),
            "default_mode": self.default_mode,
            "allowlist": list(self.allowlist),
            "ids": self.ids,
        }


_CHOICES = {
    "ids": "use keep or hash",
    "default_mode": f"use one of {_MODES}",
    "enabled": "use true or false",
}
_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
_AT = re.compile(r" - at `\$\.?([^`]*)`")


def _path(message: str) -> str:
    """The field a msgspec validation message names, as ``modes.email`` or ``entities[0]``.

    >>> _path("Object contains unknown field `colour`")
    'colour'
    >>> _path("Expected `str`, got `int` - at `$.modes[...]`")
    'modes'
    >>> _path("Expected `str`, got `int` - at `$.entities[0]`")
    'entities[0]'
    """
    at = _AT.search(message)
    path = at.group(1).replace("[...]", "") if at else ""
    unknown = _UNKNOWN.search(message)
    if unknown:
        path = f"{path}.{unknown.group(1)}" if path else unknown.group(1)
    return path or "body"


def _hint(message: str) -> str:
    text = _AT.sub("", message)
    if "unknown field" in message:
        return f"{text}; the fields are enabled, entities, modes, default_mode, allowlist, ids"
    field = _path(message)
    return f"{text}; {_CHOICES[field]}" if field in _CHOICES else text


def pseudonym(secret: str | bytes, value: str) -> str:
    """The keyed hash that stands for an app identifier when ``ids`` is ``hash``.

    Erasure by user id hashes its input with this same function.

    >>> pseudonym("k", "u-7") == pseudonym("k", "u-7") != pseudonym("other", "u-7")
    True
    >>> pseudonym("k", "u-7")[:3]
    'ph_'
    """
    key = secret.encode() if isinstance(secret, str) else secret
    return "ph_" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()[:32]


def _hash_ids(secret: str) -> Redactor:
    def ids(event: Event) -> Event:
        body: Any = event.body
        changes: dict[str, Any] = {}
        for name in ("user_id", "session_id", "given_by"):
            value = getattr(body, name, None)
            if value is not None:
                changes[name] = pseudonym(secret, value)
        if not changes:
            return event
        return msgspec.structs.replace(event, body=msgspec.structs.replace(body, **changes))

    return ids


def project_redactor(policy: PiiPolicy, *, secret: str | None) -> Redactor | None:
    """The redaction step for one project's events, or ``None`` when it redacts nothing."""
    steps: list[Redactor] = []
    if policy.enabled:
        from closedloop.enrich.pii import PiiParams, PiiRedactor

        params: dict[str, Any] = {
            "modes": dict(policy.modes),
            "default_mode": policy.default_mode,
            "allowlist": frozenset(policy.allowlist),
            "secret": secret,
        }
        if policy.entities is not None:
            params["entities"] = tuple(policy.entities)
        hashing = policy.default_mode == "hash" or "hash" in policy.modes.values()
        if hashing and not secret:
            raise ContractError("modes", "hash mode needs the project's pii secret")
        steps.append(PiiRedactor(PiiParams(**params)))
    if policy.ids == "hash":
        if not secret:
            raise ContractError("ids", "hashing ids needs the project's pii secret")
        steps.append(_hash_ids(secret))
    return chain(steps) if steps else None


def _same(event: Event) -> Event:
    return event


def chain(steps: Sequence[Redactor]) -> Redactor:
    """One redactor that applies ``steps`` in order (the identity when there are none)."""
    if not steps:
        return _same
    if len(steps) == 1:
        return steps[0]
    ordered = tuple(steps)

    def chained(event: Event) -> Event:
        for step in ordered:
            event = step(event)
        return event

    return chained
