"""The dashboard under ``/ui``: sign-in and sign-out, the project pages, static files, the
security headers every page carries, and HTML error pages.

>>> "script-src 'self'" in CSP and "unsafe" not in CSP
True
"""

from __future__ import annotations

import secrets
from typing import Annotated
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, FastAPI, Form, Request
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from closedloop.errors import AuthError, RateLimited
from closedloop.ingest.deps import get_runtime
from closedloop.store.users import SessionInfo
from closedloop.ui import pages
from closedloop.ui.render import STATIC, render
from closedloop.ui.session import (
    COOKIE,
    CSRF_FIELD,
    Viewer,
    check_csrf,
    current_session,
    login_throttle,
    session_lifetime,
    users,
    viewer_of,
)

__all__ = ["CSP", "PREFIX", "SecurityHeaders", "error_page", "install"]

PREFIX = "/ui"
#: No inline script or style, no eval, nothing from another origin, no framing.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; form-action 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
_LOGIN_CSRF = "closedloop_login_csrf"


class SecurityHeaders:
    """Pure ASGI middleware: the CSP and its companions on every ``/ui`` response; pages
    (not static files) are also never cached, since they show one user's data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not (path == PREFIX or path.startswith(PREFIX + "/")):
            await self.app(scope, receive, send)
            return
        static = path.startswith(PREFIX + "/static/")

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k not in _NAMES]
                headers.extend(_HEADERS)
                if not static:
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_wrapper)


_NAMES = frozenset(name for name, _ in _HEADERS) | {b"cache-control"}


def is_ui(request: Request) -> bool:
    """Whether the request is for a dashboard page (errors answer in HTML there)."""
    path = request.url.path
    return path == PREFIX or path.startswith(PREFIX + "/")


def error_page(request: Request, status: int, title: str, detail: str) -> Response:
    """An error as a page of the dashboard; a missing session redirects to the sign-in."""
    if status == 401:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(f"{PREFIX}/login?next={quote(target, safe='')}", status_code=303)
    session: SessionInfo | None = getattr(request.state, "ui_session", None)
    return render(
        request,
        "error.html",
        _error_viewer(request, session),
        status=status,
        title=title,
        detail=detail,
        signed_in=session is not None,
        headers={k.decode(): v.decode() for k, v in _HEADERS},  # also outside the middleware
    )


def _error_viewer(request: Request, session: SessionInfo | None) -> Viewer | None:
    """Whom an error page shows the navigation for: the signed-in user on the project of the
    path if theirs, else on their first project (so an error never strands them)."""
    if session is None or not session.user.memberships:
        return None
    parts = request.url.path.split("/")
    named = parts[3] if len(parts) > 3 and parts[2] == "p" else None
    mine = [m.project for m in session.user.memberships]
    return viewer_of(session, named if named in mine else mine[0])


def _next_target(value: str | None) -> str:
    """Where to go after signing in: only a path of this dashboard (no open redirect)."""
    if not value:
        return PREFIX + "/"
    parts = urlsplit(value)
    odd = "\\" in value or "//" in value or "/." in value
    if parts.scheme or parts.netloc or not value.startswith(PREFIX + "/") or odd:
        return PREFIX + "/"
    return value


router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("")
async def root_redirect() -> Response:
    """``/ui`` → ``/ui/``."""
    return RedirectResponse(PREFIX + "/", status_code=307)


@router.get("/")
async def home(request: Request) -> Response:
    """The first project's overview, or a page saying there is none yet."""
    session = await current_session(request)
    if session is None:
        return RedirectResponse(PREFIX + "/login", status_code=303)
    if session.user.memberships:
        first = session.user.memberships[0].project
        return RedirectResponse(f"{PREFIX}/p/{quote(first, safe='')}/", status_code=303)
    return render(request, "no_projects.html", None, title="No projects", session=session)


def _login_form(
    request: Request, *, error: str = "", email: str = "", next_: str = "", status: int = 200
) -> Response:
    token = secrets.token_urlsafe(32)
    response = render(
        request,
        "login.html",
        None,
        status=status,
        title="Sign in",
        error=error,
        email=email,
        next=_next_target(next_),
        login_csrf=token,
    )
    response.set_cookie(
        _LOGIN_CSRF,
        token,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path=PREFIX + "/login",
        max_age=3600,
    )
    return response


@router.get("/login")
async def login_page(request: Request, next: str = "") -> Response:
    """The sign-in form."""
    return _login_form(request, next_=next)


@router.post("/login")
async def login(
    request: Request,
    email: Annotated[str, Form(max_length=254)] = "",
    password: Annotated[str, Form(max_length=1024)] = "",
    csrf_token: Annotated[str, Form(alias=CSRF_FIELD, max_length=128)] = "",
    next: Annotated[str, Form(max_length=2048)] = "",
) -> Response:
    """Check the password (rate-limited per account and address), start a session."""
    expected = request.cookies.get(_LOGIN_CSRF, "")
    if not expected or not secrets.compare_digest(expected.encode(), csrf_token.encode()):
        return _login_form(
            request,
            error="The form expired; sign in again.",
            email=email,
            next_=next,
            status=403,
        )
    if "\x00" in email or "\x00" in password:  # no account holds one (nor may PostgreSQL)
        wrong = "The email or the password is wrong."
        return _login_form(request, error=wrong, next_=next, status=401)
    runtime = get_runtime(request)
    throttle = login_throttle(runtime)
    address = request.client.host if request.client else None
    try:
        await run_in_threadpool(throttle.check, email, address)
        user = await run_in_threadpool(users(runtime).authenticate, email, password)
    except RateLimited as exc:
        response = _login_form(
            request,
            error="Too many failed sign-ins. Wait a few minutes, then try again.",
            email=email,
            next_=next,
            status=429,
        )
        response.headers["retry-after"] = str(max(1, round(exc.retry_after)))
        return response
    except AuthError as exc:
        await run_in_threadpool(throttle.failed, email, address)
        message = str(exc)
        error = f"{message[:1].upper()}{message[1:]}."
        return _login_form(request, error=error, email=email, next_=next, status=401)
    await run_in_threadpool(throttle.succeeded, email)
    token, _ = await run_in_threadpool(
        users(runtime).start_session, user, lifetime=session_lifetime(runtime)
    )
    response = RedirectResponse(_next_target(next), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        path="/",
        max_age=int(session_lifetime(runtime).total_seconds()),
    )
    response.delete_cookie(_LOGIN_CSRF, path=PREFIX + "/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session (with its CSRF token, so no other site can sign a user out)."""
    session = await current_session(request)
    response = RedirectResponse(PREFIX + "/login", status_code=303)
    if session is not None:
        await check_csrf(request, session)
        await run_in_threadpool(users(get_runtime(request)).end_session, request.cookies[COOKIE])
    response.delete_cookie(COOKIE, path="/")
    return response


def install(app: FastAPI) -> None:
    """Add the dashboard to ``app``: routes, static files and security headers."""
    app.include_router(router)
    for page in pages.ROUTERS:
        app.include_router(page, prefix=PREFIX, include_in_schema=False)
    app.mount(PREFIX + "/static", StaticFiles(directory=STATIC), name="ui-static")
    app.add_middleware(SecurityHeaders)
