"""Session and user carried through the app with :mod:`contextvars`.

``with closedloop.context(session_id="s-1", user_id="u-1"):`` makes every event logged inside
the block (in this thread, or in the asyncio tasks it starts) carry those ids. Blocks nest;
inner values win. Each thread starts with an empty context, as threads do.

>>> with context(session_id="s-1"):
...     with context(user_id="u-1"):
...         current()
{'session_id': 's-1', 'user_id': 'u-1'}
>>> current()
{}
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

__all__ = ["context", "current"]

_CONTEXT: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "closedloop_context", default=()
)


def current() -> dict[str, str]:
    """The ids set by the enclosing :func:`context` blocks."""
    return dict(_CONTEXT.get())


@contextlib.contextmanager
def context(*, session_id: str | None = None, user_id: str | None = None) -> Iterator[None]:
    """Attach ``session_id`` and ``user_id`` to events logged inside the block."""
    values = current()
    if session_id is not None:
        values["session_id"] = session_id
    if user_id is not None:
        values["user_id"] = user_id
    previous = _CONTEXT.get()
    token = _CONTEXT.set(tuple(values.items()))
    try:
        yield
    finally:
        try:
            _CONTEXT.reset(token)
        except ValueError:  # left in another context (a generator resumed elsewhere)
            _CONTEXT.set(previous)
