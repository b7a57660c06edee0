"""Request dependencies: the runtime, the caller's key, capacity checks."""

from __future__ import annotations

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from closedloop.errors import AuthError, QueueFull
from closedloop.runtime import Runtime
from closedloop.types import ProjectKey

#: The dashboard's session cookie: the API accepts a signed-in session in place of a key.
SESSION_COOKIE = "closedloop_session"

#: The pattern of a text path parameter: no NUL character (PostgreSQL text cannot hold one).
NO_NUL = r"^[^\x00]*$"

__all__ = ["NO_NUL", "get_runtime", "is_not_at_capacity", "require_key", "require_secret_key"]


def get_runtime(request: Request) -> Runtime:
    """The process runtime, set by the app's lifespan."""
    runtime: Runtime = request.app.state.runtime
    return runtime


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError("send `Authorization: Bearer <key>` with a project key")
    return token.strip()


async def require_key(request: Request) -> ProjectKey:
    """The verified key of the request (public or secret), or the project access of a
    signed-in dashboard session (:func:`closedloop.ui.session.api_session_key`).

    A cached key costs no thread hop; an uncached one is looked up in the thread pool, so the
    event loop never waits on the database.
    """
    runtime = get_runtime(request)
    if "authorization" not in request.headers and SESSION_COOKIE in request.cookies:
        from closedloop.ui.session import api_session_key  # the dashboard's sign-in

        return await api_session_key(request)
    token = _bearer(request)
    cached = runtime.keys.cached(token)
    if cached is not None:
        return cached
    return await run_in_threadpool(runtime.verify, token)


async def require_secret_key(request: Request) -> ProjectKey:
    """The verified secret key of the request; a public key may not read."""
    key = await require_key(request)
    if key.kind != "secret":
        raise AuthError(
            "this endpoint needs the project's secret key; the public key may only send "
            "feedback and signals"
        )
    return key


async def is_not_at_capacity(request: Request) -> None:
    """Refuse before the body is read or the database touched when the write queue is full.

    ``async`` because it only reads a counter: FastAPI runs a plain ``def`` dependency in its
    thread pool, a thread hop per request that costs throughput under load.
    """
    if get_runtime(request).committer.at_capacity:
        raise QueueFull("the write queue is full; retry after the Retry-After delay")
