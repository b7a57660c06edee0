"""Hostile text for the dashboard tests: what an LLM, a user or an API caller could store.

Not a test module. Every payload must show on the pages as the literal text it is; none may
run, load, style the page or become an element.
"""

from __future__ import annotations

__all__ = ["FORBIDDEN", "PAYLOADS", "TEMPLATE", "joined"]

PAYLOADS: tuple[str, ...] = (
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "<svg onload=alert(1)>",
    "<svg><script>alert(1)</script></svg>",
    "javascript:alert(1)",
    '"><script>alert(1)</script>',
    "'-alert(1)-'",
    "</textarea><script>alert(1)</script>",
    "{{7*7}}",
    '<a href="javascript:alert(1)">x</a>',
    "<iframe src=javascript:alert(1)>",
    "<style>body{display:none}</style>",
)

#: The template-injection payload: a page must show it as is, never ``49``.
TEMPLATE = "{{7*7}}"

#: Selectors no page may match: what the payloads would create if they were parsed as HTML.
FORBIDDEN: tuple[str, ...] = (
    "img[src='x']",
    "[onerror]",
    "[onload]",
    "iframe",
    "svg[onload]",
    "svg script",
    "script:not([src])",
    "a[href^='javascript:' i]",
    "body style",
)


def joined(separator: str = " | ") -> str:
    """Every payload in one string (for fields that hold one text)."""
    return separator.join(PAYLOADS)
