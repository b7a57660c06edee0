"""Build event envelopes ``{id, type, timestamp, body}`` on the client side.

The client generates the id, so a retry is idempotent. UUIDv7 ids are time-ordered, which
keeps the store's index inserts at the right edge of the B-tree.

>>> event = make_event("feedback", {"interaction_id": "i-1", "thumbs": 1}, id="f-1",
...                    timestamp=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
>>> event["type"], event["timestamp"]
('feedback', '2026-01-01T00:00:00+00:00')
>>> uuid.UUID(new_id()).version
7
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from typing import Any, Literal

__all__ = ["make_event", "new_id"]


def new_id() -> str:
    """A new UUIDv7 (RFC 9562) as a string.

    Written by hand because :func:`uuid.uuid7` arrives only in Python 3.14.
    """
    uuid7 = getattr(uuid, "uuid7", None)
    if uuid7 is not None:  # pragma: no cover - Python >= 3.14
        return str(uuid7())
    ms = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")
    value = (ms & 0xFFFF_FFFF_FFFF) << 80
    value |= 0x7 << 76  # version
    value |= ((rand >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= rand & 0x3FFF_FFFF_FFFF_FFFF  # rand_b, 62 bits
    return str(uuid.UUID(int=value))


def make_event(
    type: Literal["interaction", "feedback", "signal"],
    body: dict[str, Any],
    *,
    id: str | None = None,
    timestamp: dt.datetime | None = None,
) -> dict[str, Any]:
    """An event envelope ready to be sent (JSON-serialisable)."""
    when = timestamp or dt.datetime.now(dt.UTC)
    return {"id": id or new_id(), "type": type, "timestamp": when.isoformat(), "body": body}
