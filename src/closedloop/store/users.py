"""Dashboard users, their roles per project, sign-in sessions and the login rate limit.

Passwords are hashed with argon2id (``argon2-cffi``, its default parameters: RFC 9106's
second recommended option). A session is a random 256-bit token: the browser holds it in an
HttpOnly cookie, the store only its SHA-256 (a fast hash is right for a high-entropy token).
Each session carries its own CSRF token, sent back by every state-changing request.

>>> Role.ADMIN.allows(Role.REVIEWER), Role.VIEWER.allows(Role.REVIEWER)
(True, False)
"""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy.engine import Engine

from closedloop.errors import AuthError, ConfigError, NotFound, RateLimited
from closedloop.store import models
from closedloop.store.db import utc, utcnow

__all__ = [
    "MIN_PASSWORD",
    "LoginThrottle",
    "Membership",
    "Role",
    "SessionInfo",
    "User",
    "Users",
]

MIN_PASSWORD = 10
# At most 128 characters in all: the address names the reviewer of an answer (128 at most).
_EMAIL = re.compile(r"^(?=.{3,128}$)[^@\s\x00-\x1f\x7f]{1,64}@[^@\s\x00-\x1f\x7f]{1,127}$")
_HASHER = PasswordHasher()
# Verified against when the account does not exist, so a wrong address costs what a wrong
# password costs (no timing oracle for which accounts exist).
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class Role(enum.StrEnum):
    """A user's role in one project: each allows what the ones below it allow."""

    VIEWER = "viewer"  # reads every page of the project
    REVIEWER = "reviewer"  # also works the review queue
    ADMIN = "admin"  # also changes rules, prompts, webhooks, keys and settings

    @property
    def rank(self) -> int:
        """0 for viewer, 1 for reviewer, 2 for admin."""
        return list(Role).index(self)

    def allows(self, needed: Role) -> bool:
        """Whether this role may do what ``needed`` may."""
        return self.rank >= needed.rank

    @classmethod
    def parse(cls, value: str) -> Role:
        """The role named ``value``, or a :class:`ConfigError` naming the choices."""
        try:
            return cls(value.strip().lower())
        except ValueError:
            choices = ", ".join(r.value for r in cls)
            raise ConfigError(
                f"role {value!r} is unknown; use one of {choices}", field="role"
            ) from None


@dataclass(frozen=True, kw_only=True)
class Membership:
    """A user's role in one project."""

    project_id: int
    project: str
    role: Role


@dataclass(frozen=True, kw_only=True)
class User:
    """A dashboard account, with its memberships (by project name)."""

    id: int
    email: str
    disabled: bool
    memberships: tuple[Membership, ...] = ()

    def role_in(self, project: str) -> Role | None:
        """The user's role in ``project``, or ``None`` when not a member."""
        for m in self.memberships:
            if m.project == project:
                return m.role
        return None


@dataclass(frozen=True, kw_only=True)
class SessionInfo:
    """A live sign-in session: its user and the CSRF token its forms must send back."""

    id: int
    user: User
    csrf: str
    expires_at: dt.datetime

    def csrf_ok(self, sent: str | None) -> bool:
        """Whether ``sent`` is this session's CSRF token (compared in constant time)."""
        # as bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500)
        return bool(sent) and hmac.compare_digest(str(sent).encode(), self.csrf.encode())


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def normalize_email(email: str) -> str:
    """The stored form of an address: trimmed and lower-cased; a :class:`ConfigError` when
    it is not an address."""
    value = email.strip().lower()
    if not _EMAIL.match(value):
        raise ConfigError(f"{email!r} is not an email address; use name@host", field="email")
    return value


def check_password(password: str) -> None:
    """Refuse a password too short to resist guessing."""
    if len(password) < MIN_PASSWORD:
        raise ConfigError(
            f"the password is {len(password)} characters; use at least {MIN_PASSWORD}",
            field="password",
        )


class Users:
    """Accounts, memberships and sessions in the hot store."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # -- accounts --------------------------------------------------------------------------

    def create(self, email: str, password: str) -> User:
        """Create an account; a :class:`ConfigError` when the address is taken."""
        address = normalize_email(email)
        check_password(password)
        hashed = _HASHER.hash(password)
        taken = ConfigError(
            f"a user {address!r} exists already; set their role with `closedloop users grant`",
            field="email",
        )
        try:
            with self.engine.begin() as conn:
                if conn.execute(
                    sa.select(models.users.c.id).where(models.users.c.email == address)
                ).first():
                    raise taken
                user_id = conn.execute(
                    models.users.insert()
                    .values(email=address, password_hash=hashed, created_at=utcnow())
                    .returning(models.users.c.id)
                ).scalar_one()
        except sa.exc.IntegrityError:  # created at the same moment by another process
            raise taken from None
        return User(id=user_id, email=address, disabled=False)

    def get(self, email: str) -> User:
        """The account ``email`` with its memberships."""
        address = email.strip().lower()
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(models.users).where(models.users.c.email == address)
            ).first()
            if row is None:
                raise NotFound(f"no user {email!r}; list them with `closedloop users list`")
            return self._user(conn, row)

    def by_id(self, user_id: int) -> User:
        """The account with id ``user_id``."""
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(models.users).where(models.users.c.id == user_id)).first()
            if row is None:
                raise NotFound(f"no user with id {user_id}")
            return self._user(conn, row)

    def all(self) -> list[User]:
        """Every account, by address."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(models.users).order_by(models.users.c.email)).all()
            return [self._user(conn, r) for r in rows]

    def members(self, project_id: int) -> list[tuple[User, Role]]:
        """The accounts with a role in the project, by address."""
        u, m = models.users, models.memberships
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(u, m.c.role)
                .join(m, m.c.user_id == u.c.id)
                .where(m.c.project_id == project_id)
                .order_by(u.c.email)
            ).all()
        return [
            (User(id=r.id, email=r.email, disabled=r.disabled_at is not None), Role(r.role))
            for r in rows
        ]

    @staticmethod
    def _user(conn: sa.Connection, row: sa.Row[tuple[object, ...]]) -> User:
        m, p = models.memberships, models.projects
        rows = conn.execute(
            sa.select(m.c.project_id, p.c.name, m.c.role)
            .join(p, p.c.id == m.c.project_id)
            .where(m.c.user_id == row.id)
            .order_by(p.c.name)
        ).all()
        return User(
            id=row.id,
            email=row.email,
            disabled=row.disabled_at is not None,
            memberships=tuple(
                Membership(project_id=r.project_id, project=r.name, role=Role(r.role)) for r in rows
            ),
        )

    def grant(self, email: str, project_id: int, role: Role) -> None:
        """Give ``email`` the role ``role`` in the project (replacing any other role there)."""
        user = self.get(email)
        with self.engine.begin() as conn:
            m = models.memberships
            done = conn.execute(
                m.update()
                .where(m.c.user_id == user.id, m.c.project_id == project_id)
                .values(role=role.value)
            ).rowcount
            if not done:
                conn.execute(
                    m.insert().values(
                        user_id=user.id, project_id=project_id, role=role.value, created_at=utcnow()
                    )
                )

    def revoke(self, email: str, project_id: int) -> None:
        """Remove ``email`` from the project (their sessions lose it at once)."""
        user = self.get(email)
        m = models.memberships
        with self.engine.begin() as conn:
            done = conn.execute(
                m.delete().where(m.c.user_id == user.id, m.c.project_id == project_id)
            ).rowcount
        if not done:
            raise NotFound(f"{user.email!r} has no role in this project")

    def set_password(self, email: str, password: str) -> None:
        """Replace the password; every session of the account ends."""
        user = self.get(email)
        check_password(password)
        with self.engine.begin() as conn:
            conn.execute(
                models.users.update()
                .where(models.users.c.id == user.id)
                .values(password_hash=_HASHER.hash(password))
            )
            conn.execute(models.ui_sessions.delete().where(models.ui_sessions.c.user_id == user.id))

    def set_disabled(self, email: str, disabled: bool) -> None:
        """Disable (every session ends) or re-enable the account."""
        user = self.get(email)
        with self.engine.begin() as conn:
            conn.execute(
                models.users.update()
                .where(models.users.c.id == user.id)
                .values(disabled_at=utcnow() if disabled else None)
            )
            if disabled:
                conn.execute(
                    models.ui_sessions.delete().where(models.ui_sessions.c.user_id == user.id)
                )

    # -- sign-in ---------------------------------------------------------------------------

    def authenticate(self, email: str, password: str) -> User:
        """The account if ``password`` is its password; otherwise an :class:`AuthError` that
        does not say which part was wrong. Re-hashes when the hash parameters changed."""
        address = email.strip().lower()
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(models.users).where(models.users.c.email == address)
            ).first()
        stored = row.password_hash if row is not None else _DUMMY_HASH
        try:
            _HASHER.verify(stored, password)
            ok = row is not None
        except (VerificationError, InvalidHashError):
            ok = False
        if not ok or row is None:
            raise AuthError("the email or the password is wrong")
        if row.disabled_at is not None:
            raise AuthError("this account is disabled; ask an admin")
        if _HASHER.check_needs_rehash(stored):
            with self.engine.begin() as conn:
                conn.execute(
                    models.users.update()
                    .where(models.users.c.id == row.id)
                    .values(password_hash=_HASHER.hash(password))
                )
        return self.by_id(row.id)

    def start_session(self, user: User, *, lifetime: dt.timedelta) -> tuple[str, SessionInfo]:
        """A new session for ``user``: the cookie token (shown once) and the session."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = utcnow()
        expires = now + lifetime
        with self.engine.begin() as conn:
            conn.execute(
                models.ui_sessions.delete().where(models.ui_sessions.c.expires_at < now)
            )  # sweep: expired sessions are never read again
            session_id = conn.execute(
                models.ui_sessions.insert()
                .values(
                    token_hash=_token_hash(token),
                    user_id=user.id,
                    csrf=csrf,
                    created_at=now,
                    expires_at=expires,
                )
                .returning(models.ui_sessions.c.id)
            ).scalar_one()
        return token, SessionInfo(id=session_id, user=user, csrf=csrf, expires_at=expires)

    def session(self, token: str) -> SessionInfo | None:
        """The live session of a cookie token, or ``None`` (unknown, expired, or disabled)."""
        if not token or len(token) > 128:
            return None
        s, u = models.ui_sessions, models.users
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    s.c.id.label("session_id"),
                    s.c.csrf,
                    s.c.expires_at.label("session_expires_at"),
                    u,
                )
                .join(u, u.c.id == s.c.user_id)
                .where(s.c.token_hash == _token_hash(token))
            ).first()
            if (
                row is None
                or utc(row.session_expires_at) <= utcnow()
                or row.disabled_at is not None
            ):
                return None
            user = self._user(conn, row)  # row.id is the user's id (the session's is labelled)
        return SessionInfo(
            id=row.session_id, user=user, csrf=row.csrf, expires_at=utc(row.session_expires_at)
        )

    def end_session(self, token: str) -> None:
        """Sign out: the token no longer opens anything."""
        with self.engine.begin() as conn:
            conn.execute(
                models.ui_sessions.delete().where(
                    models.ui_sessions.c.token_hash == _token_hash(token)
                )
            )


class LoginThrottle:
    """At most ``limit`` failed sign-ins per account, and ``4 × limit`` per client address,
    in a fixed window of ``window`` seconds; kept in the hot store so it holds across worker
    processes and restarts. A success clears the account's count."""

    def __init__(self, engine: Engine, *, limit: int, window: float) -> None:
        self.engine = engine
        self.limit = limit
        self.window = dt.timedelta(seconds=window)

    def _buckets(self, email: str, address: str | None) -> list[tuple[str, int]]:
        out = [(f"email:{email.strip().lower()[:300]}", self.limit)]
        if address:
            out.append((f"addr:{address[:300]}", 4 * self.limit))
        return out

    def check(self, email: str, address: str | None) -> None:
        """Raise :class:`RateLimited` when the account or the address is over its limit."""
        now = utcnow()
        f = models.login_failures
        with self.engine.connect() as conn:
            for bucket, limit in self._buckets(email, address):
                row = conn.execute(sa.select(f).where(f.c.bucket == bucket)).first()
                if row is None:
                    continue
                ends = utc(row.window_start) + self.window
                if ends > now and row.failures >= limit:
                    raise RateLimited(
                        "too many failed sign-ins; wait before trying again",
                        retry_after=(ends - now).total_seconds(),
                    )

    def failed(self, email: str, address: str | None) -> None:
        """Count one failed sign-in against the account and the address."""
        now = utcnow()
        f = models.login_failures
        for bucket, _ in self._buckets(email, address):
            with self.engine.begin() as conn:
                row = conn.execute(sa.select(f).where(f.c.bucket == bucket)).first()
                if row is None:
                    try:
                        with conn.begin_nested():
                            conn.execute(
                                f.insert().values(bucket=bucket, window_start=now, failures=1)
                            )
                        continue
                    except sa.exc.IntegrityError:  # a concurrent failure inserted it first
                        pass
                elif utc(row.window_start) + self.window <= now:
                    conn.execute(
                        f.update().where(f.c.bucket == bucket).values(window_start=now, failures=1)
                    )
                    continue
                conn.execute(
                    f.update().where(f.c.bucket == bucket).values(failures=f.c.failures + 1)
                )

    def succeeded(self, email: str) -> None:
        """Clear the account's failures."""
        f = models.login_failures
        with self.engine.begin() as conn:
            conn.execute(f.delete().where(f.c.bucket == self._buckets(email, None)[0][0]))
