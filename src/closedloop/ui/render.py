"""Templates and their filters: every page is rendered here, escaped by Jinja2's autoescape.

Untrusted text (inputs, outputs, comments, names) reaches the HTML only through ``{{ }}``;
data for a chart goes into a single-quoted ``data-`` attribute through ``|tojson`` (which
escapes ``<``, ``>``, ``&`` and ``'``), never into a script.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from jinja2 import Undefined
from starlette.responses import HTMLResponse

from closedloop import __version__
from closedloop.ui.session import Viewer

__all__ = ["NAV", "STATIC", "TEMPLATES", "render", "templates"]

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"

#: The navigation: (page key, label, path under /ui/p/<project>, the role it needs).
NAV: tuple[tuple[str, str, str, str], ...] = (
    ("overview", "Overview", "/", "viewer"),
    ("interactions", "Interactions", "/interactions", "viewer"),
    ("issues", "Issues", "/issues", "viewer"),
    ("review", "Review", "/review", "reviewer"),
    ("rules", "Rules & actions", "/rules", "viewer"),
    ("prompts", "Prompts", "/prompts", "viewer"),
    ("settings", "Settings", "/settings", "admin"),
)


def _as_utc(value: dt.datetime | str | None) -> dt.datetime | str | None:
    """``value`` as an aware UTC datetime; text that is not ISO 8601 stays as it is."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def _when(value: dt.datetime | str | None) -> str:
    """``2026-12-06 14:03 UTC`` (or an em dash)."""
    at = _as_utc(value)
    if not isinstance(at, dt.datetime):
        return at or "—"
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _ago(value: dt.datetime | str | None) -> str:
    """``3 min ago``, ``2 h ago``, ``5 d ago``."""
    at = _as_utc(value)
    if not isinstance(at, dt.datetime):
        return at or "—"
    seconds = (dt.datetime.now(dt.UTC) - at).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit} ago"
    return "just now"


def _missing(value: object) -> bool:
    """``None``, NaN, or a name the template's data does not hold."""
    return (
        value is None
        or isinstance(value, Undefined)
        or (isinstance(value, float) and math.isnan(value))
    )


def _pct(value: float | None, digits: int = 1) -> str:
    """``62.5 %`` (or an em dash)."""
    if value is None or _missing(value):
        return "—"
    return f"{100 * value:.{digits}f} %"


def _num(value: float | int | None, digits: int = 3) -> str:
    """A number with thousands separators, floats to ``digits`` places."""
    if value is None or _missing(value):
        return "—"
    if isinstance(value, int) or float(value).is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"
    return f"{value:.{digits}f}"


def _signed(value: float | None, digits: int = 3) -> str:
    """``+0.046`` / ``−0.012``."""
    if value is None or _missing(value):
        return "—"
    return f"{value:+.{digits}f}".replace("-", "−")


def _build() -> Jinja2Templates:
    t = Jinja2Templates(directory=str(TEMPLATES))
    env = t.env
    env.autoescape = True  # every template, whatever its extension
    env.trim_blocks = True
    env.lstrip_blocks = True
    env.filters.update(when=_when, ago=_ago, pct=_pct, num=_num, signed=_signed)
    env.globals.update(NAV=NAV, version=__version__)
    return t


templates = _build()


def render(
    request: Request,
    name: str,
    viewer: Viewer | None,
    *,
    status: int = 200,
    active: str = "",
    title: str = "",
    headers: dict[str, str] | None = None,
    **context: Any,
) -> HTMLResponse:
    """Render template ``name`` for ``viewer`` (``None`` on the sign-in page)."""
    response: HTMLResponse = templates.TemplateResponse(
        request,
        name,
        {"v": viewer, "active": active, "title": title, **context},
        status_code=status,
        headers=headers,
    )
    return response
