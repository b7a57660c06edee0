"""The dashboard's pages, one module each; :data:`ROUTERS` is what
:func:`closedloop.ui.app.install` mounts under ``/ui``.

Every project page lives under ``/ui/p/{project}/...`` and takes its
:class:`~closedloop.ui.session.Viewer` from a dependency of :mod:`closedloop.ui.session`.
"""

from __future__ import annotations

from fastapi import APIRouter

from closedloop.ui.pages import (
    interactions,
    issues,
    overview,
    prompts,
    review,
    rules,
    settings,
)

__all__ = ["ROUTERS"]

ROUTERS: list[APIRouter] = [
    overview.router,
    interactions.router,
    issues.router,
    review.router,
    rules.router,
    prompts.router,
    settings.router,
]
