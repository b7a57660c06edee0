"""Values passed between stages: frozen dataclasses."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from closedloop.events import Event

__all__ = [
    "BatchResult",
    "EventResult",
    "KeyKind",
    "PreparedEvent",
    "ProjectKey",
    "Redactor",
    "RedactorLookup",
]

KeyKind = Literal["public", "secret"]

Redactor = Callable[[Event], Event]
"""A synchronous redaction step: takes a decoded event, returns it with PII removed."""


class RedactorLookup(Protocol):
    """Each project's redaction step (:class:`closedloop.enrich.redact.ProjectRedactors`)."""

    def cached(self, project_id: int) -> Redactor | None:
        """The step if it is at hand without I/O."""

    def get(self, project_id: int) -> Redactor:
        """The step, reading the project's policy if needed (blocking I/O)."""


@dataclass(frozen=True, kw_only=True)
class ProjectKey:
    """A verified API key: which project it opens and how far."""

    project_id: int
    project_name: str
    kind: KeyKind
    key_id: int
    cors_origins: tuple[str, ...] = ()
    #: A signed-in dashboard user in place of a key (``key_id`` 0): their address and role.
    user: str | None = None
    role: str | None = None


@dataclass(frozen=True, kw_only=True)
class PreparedEvent:
    """A decoded, validated, redacted event, ready for the group commit."""

    project_id: int
    event_id: str
    type: str
    row: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class EventResult:
    """The outcome of one event: ``stored``, ``duplicate``, ``rejected`` (with the field) or
    ``dropped`` (valid, deliberately not stored: its user was erased and the project drops
    such events)."""

    id: str | None
    status: Literal["stored", "duplicate", "rejected", "dropped"]
    field: str | None = None
    message: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The per-event result of the HTTP answer."""
        out: dict[str, Any] = {"id": self.id, "status": self.status}
        if self.status == "rejected":
            out["error"] = {"field": self.field, "message": self.message}
        elif self.status == "dropped":
            out["reason"] = self.message
        return out


@dataclass(frozen=True, kw_only=True)
class BatchResult:
    """The outcome of one batch, in the order the events came."""

    results: tuple[EventResult, ...] = field(default_factory=tuple)

    def count(self, status: str) -> int:
        """How many events ended with ``status``."""
        return sum(1 for r in self.results if r.status == status)

    @property
    def all_stored(self) -> bool:
        """Whether every event of the batch was stored."""
        return all(r.status == "stored" for r in self.results)
