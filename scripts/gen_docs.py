"""Regenerate docs/event.schema.json from the contract: `python scripts/gen_docs.py`.

A test fails when the checked-in file differs from what this script writes.
"""

from __future__ import annotations

import json
from pathlib import Path

from closedloop.events import event_json_schema

ROOT = Path(__file__).resolve().parent.parent


def render_schema() -> str:
    """The JSON Schema document as checked in."""
    return json.dumps(event_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    (ROOT / "docs" / "event.schema.json").write_text(render_schema())
