"""Sparklines as inline SVG, drawn on the server: no script, and nothing in them but numbers
this module formats itself (the one text, the accessible label, is escaped)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from markupsafe import Markup, escape

__all__ = ["sparkline"]


def _points(values: Sequence[float], width: float, height: float, pad: float) -> list[str]:
    top = max(values) or 1.0
    step = (width - 2 * pad) / max(len(values) - 1, 1)
    return [
        f"{pad + k * step:.1f},{height - pad - (height - 2 * pad) * v / top:.1f}"
        for k, v in enumerate(values)
    ]


def sparkline(
    values: Sequence[float | int | None],
    *,
    width: int = 120,
    height: int = 28,
    label: str = "",
) -> Markup:
    """An SVG line of ``values`` (missing or negative values count as 0), scaled to its
    maximum, with the area under it and a dot on the last value.

    >>> svg = sparkline([0, 2, 1], label="<b>")
    >>> svg.startswith("<svg") and "&lt;b&gt;" in svg and "<b>" not in svg
    True
    >>> 'points="2.0,26.0 60.0,2.0 118.0,14.0"' in sparkline([0, 2, 1])
    True
    """
    clean = [
        max(float(v), 0.0) if v is not None and math.isfinite(float(v)) else 0.0 for v in values
    ] or [0.0]
    if len(clean) == 1:
        clean = clean * 2
    pad = 2.0
    points = _points(clean, width, height, pad)
    area = " ".join(
        [f"{pad:.1f},{height - pad:.1f}", *points, f"{width - pad:.1f},{height - pad:.1f}"]
    )
    last_x, last_y = points[-1].split(",")
    total = sum(clean)
    text = label or f"{total:.0f} in the period"
    return Markup(
        f'<svg class="sparkline" width="{int(width)}" height="{int(height)}" '
        f'viewBox="0 0 {int(width)} {int(height)}" role="img" aria-label="{escape(text)}">'
        f'<polygon class="spark-area" points="{area}"/>'
        f'<polyline class="spark-line" points="{" ".join(points)}"/>'
        f'<circle class="spark-dot" cx="{last_x}" cy="{last_y}" r="2"/>'
        "</svg>"
    )
