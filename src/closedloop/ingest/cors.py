"""CORS for browser capture: per-project origin allowlists on ``/v1/events``.

A preflight carries no key, so it is answered from the union of every project's origins
(cached); the POST itself is then checked against the key's own project (see the route).
Every answer to an allowed origin carries ``Access-Control-Allow-Origin``, errors included,
so a page can read a problem body and a 429's ``Retry-After``.

Written by hand because Starlette's ``CORSMiddleware`` takes one static origin list, and
ours lives per project in the database.
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from closedloop.ingest.problems import problem
from closedloop.types import ProjectKey

__all__ = ["ProjectCors", "origin_allowed", "refuse_origin"]

PATHS = frozenset({"/v1/events", "/v1/browser/events"})
ALLOW_HEADERS = "authorization, content-type, content-encoding"
EXPOSE_HEADERS = "retry-after"


def origin_allowed(origin: str, allowed: tuple[str, ...] | set[str] | frozenset[str]) -> bool:
    """Whether ``origin`` is in ``allowed`` (``*`` allows every origin).

    >>> origin_allowed("https://app.example.com/", ("https://app.example.com",))
    True
    >>> origin_allowed("https://evil.example", ("https://app.example.com",))
    False
    """
    return "*" in allowed or origin.rstrip("/") in allowed


def refuse_origin(request: Request, key: ProjectKey) -> Response | None:
    """A 403 problem when a public key comes from an origin its project does not allow.

    A request without ``Origin`` is not a browser's, and the allowlist does not apply.
    """
    origin = request.headers.get("origin")
    if origin is None or key.kind != "public" or origin_allowed(origin, key.cors_origins):
        return None
    return problem(
        403,
        "Origin not allowed",
        f"origin {origin!r} may not use this project's public key; add it with "
        "`closedloop projects origins NAME ORIGIN`",
        field="origin",
    )


class ProjectCors:
    """Pure ASGI middleware; ``origins`` returns the union of allowed origins (cached)."""

    def __init__(self, app: ASGIApp, origins: Callable[[], frozenset[str]]) -> None:
        self.app = app
        self.origins = origins

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        origin = Headers(scope=scope).get("origin")
        if origin is None and scope["method"] != "OPTIONS":
            await self.app(scope, receive, send)
            return
        # the union may need a database look-up: keep it off the event loop
        allowed = origin is not None and origin_allowed(
            origin, await run_in_threadpool(self.origins)
        )
        if scope["method"] == "OPTIONS":
            response = Response(status_code=204 if allowed else 403)
            if allowed and origin is not None:
                response.headers.update(
                    {
                        "access-control-allow-origin": origin,
                        "access-control-allow-methods": "POST",
                        "access-control-allow-headers": ALLOW_HEADERS,
                        "access-control-max-age": "600",
                    }
                )
            response.headers["vary"] = "Origin"
            await response(scope, receive, send)
            return
        if not allowed or origin is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["access-control-allow-origin"] = origin
                headers["access-control-expose-headers"] = EXPOSE_HEADERS
                headers.add_vary_header("Origin")
            await send(message)

        await self.app(scope, receive, send_with_cors)
