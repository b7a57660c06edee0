"""Projects and their API keys.

Each project has a **public** key (browser-safe: may send feedback and signals for its
project, nothing else) and a **secret** key (full access to its project). Keys are random
(192 bits), stored only as SHA-256 hashes (a fast hash is right for high-entropy tokens; a
password hash would only slow every request), looked up by a short non-secret prefix and
compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.errors import AuthError, ConfigError, NotFound
from closedloop.store import models
from closedloop.store.db import utc, utcnow
from closedloop.types import KeyKind, ProjectKey

__all__ = [
    "KeyInfo",
    "Project",
    "Projects",
    "hash_key",
]

_PREFIX = {"public": "cl_pk_", "secret": "cl_sk_"}
_LOOKUP_LENGTH = 16  # prefix + 10 random characters; not secret
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$|^\*$")


def hash_key(key: str) -> str:
    """SHA-256 of a key, hex."""
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key(kind: KeyKind) -> str:
    return _PREFIX[kind] + secrets.token_urlsafe(24)


@dataclass(frozen=True, kw_only=True)
class Project:
    """A project: the unit of tenancy."""

    id: int
    name: str
    cors_origins: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class KeyInfo:
    """A stored key, without its secret."""

    id: int
    project: str
    kind: KeyKind
    lookup: str
    revoked: bool


class Projects:
    """Create projects, issue, rotate and revoke keys, verify keys."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def create(self, name: str, *, cors_origins: tuple[str, ...] = ()) -> tuple[Project, str, str]:
        """Create project ``name``; return it with its new public and secret keys."""
        if not _NAME.match(name):
            raise ConfigError(
                f"project name {name!r} is invalid: use 1-64 lowercase letters, digits, '-' or "
                "'_', starting with a letter or digit"
            )
        origins = _check_origins(cors_origins)
        with self.engine.begin() as conn:
            exists = conn.execute(
                sa.select(models.projects.c.id).where(models.projects.c.name == name)
            ).first()
            if exists:
                raise ConfigError(f"project {name!r} exists already; pick another name")
            project_id = conn.execute(
                models.projects.insert()
                .values(
                    name=name,
                    cors_origins=json.dumps(list(origins)),
                    created_at=utcnow(),
                    pii_secret=secrets.token_hex(32),
                )
                .returning(models.projects.c.id)
            ).scalar_one()
            public = self._insert_key(conn, project_id, "public")
            secret = self._insert_key(conn, project_id, "secret")
        return Project(id=project_id, name=name, cors_origins=origins), public, secret

    @staticmethod
    def _insert_key(conn: sa.Connection, project_id: int, kind: KeyKind) -> str:
        key = _new_key(kind)
        conn.execute(
            models.api_keys.insert().values(
                project_id=project_id,
                kind=kind,
                lookup=key[:_LOOKUP_LENGTH],
                key_hash=hash_key(key),
                created_at=utcnow(),
            )
        )
        return key

    def get(self, name: str) -> Project:
        """The project called ``name``."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(models.projects).where(models.projects.c.name == name)
            ).first()
        if row is None:
            raise NotFound(f"no project {name!r}; list them with `closedloop projects list`")
        return Project(id=row.id, name=row.name, cors_origins=tuple(json.loads(row.cors_origins)))

    def all(self) -> list[Project]:
        """Every project, by name."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(models.projects).order_by(models.projects.c.name))
            return [
                Project(id=r.id, name=r.name, cors_origins=tuple(json.loads(r.cors_origins)))
                for r in rows
            ]

    def keys(self, name: str) -> list[KeyInfo]:
        """The keys of project ``name`` (without secrets)."""
        project = self.get(name)
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(models.api_keys)
                .where(models.api_keys.c.project_id == project.id)
                .order_by(models.api_keys.c.id)
            )
            return [
                KeyInfo(
                    id=r.id,
                    project=name,
                    kind=r.kind,
                    lookup=r.lookup,
                    revoked=r.revoked_at is not None,
                )
                for r in rows
            ]

    def rotate(self, name: str, kind: KeyKind) -> str:
        """Issue a new ``kind`` key for ``name`` and revoke the old ones; return the new key."""
        project = self.get(name)
        with self.engine.begin() as conn:
            conn.execute(
                models.api_keys.update()
                .where(
                    models.api_keys.c.project_id == project.id,
                    models.api_keys.c.kind == kind,
                    models.api_keys.c.revoked_at.is_(None),
                )
                .values(revoked_at=utcnow())
            )
            return self._insert_key(conn, project.id, kind)

    def revoke(self, lookup: str) -> None:
        """Revoke the key whose visible prefix is ``lookup``."""
        with self.engine.begin() as conn:
            done = conn.execute(
                models.api_keys.update()
                .where(models.api_keys.c.lookup == lookup[:_LOOKUP_LENGTH])
                .values(revoked_at=utcnow())
            ).rowcount
        if not done:
            raise NotFound(f"no key starts with {lookup!r}; see `closedloop projects keys NAME`")

    def set_origins(self, name: str, origins: tuple[str, ...]) -> Project:
        """Replace the browser origins allowed to use the public key of ``name``."""
        project = self.get(name)
        checked = _check_origins(origins)
        with self.engine.begin() as conn:
            conn.execute(
                models.projects.update()
                .where(models.projects.c.id == project.id)
                .values(cors_origins=json.dumps(list(checked)))
            )
        return Project(id=project.id, name=name, cors_origins=checked)

    def pii(self, project_id: int) -> tuple[str, str | None]:
        """The project's PII policy (JSON text) and its pseudonym key."""
        p = models.projects
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(p.c.pii, p.c.pii_secret).where(p.c.id == project_id)
            ).first()
        if row is None:
            raise NotFound(f"no project with id {project_id}")
        return row.pii, row.pii_secret

    def set_pii(self, project_id: int, policy_json: str) -> None:
        """Replace the project's PII policy (JSON text, validated by the caller)."""
        p = models.projects
        with self.engine.begin() as conn:
            done = conn.execute(
                p.update().where(p.c.id == project_id).values(pii=policy_json)
            ).rowcount
        if not done:
            raise NotFound(f"no project with id {project_id}")

    def retention(self, project_id: int) -> str:
        """The project's retention (JSON text of :class:`closedloop.store.retention.Retention`)."""
        p = models.projects
        with self.engine.connect() as conn:
            value = conn.execute(sa.select(p.c.retention).where(p.c.id == project_id)).first()
        if value is None:
            raise NotFound(f"no project with id {project_id}")
        return str(value[0])

    def set_retention(self, project_id: int, retention_json: str) -> None:
        """Replace the project's retention (JSON text, validated by the caller)."""
        p = models.projects
        with self.engine.begin() as conn:
            done = conn.execute(
                p.update().where(p.c.id == project_id).values(retention=retention_json)
            ).rowcount
        if not done:
            raise NotFound(f"no project with id {project_id}")

    def verify(self, key: str) -> ProjectKey:
        """The project and kind a key opens.

        Raises
        ------
        AuthError
            for a malformed, unknown or revoked key.
        """
        kind: KeyKind | None = next((k for k, p in _PREFIX.items() if key.startswith(p)), None)  # type: ignore[misc]
        if kind is None or len(key) < _LOOKUP_LENGTH + 8:
            raise AuthError("the key is malformed: send `Authorization: Bearer cl_sk_...`")
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    models.api_keys.c.id,
                    models.api_keys.c.kind,
                    models.api_keys.c.key_hash,
                    models.api_keys.c.revoked_at,
                    models.projects.c.id.label("project_id"),
                    models.projects.c.name,
                    models.projects.c.cors_origins,
                )
                .join(models.projects, models.projects.c.id == models.api_keys.c.project_id)
                .where(models.api_keys.c.lookup == key[:_LOOKUP_LENGTH])
            ).first()
        expected = row.key_hash if row is not None else hash_key("")
        matches = hmac.compare_digest(hash_key(key), expected)
        if row is None or not matches or row.kind != kind:
            raise AuthError(
                "the key is unknown: check it, or create one with `closedloop projects`"
            )
        if utc(row.revoked_at) is not None:
            raise AuthError("the key was revoked: use the project's current key")
        return ProjectKey(
            project_id=row.project_id,
            project_name=row.name,
            kind=kind,
            key_id=row.id,
            cors_origins=tuple(json.loads(row.cors_origins)),
        )


def _check_origins(origins: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for origin in origins:
        cleaned = origin.strip().rstrip("/")
        if not _ORIGIN.match(cleaned):
            raise ConfigError(
                f"origin {origin!r} is invalid: use scheme://host[:port] such as "
                "https://app.example.com"
            )
        out.append(cleaned)
    return tuple(out)
