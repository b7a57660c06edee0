"""RFC 9457 problem details: every error body names the field and the fix."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

__all__ = ["problem"]

PROBLEM_JSON = "application/problem+json"


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """A ``application/problem+json`` response.

    >>> r = problem(413, "Payload too large", "split the batch", field="events")
    >>> r.status_code, r.media_type, r.body[:30]
    (413, 'application/problem+json', b'{"type":"urn:closedloop:proble')
    """
    slug = title.lower().replace(" ", "-")
    body: dict[str, Any] = {
        "type": f"urn:closedloop:problem:{slug}",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if field is not None:
        body["field"] = field
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)
