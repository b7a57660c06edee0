"""Commands of the act stage (registered on the ``closedloop`` command by :mod:`cli`)."""

from __future__ import annotations

__all__: list[str] = []
