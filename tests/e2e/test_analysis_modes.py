"""The analysis job runs by itself in the worker of a real ``closedloop serve`` and of the SDK's
embedded mode: nothing but events sent, then issues, metrics and drift streams appear."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

import closedloop
from closedloop import make_event, new_id
from closedloop.settings import Settings
from closedloop.store import models
from closedloop.store.db import create_engine
from tests.e2e.conftest import MakeServer
from tests.e2e.test_enrichment_modes import wait_for


def test_the_server_worker_clusters_failing_questions_into_an_issue(
    live_servers: MakeServer, database_url: str
) -> None:
    server = live_servers(
        database_url,
        env={
            "CLOSEDLOOP_ANALYZE_INTERVAL_SECONDS": "0.5",
            "CLOSEDLOOP_EMBED_INTERVAL_SECONDS": "0.5",
        },
    )
    server.create_project("acme")
    server.start()
    keys = server.projects["acme"]
    events: list[dict[str, Any]] = []
    for k in range(5):
        iid = new_id()
        events.append(
            make_event(
                "interaction",
                {"input": f"my refund for order {k} never came", "output": "ok"},
                id=iid,
            )
        )
        events.append(make_event("feedback", {"interaction_id": iid, "thumbs": -1}, id=new_id()))
    with httpx.Client(base_url=server.url, headers=keys.headers(), timeout=10) as client:
        assert client.post("/v1/events", json={"events": events}).status_code == 200

        def issues() -> list[dict[str, Any]]:
            found: list[dict[str, Any]] = client.get("/v1/issues").json()["issues"]
            return found

        (issue,) = wait_for(issues, timeout=60)
        assert issue["size"] == 5 and "refund" in issue["keywords"]
        rows = client.get("/v1/metrics", params={"measure": "positive_rate"}).json()["rows"]
        assert rows == [
            {
                "segment": "all",
                "bucket": None,
                "measure": "positive_rate",
                "value": 0.0,
                "low": 0.0,
                "high": rows[0]["high"],
                "n": 5,
            }
        ]


def test_embedded_mode_feeds_the_drift_detectors_in_the_app_process(
    database_url: str, tmp_path: Path
) -> None:
    client = closedloop.Client(
        database_url=database_url,
        project="shop",
        embedded_settings={
            "data_dir": tmp_path / "data",
            "enrich_interval_seconds": 0.5,
            "analyze_interval_seconds": 0.5,
        },
    )
    try:
        for k in range(3):
            iid = client.log_interaction(
                input=f"question {k}", output="answer", model={"name": "bot", "version": "1"}
            )
            assert iid is not None
            client.feedback(iid, thumbs=1)
        assert client.flush(10).pending == 0
        engine = create_engine(database_url)
        try:

            def streams() -> list[Any]:
                with engine.connect() as conn:
                    return list(
                        conn.execute(
                            sa.select(
                                models.drift_streams.c.segment,
                                models.drift_streams.c.observations,
                            )
                        ).all()
                    )

            found = wait_for(lambda: len(streams()) == 2 and streams())
            assert sorted(found) == [("all", 3), ("model=bot@1", 3)]
        finally:
            engine.dispose()
        settings = Settings(
            data_dir=tmp_path / "data",
            database_url=database_url,
            _env_file=None,  # type: ignore[call-arg]
        )
        frame = closedloop.metrics("shop", by="model", settings=settings)  # type: ignore[attr-defined]
        volume = frame[frame.measure == "volume"]
        assert list(zip(volume.segment, volume.value, strict=True)) == [("bot@1", 3.0)]
    finally:
        client.close()
