"""The FastAPI application: ingest, read and operations routes around one :class:`Runtime`."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl

import sqlalchemy.exc as sa_exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from closedloop import __version__
from closedloop.errors import (
    AuthError,
    ConfigError,
    ContractError,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    QueueFull,
    RateLimited,
    StorageError,
    StorageUnavailable,
)
from closedloop.ingest.body import UnsupportedMediaType
from closedloop.ingest.cors import ProjectCors
from closedloop.ingest.problems import problem
from closedloop.ingest.routes import (
    analysis,
    browser,
    events,
    exports,
    knowledge,
    ops,
    privacy,
    prompts,
    query,
    read,
    review,
    rules,
    search,
    storage,
    webhooks,
)
from closedloop.ingest.routes import otlp as otlp_routes
from closedloop.runtime import Runtime
from closedloop.settings import Settings, get_settings
from closedloop.ui import app as ui

__all__ = ["create_app"]


class _NoNul:
    """Pure ASGI middleware: a NUL character in a query parameter answers 400 naming it
    (PostgreSQL text cannot hold one; every route would otherwise fail on it). Path
    parameters refuse it by their pattern (:data:`closedloop.ingest.deps.NO_NUL`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            field = _nul_field(scope)
            if field is not None:
                answer = problem(
                    400,
                    "Bad request",
                    f"{field} contains a NUL character (%00); remove it",
                    field=field,
                )
                await answer(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _nul_field(scope: Scope) -> str | None:
    """The query parameter holding a NUL character, if any."""
    query = scope.get("query_string", b"")
    if b"%00" not in query.lower() and b"\x00" not in query:
        return None
    for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if "\x00" in name or "\x00" in value:
            return name.replace("\x00", "") or "query"
    return "query"


class _Timing:
    """Pure ASGI middleware: request latency and count by route template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            runtime: Runtime | None = getattr(scope["app"].state, "runtime", None)
            if runtime is not None:
                runtime.metrics.latency.labels(route=path).observe(time.perf_counter() - start)
                runtime.metrics.requests.labels(route=path, status=str(status)).inc()


def _ui_or(request: Request, status: int, title: str, detail: str, api: Response) -> Response:
    """The dashboard's HTML error page for a ``/ui`` request, else the API's answer."""
    from closedloop.ui.app import error_page, is_ui

    return error_page(request, status, title, detail) if is_ui(request) else api


def _handlers(app: FastAPI) -> None:
    @app.exception_handler(UnsupportedMediaType)
    async def _media(_: Request, exc: UnsupportedMediaType) -> Response:
        return problem(415, "Unsupported media type", f"{exc}", field=exc.field)

    @app.exception_handler(ContractError)
    async def _contract(request: Request, exc: ContractError) -> Response:
        api = problem(400, "Bad request", f"{exc}", field=exc.field or None)
        return _ui_or(request, 400, "Bad request", str(exc), api)

    @app.exception_handler(ConfigError)
    async def _config(request: Request, exc: ConfigError) -> Response:
        api = problem(400, "Bad request", str(exc), field=getattr(exc, "field", None))
        return _ui_or(request, 400, "Bad request", str(exc), api)

    @app.exception_handler(AuthError)
    async def _auth(request: Request, exc: AuthError) -> Response:
        api = problem(
            401,
            "Unauthorized",
            str(exc),
            field="authorization",
            headers={"www-authenticate": "Bearer"},
        )
        return _ui_or(request, 401, "Unauthorized", str(exc), api)

    @app.exception_handler(Forbidden)
    async def _forbidden(request: Request, exc: Forbidden) -> Response:
        api = problem(403, "Forbidden", str(exc))
        return _ui_or(request, 403, "Not allowed", str(exc), api)

    @app.exception_handler(RateLimited)
    async def _rate_limited(request: Request, exc: RateLimited) -> Response:
        retry = {"retry-after": str(max(1, round(exc.retry_after)))}
        return problem(429, "Too many requests", str(exc), headers=retry)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return _ui_or(request, 404, "Not found", str(exc), problem(404, "Not found", str(exc)))

    @app.exception_handler(PayloadTooLarge)
    async def _too_large(_: Request, exc: PayloadTooLarge) -> Response:
        return problem(413, "Payload too large", str(exc), field=exc.field)

    @app.exception_handler(QueueFull)
    async def _queue_full(_: Request, exc: QueueFull) -> Response:
        return problem(
            429,
            "Too many requests",
            str(exc),
            headers={"retry-after": str(max(1, round(exc.retry_after)))},
        )

    @app.exception_handler(StorageUnavailable)
    async def _unavailable(_: Request, exc: StorageUnavailable) -> Response:
        return problem(
            503,
            "Service unavailable",
            str(exc),
            headers={"retry-after": str(max(1, round(exc.retry_after)))},
        )

    @app.exception_handler(sa_exc.OperationalError)
    async def _db_down(_: Request, exc: sa_exc.OperationalError) -> Response:
        return problem(
            503,
            "Service unavailable",
            "the database cannot be reached; retry after the Retry-After delay",
            headers={"retry-after": "5"},
        )

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> Response:
        return problem(
            503,
            "Service unavailable",
            f"{exc}; nothing of this batch was stored, retry it",
            headers={"retry-after": "5"},
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ())]
        if loc and loc[0] in ("query", "path", "body", "header"):  # where, not which field
            loc = loc[1:]
        detail = f"{first.get('msg', 'invalid value')}; fix the parameter and retry"
        field = ".".join(loc) or None
        api = problem(400, "Bad request", detail, field=field)
        return _ui_or(request, 400, "Bad request", f"{field}: {detail}", api)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        """A bug: the dashboard shows its own error page (with its navigation and security
        headers); the API answers as Starlette does. The server logs the traceback."""
        from starlette.responses import PlainTextResponse

        plain = PlainTextResponse("Internal Server Error", status_code=500)
        detail = "The server failed on this page (the error is logged). Reload, or go back."
        return _ui_or(request, 500, "Something went wrong", detail, plain)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        titles = {404: "Not found", 405: "Method not allowed", 409: "Conflict"}
        title = titles.get(exc.status_code, "Error")
        api = problem(exc.status_code, title, str(exc.detail), headers=dict(exc.headers or {}))
        return _ui_or(request, exc.status_code, title, str(exc.detail), api)


def _openapi(app: FastAPI) -> dict[str, Any]:
    """OpenAPI with the batch body documented: the route decodes raw bytes with msgspec."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
    body_schema, components = events.batch_schema_components()
    schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
    post = schema["paths"]["/v1/events"]["post"]
    post["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": body_schema}},
    }
    post.pop("x-closedloop-batch", None)
    schema["components"]["schemas"]["PiiPolicy"] = privacy.policy_schema()
    schema["components"]["schemas"]["Retention"] = storage.retention_schema()
    _document_problems(schema)
    schema["components"]["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer", "description": "A project key."}
    }
    schema["security"] = [{"bearer": []}]
    app.openapi_schema = schema
    return schema


_PROBLEM_SCHEMA = {
    "type": "object",
    "description": "RFC 9457 problem details.",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string", "description": "What is wrong and how to fix it."},
        "field": {"type": "string", "description": "The offending field or parameter."},
    },
    "required": ["type", "title", "status", "detail"],
}


def _document_problems(schema: dict[str, Any]) -> None:
    """Document the error answers the app really gives: problem JSON for 400 (not FastAPI's
    422), 401 on keyed routes, 404 on object routes."""
    schema["components"]["schemas"]["Problem"] = _PROBLEM_SCHEMA
    problem_content = {
        "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
    }
    keyed = (
        "/v1/interactions",
        "/v1/feedback",
        "/v1/signals",
        "/v1/sessions",
        "/v1/enrichment",
        "/v1/project",
        "/v1/events",
    )
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            if operation.get("parameters") or "requestBody" in operation:
                responses.setdefault("400", {"description": "An invalid parameter or body."})
            if path.startswith(keyed):
                responses.setdefault("401", {"description": "Missing, unknown or revoked key."})
            if "{" in path:
                responses.setdefault("404", {"description": "No such object in this project."})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = problem_content


def create_app(
    settings: Settings | None = None,
    *,
    runtime: Runtime | None = None,
    load_plugins: bool = True,
) -> FastAPI:
    """The API application. Its lifespan starts the runtime and drains it on shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        rt = runtime or Runtime.build(settings or get_settings(), load_plugins=load_plugins)
        rt.start()
        app.state.runtime = rt
        try:
            yield
        finally:
            rt.stop()

    app = FastAPI(
        title="closedloop",
        version=__version__,
        description="Capture AI interactions and the feedback on them; see `/v1/schema`.",
        lifespan=lifespan,
    )
    app.add_middleware(ProjectCors, origins=lambda: app.state.runtime.keys.origins())
    app.add_middleware(_NoNul)
    app.add_middleware(_Timing)
    _handlers(app)
    app.include_router(events.router)
    app.include_router(read.router)
    app.include_router(privacy.router)
    app.include_router(storage.router)
    app.include_router(search.router)
    app.include_router(query.router)
    app.include_router(analysis.router)
    app.include_router(rules.router)
    app.include_router(webhooks.router)
    app.include_router(review.router)
    app.include_router(exports.router)
    app.include_router(prompts.router)
    app.include_router(knowledge.router)
    app.include_router(ops.router)
    app.include_router(otlp_routes.router)
    app.include_router(browser.router)
    ui.install(app)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app
