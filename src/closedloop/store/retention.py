"""A project's retention: how long rows stay hot, cold and as vectors, and what happens to
events for an erased user.

Stored as JSON in ``projects.retention``; every field has a default, so ``{}`` is the default
policy. The retention job (:mod:`closedloop.store.enforce`) applies it.

>>> Retention.from_json(b'{"hot_days": 7}').to_json()["cold_days"]
730.0
>>> Retention.from_json(b'{"hot_days": 0}')
Traceback (most recent call last):
...
closedloop.errors.ContractError: hot_days: must be more than 0 days; use e.g. 30
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from closedloop.errors import ContractError

__all__ = ["ErasedEvents", "Retention"]

ErasedEvents = Literal["refuse", "drop"]

_FIELDS = "hot_days, cold_days, vector_days, erased_events"


class Retention(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """How long a project keeps its data.

    Parameters
    ----------
    hot_days
        Rows older than this (by event time) move from the hot store to the lake (default 30).
    cold_days
        Lake files whose day is older than this are deleted (default 730); ``null`` keeps them.
    vector_days
        Embeddings older than this (by event time) are deleted (default 180); ``null`` keeps
        them.
    erased_events
        What happens to events for an erased user that arrive later: ``refuse`` (default:
        answered ``rejected`` naming ``body.user_id``) or ``drop`` (answered ``dropped``);
        both are counted.
    """

    hot_days: float = 30.0
    cold_days: float | None = 730.0
    vector_days: float | None = 180.0
    erased_events: ErasedEvents = "refuse"

    @classmethod
    def from_json(cls, data: bytes | str) -> Retention:
        """Decode and validate; :class:`ContractError` names the field at fault."""
        try:
            policy = msgspec.json.decode(data, type=cls)
        except msgspec.ValidationError as exc:
            message = str(exc)
            unknown = re.search(r"unknown field `([^`]*)`", message)
            at = re.search(r"at `\$\.([^`]*)`", message)
            field = unknown.group(1) if unknown else at.group(1) if at else "body"
            hint = (
                "use refuse or drop"
                if field == "erased_events"
                else f"the fields are {_FIELDS}"
                if unknown
                else "use a number of days"
            )
            raise ContractError(field, f"{re.sub(r' - at `[^`]*`', '', message)}; {hint}") from exc
        except msgspec.DecodeError as exc:
            raise ContractError("body", f"is not valid JSON: {exc}") from exc
        policy.check()
        return policy

    @classmethod
    def stored(cls, data: str | bytes | None) -> Retention:
        """The retention stored for a project, read leniently: fields this version does not
        know (written by a newer one during a rolling upgrade) are ignored, and a value it
        cannot use falls back to the default, so one project's row never stops every job.

        >>> Retention.stored('{"hot_days": 7, "archive_tier": "glacier"}').hot_days
        7.0
        >>> Retention.stored("not json").hot_days
        30.0
        """
        try:
            raw = msgspec.json.decode(data or "{}")
            known = {k: v for k, v in raw.items() if k in cls.__struct_fields__}
            policy = msgspec.convert(known, cls)
            policy.check()
        except (msgspec.DecodeError, msgspec.ValidationError, AttributeError, ContractError):
            return cls()
        return policy

    def check(self) -> None:
        """Raise :class:`ContractError` (naming the field) for an impossible policy."""
        if not self.hot_days > 0:
            raise ContractError("hot_days", "must be more than 0 days; use e.g. 30")
        if self.cold_days is not None and self.cold_days < self.hot_days:
            raise ContractError(
                "cold_days",
                f"is {self.cold_days:g}, less than hot_days ({self.hot_days:g}): rows would be "
                "deleted before they reach the lake; use at least hot_days, or null to keep",
            )
        if self.vector_days is not None and not self.vector_days > 0:
            raise ContractError("vector_days", "must be more than 0 days, or null to keep")
        for name in ("hot_days", "cold_days", "vector_days"):
            value = getattr(self, name)
            if value is not None and value > 100 * 366:
                raise ContractError(name, "is more than 100 years; use null to keep forever")

    def to_json(self) -> dict[str, Any]:
        """Every field, defaults included (what the API answers)."""
        return {
            "hot_days": float(self.hot_days),
            "cold_days": None if self.cold_days is None else float(self.cold_days),
            "vector_days": None if self.vector_days is None else float(self.vector_days),
            "erased_events": self.erased_events,
        }

    def encode(self) -> str:
        """The JSON stored in ``projects.retention``."""
        return msgspec.json.encode(self).decode()
