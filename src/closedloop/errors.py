"""The one exception hierarchy of closedloop.

Every error that closedloop raises on purpose is a :class:`ClosedLoopError`::

    * ClosedLoopError
      x ConfigError            - a setting or argument is invalid; the message says the fix
        + QueryError           - an analytics query failed or is not a read (HTTP 400)
      x ContractError          - an event does not satisfy the wire contract
      x AuthError              - a key is missing, malformed, unknown or revoked
        + Forbidden            - signed in, but the role or the CSRF token does not allow it
        + RateLimited          - too many failed sign-ins; retry after a pause (HTTP 429)
      x NotFound               - the object does not exist in the caller's project
      x IngestError
        + QueueFull            - the write queue is full; retry after a pause (HTTP 429)
        + PayloadTooLarge      - the body or its decompressed form is over the limit (HTTP 413)
      x StorageError
        + StorageUnavailable   - the database cannot be reached; retry later (HTTP 503)
        + LakeError            - a lake file failed verification or could not be published
      x JobError               - a background job failed
      x ActionError            - an action failed

At each boundary third-party exceptions are mapped to the most specific class with
``raise ... from exc``.
"""

from __future__ import annotations

__all__ = [
    "ActionError",
    "AuthError",
    "ClosedLoopError",
    "ConfigError",
    "ContractError",
    "Forbidden",
    "IngestError",
    "JobError",
    "LakeError",
    "NotFound",
    "PayloadTooLarge",
    "QueryError",
    "QueueFull",
    "RateLimited",
    "StorageError",
    "StorageUnavailable",
]


class ClosedLoopError(Exception):
    """Base class of every error closedloop raises on purpose."""


class ConfigError(ClosedLoopError):
    """A setting or argument is invalid; ``field`` names it where one argument is at fault."""

    field: str | None = None

    def __init__(self, message: str = "", *, field: str | None = None) -> None:
        super().__init__(message)
        if field is not None:
            self.field = field


class QueryError(ConfigError):
    """An analytics query failed, does not parse, or is not a read; ``field`` is ``sql``."""

    field: str | None = "sql"


class ContractError(ClosedLoopError, ValueError):
    """An event does not satisfy the wire contract.

    ``field`` is the dotted path of the offending field (``body.model.name``), or ``""``
    when the problem is the event as a whole.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


class AuthError(ClosedLoopError):
    """A key is missing, malformed, unknown or revoked."""


class Forbidden(AuthError):
    """The caller is known, but its role, or a missing CSRF token, does not allow this (403)."""


class RateLimited(AuthError):
    """Too many failed sign-ins for this account or address; retry after ``retry_after`` s."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NotFound(ClosedLoopError):
    """The object does not exist in the caller's project."""


class IngestError(ClosedLoopError):
    """The ingest path could not take a batch."""


class QueueFull(IngestError):
    """The write queue is full: the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PayloadTooLarge(IngestError):
    """The request body, or its decompressed form, is over the configured limit.

    ``field`` names what is too large: ``body`` (bytes) or ``events`` (the batch's length).
    """

    def __init__(self, message: str, field: str = "body") -> None:
        super().__init__(message)
        self.field = field


class StorageError(ClosedLoopError):
    """The store failed."""


class StorageUnavailable(StorageError):
    """The database cannot be reached: the client should retry after ``retry_after`` seconds."""

    def __init__(self, message: str, retry_after: float = 5.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LakeError(StorageError):
    """A lake file failed verification (row count or checksum) or could not be published."""


class JobError(ClosedLoopError):
    """A background job failed."""


class ActionError(ClosedLoopError):
    """An action failed."""
