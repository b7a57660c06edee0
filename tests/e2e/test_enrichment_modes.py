"""Enrichment runs in the worker of a real ``closedloop serve`` and of the SDK's embedded mode:
the same job, on SQLite and PostgreSQL, with nothing but the events sent."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

import closedloop
from closedloop import make_event, new_id
from closedloop.store import models
from closedloop.store.db import create_engine
from tests.e2e.server import LiveServer, ProjectKeys


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s")


def test_the_server_worker_joins_measures_and_estimates_quality(
    live_server: LiveServer, acme: ProjectKeys
) -> None:
    iid = new_id()
    events = [
        make_event("feedback", {"interaction_id": iid, "rating": 2}, id=new_id()),
        make_event(
            "interaction",
            {"input": "refund?", "output": "Refunds take 5 days.", "session_id": "s-1"},
            id=iid,
        ),
        make_event(
            "signal",
            {"interaction_id": iid, "kind": "edit", "text": "Refunds take 3 days."},
            id=new_id(),
        ),
    ]
    with httpx.Client(base_url=live_server.url, headers=acme.headers(), timeout=10) as client:
        assert client.post("/v1/events", json={"events": events}).status_code == 200

        def enriched() -> dict[str, Any] | None:
            got = client.get(f"/v1/interactions/{iid}").json()
            return got if got["quality"] is not None else None

        got = wait_for(enriched)
        assert got["quality"]["basis"] == "explicit" and got["quality"]["value"] == 0.25
        assert "edit_similarity" in {m["name"] for m in got["measures"]}
        assert got["feedback"][0]["join"]["state"] == "joined"
        session = client.get("/v1/sessions/s-1").json()
        assert session["turns"] == 1 and session["last_interaction_id"] == iid


def test_embedded_mode_runs_the_same_enrichment_in_the_app_process(
    database_url: str, tmp_path: Path
) -> None:
    client = closedloop.Client(
        database_url=database_url,
        project="shop",
        embedded_settings={"data_dir": tmp_path / "data", "enrich_interval_seconds": 0.5},
    )
    try:
        iid = client.log_interaction(
            input="my email is ana@example.org", output="Noted.", session_id="s-1"
        )
        assert iid is not None
        client.feedback(iid, thumbs=1)
        assert client.flush(10).pending == 0
        engine = create_engine(database_url)
        try:

            def row() -> Any:
                with engine.connect() as conn:
                    return conn.execute(
                        sa.select(models.interactions).where(
                            models.interactions.c.id == iid,
                            models.interactions.c.quality.is_not(None),
                        )
                    ).first()

            stored = wait_for(row)
            assert (stored.quality, stored.quality_basis) == (1.0, "explicit")
            assert "ana@example.org" not in stored.body and "<EMAIL>" in stored.body
        finally:
            engine.dispose()
    finally:
        client.close()
