"""The durable webhook outbox: deliveries written with the change that caused them, then sent,
signed, retried and dead-lettered by the worker.

:func:`enqueue` inserts a ``pending`` delivery in the caller's transaction, with the exact body
to send. :class:`WebhookSender` leases due deliveries (PostgreSQL ``FOR UPDATE SKIP LOCKED``;
SQLite one ``UPDATE ... RETURNING`` under its single-writer lock, as :mod:`closedloop.store.jobs`
does), signs each with Standard Webhooks and posts it through the SSRF guard.

States: ``pending`` -> ``sending`` (leased) -> ``delivered``, or ``failed`` (another attempt at
``next_attempt_at``) and, after ``webhook_max_attempts``, ``dead``. A delivery leased by a
sender that died is taken again once its lease expires. Delivery is **at least once**: a
sender that dies after the receiver answered but before recording it causes a second POST,
with the same ``webhook-id`` (the msg id is fixed at enqueue), so receivers deduplicate on it.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import json
import math
import random
import ssl
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from standardwebhooks.webhooks import Webhook

from closedloop.act.webhooks.endpoints import find_endpoint
from closedloop.act.webhooks.ssrf import PinnedTransport, SsrfGuard, UnsafeURL
from closedloop.errors import ConfigError, NotFound
from closedloop.settings import Settings
from closedloop.store import models
from closedloop.store.db import utc, utcnow
from closedloop.store.jobs import Job

__all__ = [
    "STATES",
    "Outcome",
    "WebhookSender",
    "deliveries",
    "enqueue",
    "json_safe",
    "render_body",
    "retry",
]

PENDING, SENDING, DELIVERED, FAILED, DEAD = "pending", "sending", "delivered", "failed", "dead"
STATES = (PENDING, SENDING, DELIVERED, FAILED, DEAD)
BACKOFF_CAP_SECONDS = 3600.0


def json_safe(value: Any) -> Any:
    """``value`` as plain JSON: datetimes in ISO 8601, tuples and sets as lists, NaN and
    infinities as ``null``, numpy scalars as numbers, anything else as its ``str``."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v) for v in value]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return json_safe(item())
    return str(value)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _slack(event_type: str, data: Mapping[str, Any]) -> dict[str, Any]:
    """A Slack-compatible message (``text`` and Block Kit ``blocks``) summarising the event."""
    scalars = [(k, v) for k, v in data.items() if isinstance(v, str | int | float | bool)]
    if "rule" in data:
        title = f"closedloop: rule {data['rule']} fired"
    else:
        title = f"closedloop: {event_type}"
    summary = ", ".join(f"{k}: {v}" for k, v in scalars[:8])
    text = _slack_escape(f"{title} ({event_type})" + (f" - {summary}" if summary else ""))[:2900]
    fields = [
        {"type": "mrkdwn", "text": _slack_escape(f"*{k}*\n{v}")[:1900]} for k, v in scalars[:10]
    ]
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
        {"type": "section", "text": {"type": "mrkdwn", "text": f"`{_slack_escape(event_type)}`"}},
    ]
    if fields:
        blocks.append({"type": "section", "fields": fields})
    return {"text": text, "blocks": blocks}


def render_body(
    event_type: str, data: Mapping[str, Any], *, format: str, timestamp: dt.datetime
) -> str:
    """The body posted: the Standard Webhooks envelope ``{type, timestamp, data}``, or for a
    ``slack`` endpoint a Slack message describing the event."""
    safe = json_safe(data)
    if format == "slack":
        return json.dumps(_slack(event_type, safe), allow_nan=False)
    envelope = {"type": event_type, "timestamp": timestamp.isoformat(), "data": safe}
    return json.dumps(envelope, allow_nan=False)


def enqueue(
    conn: Connection,
    project_id: int,
    endpoint: str,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    firing_id: int | None = None,
) -> int:
    """Add a ``pending`` delivery of ``payload`` to ``endpoint`` in the caller's transaction;
    its id. Raises :class:`NotFound` naming the endpoint when the project has none of that name.
    """
    if not 0 < len(event_type) <= 64:
        raise ConfigError("event_type: 1 to 64 characters", field="event_type")
    found = find_endpoint(conn, project_id, endpoint)
    now = utcnow()
    body = render_body(event_type, payload, format=found.format, timestamp=now)
    d = models.webhook_deliveries
    values = {
        "project_id": project_id,
        "endpoint_id": found.id,
        "msg_id": f"msg_{uuid.uuid4().hex}",
        "event_type": event_type,
        "payload": body,
        "state": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "firing_id": firing_id,
        "created_at": now,
    }
    return int(conn.execute(d.insert().values(**values).returning(d.c.id)).scalar_one())


@dataclass(frozen=True, kw_only=True)
class Leased:
    """A delivery leased by a sender (``attempts`` counts this attempt; it fences the lease)."""

    id: int
    project_id: int
    endpoint_id: int
    msg_id: str
    event_type: str
    body: str
    attempts: int


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What one attempt gave: ``ok`` (2xx), the status if any, the error, and whether retrying
    is pointless (``final``) or should wait at least ``retry_after`` seconds."""

    ok: bool
    status: int | None = None
    error: str | None = None
    final: bool = False
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, (when - utcnow()).total_seconds())


class WebhookSender:
    """Send due deliveries (see the module docstring); a job handler of the worker.

    Parameters
    ----------
    engine
        The hot store.
    settings
        ``webhook_timeout_seconds``, ``webhook_max_attempts``, ``webhook_backoff_seconds``,
        ``webhook_max_response_bytes`` and ``webhook_allow`` are used.
    guard
        The SSRF guard (default: one over ``settings.webhook_allow`` and the system resolver).
    lease_seconds
        How long a leased delivery is reserved (default: long enough for any attempt).
    ssl_context
        TLS trust for HTTPS endpoints (default: the system's certificate authorities).
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        guard: SsrfGuard | None = None,
        lease_seconds: float | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.engine = engine
        # built once: a TLS context costs about 20 ms, more than a delivery on a fast network
        self.ssl_context = ssl_context or httpx.create_ssl_context(trust_env=False)
        self.settings = settings
        self.guard = guard or SsrfGuard(settings.webhook_allow)
        timeout = settings.webhook_timeout_seconds
        self.lease_seconds = lease_seconds if lease_seconds is not None else 60.0 + 4 * timeout

    def __call__(self, job: Job) -> None:
        """Run as the worker's recurring ``webhooks`` job."""
        self.run()

    def run(self, limit: int = 50) -> int:
        """Attempt up to ``limit`` due deliveries; how many were attempted."""
        self.bury_expired()
        leased = self.lease(limit)
        for delivery in leased:
            self.record(delivery, self.attempt(delivery))
        return len(leased)

    def lease(self, limit: int = 50) -> list[Leased]:
        """Take due deliveries (and those whose sender's lease expired)."""
        d = models.webhook_deliveries
        now = utcnow()
        due = sa.or_(
            sa.and_(d.c.state.in_([PENDING, FAILED]), d.c.next_attempt_at <= now),
            sa.and_(
                d.c.state == SENDING,
                d.c.lease_until < now,
                d.c.attempts < self.settings.webhook_max_attempts,
            ),
        )
        pick = sa.select(d.c.id).where(due).order_by(d.c.next_attempt_at, d.c.id).limit(limit)
        if self.engine.dialect.name == "postgresql":
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            d.update()
            .where(d.c.id.in_(pick.scalar_subquery()))
            .values(
                state=SENDING,
                attempts=d.c.attempts + 1,
                lease_until=now + dt.timedelta(seconds=self.lease_seconds),
            )
            .returning(
                d.c.id,
                d.c.project_id,
                d.c.endpoint_id,
                d.c.msg_id,
                d.c.event_type,
                d.c.payload,
                d.c.attempts,
            )  # fmt: skip
        )
        with self.engine.begin() as conn:
            rows = conn.execute(stmt).all()
        return [
            Leased(
                id=r.id,
                project_id=r.project_id,
                endpoint_id=r.endpoint_id,
                msg_id=r.msg_id,
                event_type=r.event_type,
                body=r.payload,
                attempts=r.attempts,
            )
            for r in sorted(rows, key=lambda r: r.id)
        ]

    def bury_expired(self) -> int:
        """Mark ``dead`` the deliveries whose lease expired on their last attempt."""
        d = models.webhook_deliveries
        now = utcnow()
        with self.engine.begin() as conn:
            return int(
                conn.execute(
                    d.update()
                    .where(
                        d.c.state == SENDING,
                        d.c.lease_until < now,
                        d.c.attempts >= self.settings.webhook_max_attempts,
                    )
                    .values(
                        state=DEAD,
                        lease_until=None,
                        last_error="the sender stopped during the last attempt (lease expired)",
                    )
                ).rowcount
            )

    def attempt(self, delivery: Leased) -> Outcome:
        """POST ``delivery`` once: signed, through the SSRF guard, bounded in time and size."""
        w = models.webhook_endpoints
        with self.engine.connect() as conn:
            ep = conn.execute(
                sa.select(w.c.url, w.c.secret, w.c.allow_private, w.c.enabled).where(
                    w.c.id == delivery.endpoint_id, w.c.project_id == delivery.project_id
                )
            ).first()
        if ep is None:
            return Outcome(ok=False, error="the endpoint was deleted", final=True)
        if not ep.enabled:
            return Outcome(ok=False, error="the endpoint is disabled", final=True)
        try:
            target = self.guard.check(ep.url, allow_private=bool(ep.allow_private))
        except UnsafeURL as exc:
            return Outcome(ok=False, error=f"refused by the SSRF guard: {exc}")
        now = utcnow()
        headers = {
            "content-type": "application/json",
            "user-agent": "closedloop-webhooks",
            "webhook-id": delivery.msg_id,
            "webhook-timestamp": str(math.floor(now.timestamp())),
            "webhook-signature": Webhook(ep.secret).sign(delivery.msg_id, now, delivery.body),
        }
        timeout = self.settings.webhook_timeout_seconds
        client = httpx.Client(
            transport=PinnedTransport(target, ssl_context=self.ssl_context),
            timeout=timeout,
            follow_redirects=False,
            trust_env=False,
        )
        try:
            with client, client.stream("POST", target.url, content=delivery.body,
                                       headers=headers) as response:  # fmt: skip
                head = self._read_bounded(response, time.monotonic() + 2 * timeout)
        except httpx.TimeoutException as exc:
            kind = type(exc).__name__
            return Outcome(ok=False, error=f"timed out after {timeout:g} s ({kind})")
        except httpx.HTTPError as exc:
            return Outcome(ok=False, error=f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(ok=True, status=status)
        if 300 <= status < 400:
            where = response.headers.get("location", "?")[:300]
            return Outcome(
                ok=False,
                status=status,
                error=f"HTTP {status}: redirect to {where} not followed (redirects are never "
                "followed; point the endpoint at the final URL)",
            )
        snippet = head.decode("utf-8", "replace")[:500]
        retry_after = (
            _retry_after(response.headers.get("retry-after")) if status in (429, 503) else None
        )
        return Outcome(
            ok=False, status=status, error=f"HTTP {status}: {snippet}", retry_after=retry_after
        )

    def _read_bounded(self, response: httpx.Response, deadline: float) -> bytes:
        """At most ``webhook_max_response_bytes`` of the raw (undecoded, so no decompression
        bomb) body; the rest is never read: closing the response drops the connection."""
        limit = self.settings.webhook_max_response_bytes
        head = bytearray()
        for chunk in response.iter_raw():
            head += chunk[: limit - len(head)]
            if len(head) >= limit or time.monotonic() > deadline:
                break
        return bytes(head)

    def record(self, delivery: Leased, outcome: Outcome) -> str:
        """Store the attempt's outcome; the new state, or ``"lost"`` when another sender holds
        the lease now (nothing is changed then)."""
        d = models.webhook_deliveries
        now = utcnow()
        values: dict[str, Any] = {
            "lease_until": None,
            "last_status": outcome.status,
            "last_error": outcome.error[:2000] if outcome.error else None,
        }
        if outcome.ok:
            values.update(state=DELIVERED, delivered_at=now)
        elif outcome.final or delivery.attempts >= self.settings.webhook_max_attempts:
            values.update(state=DEAD)
        else:
            cap = min(
                BACKOFF_CAP_SECONDS,
                self.settings.webhook_backoff_seconds * 2 ** (delivery.attempts - 1),
            )
            delay = random.uniform(0, cap)  # full jitter
            if outcome.retry_after is not None:
                delay = min(BACKOFF_CAP_SECONDS, max(delay, outcome.retry_after))
            values.update(state=FAILED, next_attempt_at=now + dt.timedelta(seconds=delay))
        with self.engine.begin() as conn:
            changed = conn.execute(
                d.update()
                .where(d.c.id == delivery.id, d.c.state == SENDING)
                .where(d.c.attempts == delivery.attempts)
                .values(**values)
            ).rowcount
        return str(values["state"]) if changed else "lost"


def retry(engine: Engine, project_id: int, delivery_id: int) -> dict[str, Any]:
    """Put a ``dead`` or ``failed`` delivery back to ``pending`` now, with a fresh set of
    attempts; the delivery. Raises :class:`NotFound`, or :class:`ConfigError` for another state.
    """
    d = models.webhook_deliveries
    with engine.begin() as conn:
        state = conn.execute(
            sa.select(d.c.state).where(d.c.id == delivery_id, d.c.project_id == project_id)
        ).scalar()
        if state is None:
            raise NotFound(f"no webhook delivery {delivery_id} in this project")
        if state not in (DEAD, FAILED):
            raise ConfigError(
                f"id: delivery {delivery_id} is {state}; only failed or dead deliveries can "
                "be retried",
                field="id",
            )
        conn.execute(
            d.update()
            .where(d.c.id == delivery_id, d.c.state == state)
            .values(state=PENDING, attempts=0, next_attempt_at=utcnow(), lease_until=None)
        )
    return deliveries(engine, project_id, delivery_id=delivery_id)[0]


def deliveries(
    engine: Engine,
    project_id: int,
    state: str | None = None,
    limit: int = 100,
    *,
    delivery_id: int | None = None,
) -> list[dict[str, Any]]:
    """The project's deliveries, newest first (optionally of one ``state``), without bodies."""
    if state is not None and state not in STATES:
        raise ConfigError(f"state: one of {', '.join(STATES)}, not {state!r}", field="state")
    d, w = models.webhook_deliveries, models.webhook_endpoints
    query = (
        sa.select(d, w.c.name.label("endpoint"))
        .select_from(d.outerjoin(w, w.c.id == d.c.endpoint_id))
        .where(d.c.project_id == project_id)
        .order_by(d.c.id.desc())
        .limit(limit)
    )
    if state is not None:
        query = query.where(d.c.state == state)
    if delivery_id is not None:
        query = query.where(d.c.id == delivery_id)
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    shown = ("id", "endpoint", "msg_id", "event_type", "state", "attempts", "next_attempt_at",
             "last_status", "last_error", "firing_id", "created_at", "delivered_at")  # fmt: skip
    out = []
    for r in rows:
        item = {k: getattr(r, k) for k in shown}
        for k in ("next_attempt_at", "created_at", "delivered_at"):
            item[k] = item[k] and utc(item[k]).isoformat()
        out.append(item)
    return out
