"""Who is signed in, and what they may do: the dashboard's dependencies, and the API's
acceptance of a signed-in session in place of a key.

A page route takes a :class:`Viewer` from :func:`viewer` (any role), :func:`reviewer_page`
or :func:`admin_page`; a state-changing route takes one from :func:`acting` with the role it
needs, which also checks the CSRF token (form field ``csrf_token`` or header
``X-CSRF-Token``) and that the request comes from the dashboard's own origin. A project the
user has no role in answers 404, as the API does across projects; a role too low answers 403.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Path, Request
from starlette.concurrency import run_in_threadpool

from closedloop.errors import AuthError, Forbidden, NotFound
from closedloop.ingest.deps import NO_NUL, SESSION_COOKIE, get_runtime
from closedloop.runtime import Runtime
from closedloop.store.users import LoginThrottle, Role, SessionInfo, User, Users
from closedloop.types import ProjectKey

__all__ = [
    "COOKIE",
    "CSRF_FIELD",
    "CSRF_HEADER",
    "PROJECT_HEADER",
    "SignInRequired",
    "Viewer",
    "acting",
    "admin_page",
    "api_session_key",
    "current_session",
    "login_throttle",
    "reviewer_page",
    "session_lifetime",
    "users",
    "viewer",
    "viewer_of",
]

COOKIE = SESSION_COOKIE
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
PROJECT_HEADER = "x-closedloop-project"
_SAFE = frozenset({"GET", "HEAD", "OPTIONS"})
# API writes a viewer may make: they only read.
_READ_POSTS = frozenset({"/v1/query", "/v1/knowledge/recall", "/v1/rules/check"})

ProjectName = Annotated[str, Path(max_length=64, pattern=NO_NUL)]


class SignInRequired(AuthError):
    """No live session: the page answers with a redirect to the sign-in form."""


@dataclass(frozen=True, kw_only=True)
class Viewer:
    """The signed-in user on one project's pages."""

    session: SessionInfo
    project_id: int
    project: str
    role: Role

    @property
    def user(self) -> User:
        """The account."""
        return self.session.user

    @property
    def email(self) -> str:
        """The account's address (who answered, promoted, rotated)."""
        return self.session.user.email

    @property
    def csrf(self) -> str:
        """The token every form of the page sends back."""
        return self.session.csrf

    def can(self, role: Role | str) -> bool:
        """Whether the viewer's role allows what ``role`` may do."""
        return self.role.allows(Role(role))


def users(runtime: Runtime) -> Users:
    """The account store of the runtime's database."""
    return Users(runtime.engine)


def login_throttle(runtime: Runtime) -> LoginThrottle:
    """The sign-in rate limit, from the settings."""
    s = runtime.settings
    return LoginThrottle(
        runtime.engine, limit=s.ui_login_attempts, window=s.ui_login_window_seconds
    )


def session_lifetime(runtime: Runtime) -> dt.timedelta:
    """How long a new sign-in lasts."""
    return dt.timedelta(hours=runtime.settings.ui_session_hours)


def _session(request: Request) -> SessionInfo | None:
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    return users(get_runtime(request)).session(token)


async def current_session(request: Request) -> SessionInfo | None:
    """The request's live session, if any (looked up once per request)."""
    if not hasattr(request.state, "ui_session"):
        request.state.ui_session = await run_in_threadpool(_session, request)
    found: SessionInfo | None = request.state.ui_session
    return found


def viewer_of(session: SessionInfo, project: str) -> Viewer:
    """The session's user on ``project``; 404 when they have no role there."""
    role = session.user.role_in(project)
    if role is None:  # as across projects in the API: not found, not "forbidden"
        raise NotFound(f"no project {project!r} among yours")
    member = next(m for m in session.user.memberships if m.project == project)
    return Viewer(session=session, project_id=member.project_id, project=project, role=role)


async def viewer(request: Request, project: ProjectName) -> Viewer:
    """The signed-in viewer of ``project`` (any role)."""
    session = await current_session(request)
    if session is None:
        raise SignInRequired("sign in to see this page")
    return viewer_of(session, project)


def _need(v: Viewer, role: Role) -> Viewer:
    if not v.role.allows(role):
        raise Forbidden(
            f"this needs the {role.value} role in {v.project!r}; you are {v.role.value}"
        )
    return v


async def reviewer_page(request: Request, project: ProjectName) -> Viewer:
    """A page for reviewers and admins."""
    return _need(await viewer(request, project), Role.REVIEWER)


async def admin_page(request: Request, project: ProjectName) -> Viewer:
    """A page for admins only."""
    return _need(await viewer(request, project), Role.ADMIN)


def _same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from this server's own pages: its ``Origin``
    (or, without one, its ``Referer``) names this host. A request with neither passes: the
    CSRF token is the check that holds; this one is defence in depth."""
    sent = request.headers.get("origin") or request.headers.get("referer")
    if not sent or sent == "null":
        return sent is None
    parts = urlsplit(sent)
    return parts.netloc == request.headers.get("host", request.url.netloc)


async def check_csrf(request: Request, session: SessionInfo) -> None:
    """Refuse a state-changing request without this session's CSRF token (403)."""
    if not _same_origin(request):
        raise Forbidden("this request comes from another site; send it from the dashboard")
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and "form" in request.headers.get("content-type", ""):
        form = await request.form()
        value = form.get(CSRF_FIELD)
        sent = value if isinstance(value, str) else None
    if not session.csrf_ok(sent):
        raise Forbidden(
            f"the CSRF token is missing or stale; reload the page and retry (send it as the "
            f"{CSRF_FIELD} form field or the X-CSRF-Token header)"
        )


def acting(needed: Role) -> Callable[[Request, str], Awaitable[Viewer]]:
    """A dependency for a state-changing page route: signed in, a role of at least
    ``needed`` in the project, and the session's CSRF token sent back."""

    async def dependency(request: Request, project: ProjectName) -> Viewer:
        v = await viewer(request, project)
        await check_csrf(request, v.session)
        return _need(v, needed)

    dependency.__name__ = f"acting_{needed.value}"
    return dependency


def _api_role(method: str, path: str) -> Role:
    if path == "/v1/webhooks" or path.startswith("/v1/webhooks/"):
        return Role.ADMIN  # an endpoint's URL may be a credential (Slack's are)
    if method in _SAFE or path in _READ_POSTS:
        return Role.VIEWER
    if path.startswith("/v1/review/"):
        return Role.REVIEWER
    return Role.ADMIN


async def api_session_key(request: Request) -> ProjectKey:
    """The project access of a signed-in session on the JSON API.

    The project is the ``X-Closedloop-Project`` header, or the user's only project. Reads
    need any role, the review queue a reviewer, every other write an admin; every write
    needs the CSRF token in ``X-CSRF-Token``.
    """
    session = await current_session(request)
    if session is None:
        raise AuthError(
            "the session has ended; sign in again, or send `Authorization: Bearer <key>`"
        )
    name = request.headers.get(PROJECT_HEADER)
    if name is None:
        projects = session.user.memberships
        if len(projects) != 1:
            raise AuthError(
                f"you have a role in {len(projects)} projects; name one in the "
                "X-Closedloop-Project header"
            )
        name = projects[0].project
    v = viewer_of(session, name)
    method = request.method.upper()
    if method not in _SAFE:
        await check_csrf(request, session)
    _need(v, _api_role(method, request.url.path))
    return ProjectKey(
        project_id=v.project_id,
        project_name=v.project,
        kind="secret",
        key_id=0,
        user=v.email,
        role=v.role.value,
    )
