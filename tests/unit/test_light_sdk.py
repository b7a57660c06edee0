"""The plain install is the light SDK: importing it pulls in no server dependency."""

from __future__ import annotations

import subprocess
import sys

SERVER_ONLY = ("fastapi", "sqlalchemy", "uvicorn", "typer", "alembic", "psycopg", "pydantic")


def test_importing_closedloop_loads_no_server_dependency() -> None:
    code = (
        "import sys, closedloop, closedloop.sdk.envelope, closedloop.events\n"
        f"print(','.join(m for m in {SERVER_ONLY!r} if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == ""


def test_the_light_sdk_builds_events_the_server_contract_accepts() -> None:
    import msgspec

    import closedloop

    event = closedloop.make_event("signal", {"interaction_id": "i-1", "kind": "copy"})
    decoded = closedloop.decode_event(msgspec.json.encode(event))
    assert decoded.id == event["id"]
    assert decoded.body.kind == "copy"
