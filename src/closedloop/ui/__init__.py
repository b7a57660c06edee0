"""The dashboard: server-rendered pages under ``/ui`` over the same stores the API reads.

Sign-in with roles per project (:mod:`closedloop.ui.session`), templates with autoescape
(:mod:`closedloop.ui.render`), one module per page (:mod:`closedloop.ui.pages`), charts drawn
by uPlot shipped inside the package, and a strict Content-Security-Policy on every page.
"""

from __future__ import annotations

__all__: list[str] = []
