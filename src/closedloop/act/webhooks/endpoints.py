"""Webhook endpoints of a project: where deliveries go, and the secret that signs them.

Secrets follow Standard Webhooks: ``whsec_`` and the base64 of 24 random bytes. A secret is
shown once, when the endpoint is created or its secret rotated; listings never carry it.
"""

from __future__ import annotations

import base64
import datetime as dt
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from closedloop.act.webhooks.ssrf import SsrfGuard, UnresolvableHost
from closedloop.errors import ConfigError, NotFound
from closedloop.store import models
from closedloop.store.db import utc, utcnow

__all__ = ["NAME_RE", "Endpoint", "Endpoints", "Format", "find_endpoint", "new_secret"]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
Format = Literal["standard", "slack"]
FORMATS: tuple[str, ...] = ("standard", "slack")


def new_secret() -> str:
    """A fresh Standard Webhooks secret: ``whsec_`` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode("ascii")


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """A stored endpoint (``secret`` is never part of :meth:`to_json`)."""

    id: int
    project_id: int
    name: str
    url: str
    format: str
    allow_private: bool
    enabled: bool
    created_at: dt.datetime
    secret: str = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict without the secret."""
        return {
            "name": self.name,
            "url": self.url,
            "format": self.format,
            "allow_private": self.allow_private,
            "enabled": self.enabled,
            "created_at": self.created_at.isoformat(),
        }


def _endpoint(row: Any) -> Endpoint:
    return Endpoint(
        id=row.id,
        project_id=row.project_id,
        name=row.name,
        url=row.url,
        format=row.format,
        allow_private=bool(row.allow_private),
        enabled=bool(row.enabled),
        created_at=utc(row.created_at),
        secret=row.secret,
    )


def find_endpoint(conn: Connection, project_id: int, name: str) -> Endpoint:
    """The endpoint ``name`` of the project (raises :class:`NotFound` naming it)."""
    w = models.webhook_endpoints
    row = conn.execute(sa.select(w).where(w.c.project_id == project_id, w.c.name == name)).first()
    if row is None:
        raise NotFound(f"no webhook endpoint {name!r} in this project; see GET /v1/webhooks")
    return _endpoint(row)


class Endpoints:
    """Create, list, get, delete endpoints and rotate their secrets.

    Parameters
    ----------
    engine
        The hot store.
    guard
        The SSRF guard URLs are checked with at creation (deliveries check again).
    """

    def __init__(self, engine: Engine, guard: SsrfGuard) -> None:
        self.engine = engine
        self.guard = guard

    def create(
        self,
        project_id: int,
        name: str,
        url: str,
        *,
        format: str = "standard",
        allow_private: bool = False,
    ) -> Endpoint:
        """Store a new endpoint with a fresh secret (read it from the result: it is shown once).

        Raises :class:`ConfigError` naming ``name``, ``url`` or ``format``. A host name that
        does not resolve now is accepted (each delivery resolves and checks it again).
        """
        if not NAME_RE.match(name):
            raise ConfigError(
                f"name: {name!r} is not a valid endpoint name: 1-64 characters of a-z, 0-9, "
                "'_', '.', '-', starting with a letter or digit",
                field="name",
            )
        if format not in FORMATS:
            raise ConfigError(
                f"format: must be 'standard' or 'slack', not {format!r}", field="format"
            )
        if len(url) > 2048:
            raise ConfigError("url: at most 2048 characters", field="url")
        try:
            self.guard.check(url, allow_private=allow_private)
        except UnresolvableHost:
            pass
        w = models.webhook_endpoints
        with self.engine.begin() as conn:
            taken = conn.execute(
                sa.select(w.c.id).where(w.c.project_id == project_id, w.c.name == name)
            ).first()
            if taken is not None:
                raise ConfigError(
                    f"name: an endpoint {name!r} exists already; remove it or choose another name",
                    field="name",
                )
            values = {
                "project_id": project_id,
                "name": name,
                "url": url,
                "secret": new_secret(),
                "format": format,
                "allow_private": allow_private,
                "enabled": True,
                "created_at": utcnow(),
            }
            try:
                conn.execute(w.insert().values(**values))
            except sa.exc.IntegrityError:  # a concurrent create of the same name
                raise ConfigError(
                    f"name: an endpoint {name!r} exists already", field="name"
                ) from None
            return find_endpoint(conn, project_id, name)

    def list(self, project_id: int) -> list[Endpoint]:
        """The project's endpoints by name."""
        w = models.webhook_endpoints
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(w).where(w.c.project_id == project_id).order_by(w.c.name))
            return [_endpoint(r) for r in rows]

    def get(self, project_id: int, name: str) -> Endpoint:
        """The endpoint ``name`` (raises :class:`NotFound`)."""
        with self.engine.connect() as conn:
            return find_endpoint(conn, project_id, name)

    def delete(self, project_id: int, name: str) -> None:
        """Remove the endpoint (raises :class:`NotFound`); its undelivered deliveries end
        ``dead`` when their turn comes."""
        w = models.webhook_endpoints
        with self.engine.begin() as conn:
            gone = conn.execute(
                w.delete().where(w.c.project_id == project_id, w.c.name == name)
            ).rowcount
        if not gone:
            raise NotFound(f"no webhook endpoint {name!r} in this project; see GET /v1/webhooks")

    def rotate(self, project_id: int, name: str) -> Endpoint:
        """Give the endpoint a new secret (returned once); deliveries not yet sent are signed
        with it."""
        w = models.webhook_endpoints
        secret = new_secret()
        with self.engine.begin() as conn:
            done = conn.execute(
                w.update()
                .where(w.c.project_id == project_id, w.c.name == name)
                .values(secret=secret)
            ).rowcount
            if not done:
                raise NotFound(f"no webhook endpoint {name!r} in this project")
            return find_endpoint(conn, project_id, name)
