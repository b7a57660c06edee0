"""How the SDK's background thread delivers one batch: over HTTP, or embedded.

A transport takes a batch of events already serialised to JSON (each event is encoded once,
when the app logs it) and answers a :class:`SendOutcome`:

* ``ok`` - the server answered 200/207; ``stored``, ``duplicate`` and ``rejected`` count the
  per-event results (a per-event rejection is final);
* ``retry`` - a network error, 429, 502, 503 or 504: send the batch again later, no earlier than
  ``retry_after`` seconds when the server said so;
* ``fatal`` - any other answer (400, 401, 413, ...): the batch is dropped and counted.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from typing import Literal, Protocol

import httpx
import msgspec

__all__ = ["RETRY_STATUSES", "HttpTransport", "SendOutcome", "Transport", "parse_retry_after"]

RETRY_STATUSES = frozenset({429, 502, 503, 504})
"""HTTP answers worth retrying (DESIGN.md, "Promises")."""


@dataclass(frozen=True, kw_only=True)
class SendOutcome:
    """What became of one batch."""

    kind: Literal["ok", "retry", "fatal"]
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    reason: str = ""
    retry_after: float | None = None
    rejections: tuple[str, ...] = field(default_factory=tuple)


class Transport(Protocol):
    """Delivers batches of serialised events."""

    def send(self, events: list[bytes]) -> SendOutcome:
        """Deliver ``events``; never raises."""
        ...

    def after_fork(self) -> None:
        """Drop connections inherited from the parent process."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class _Result(msgspec.Struct):
    status: str
    error: dict[str, str | None] | None = None


class _Answer(msgspec.Struct):
    results: list[_Result] = []


_answer_decoder = msgspec.json.Decoder(_Answer)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header (delta-seconds form); ``None`` if absent or bad.

    >>> parse_retry_after("2"), parse_retry_after(None), parse_retry_after("soon")
    (2.0, None, None)
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return min(max(seconds, 0.0), 3600.0)


def batch_body(events: list[bytes]) -> bytes:
    """The request body ``{"events": [...]}`` joined from serialised events."""
    return b'{"events":[' + b",".join(events) + b"]}"


class HttpTransport:
    """``POST /v1/events`` with a secret key, gzip-compressed.

    Parameters
    ----------
    base_url
        Where ``closedloop serve`` listens.
    api_key
        The project's key, sent as ``Authorization: Bearer``.
    timeout
        Seconds for each request.
    transport
        An ``httpx`` transport (``httpx.MockTransport`` in tests).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        gzip_level: int = 6,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout
        self.gzip_level = gzip_level
        self.transport = transport
        self._client: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                base_url=self.base_url,
                timeout=self.timeout,
                transport=self.transport,
                headers={
                    "authorization": f"Bearer {self.api_key}",
                    "content-type": "application/json",
                    "content-encoding": "gzip",
                    "user-agent": "closedloop-python",
                },
            )
        return self._client

    def send(self, events: list[bytes]) -> SendOutcome:
        """Post one batch; see the module docstring for the outcome."""
        body = gzip.compress(batch_body(events), compresslevel=self.gzip_level)
        try:
            response = self._http().post("/v1/events", content=body)
        except httpx.HTTPError as exc:
            return SendOutcome(kind="retry", reason=type(exc).__name__)
        except Exception as exc:  # never into the host app
            return SendOutcome(kind="fatal", reason=f"client error: {type(exc).__name__}")
        status = response.status_code
        if status in RETRY_STATUSES:
            return SendOutcome(
                kind="retry",
                reason=f"HTTP {status}",
                retry_after=parse_retry_after(response.headers.get("retry-after")),
            )
        if status not in (200, 207):
            return SendOutcome(kind="fatal", reason=f"HTTP {status}: {response.text[:300]}")
        try:
            answer = _answer_decoder.decode(response.content)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return SendOutcome(kind="fatal", reason=f"HTTP {status}: unreadable answer")
        return outcome_of(status_list(answer.results))

    def after_fork(self) -> None:
        """Forget the parent's connections (a new client is made on the next send)."""
        self._client = None

    def close(self) -> None:
        """Close the HTTP client."""
        client, self._client = self._client, None
        if client is not None:
            client.close()


def status_list(results: list[_Result]) -> list[tuple[str, str]]:
    """``(status, why)`` per event."""
    out = []
    for r in results:
        why = ""
        if r.error:
            why = f"{r.error.get('field') or ''}: {r.error.get('message') or ''}"
        out.append((r.status, why))
    return out


def outcome_of(results: list[tuple[str, str]]) -> SendOutcome:
    """An ``ok`` outcome counting per-event results."""
    rejections = tuple(why for status, why in results if status == "rejected")
    return SendOutcome(
        kind="ok",
        stored=sum(1 for status, _ in results if status == "stored"),
        duplicate=sum(1 for status, _ in results if status == "duplicate"),
        rejected=len(rejections),
        rejections=rejections,
    )
