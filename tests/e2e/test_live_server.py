"""A real ``closedloop serve`` process (uvicorn on a free port), on SQLite and PostgreSQL."""

from __future__ import annotations

import collections
import gzip
import json
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from closedloop import make_event, new_id
from tests.conftest import BACKENDS
from tests.e2e.conftest import MakeServer
from tests.e2e.server import (
    LiveServer,
    ProjectKeys,
    Sender,
    backend_server,
    interaction_batch,
    stored_ids,
)

EVENTS = "closedloop_events_{}_total"
BALANCE = ("received", "stored", "duplicate", "rejected", "dropped")


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LiveServer, ProjectKeys]]:
    """One server per backend for the tests that do not stop it."""
    with backend_server(request, tmp_path_factory, "live") as (server, keys):
        yield server, keys
        assert server.stopped_gracefully(server.stop()), server.log_tail()


def _client(server: LiveServer, keys: ProjectKeys) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers=keys.headers(), timeout=30)


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {
        name: after.get(EVENTS.format(name), 0.0) - before.get(EVENTS.format(name), 0.0)
        for name in BALANCE
    }


def _balanced(metrics: dict[str, float]) -> bool:
    received, *outcomes = (metrics.get(EVENTS.format(name), 0.0) for name in BALANCE)
    return received == sum(outcomes)


def test_a_batch_is_stored_and_read_back_with_its_feedback_and_signal(
    shared: tuple[LiveServer, ProjectKeys],
) -> None:
    server, keys = shared
    iid = new_id()
    events = [
        make_event("feedback", {"interaction_id": iid, "thumbs": -1}, id=f"f-{iid}"),
        make_event("interaction", {"input": "hi", "output": "hello", "user_id": "u-1"}, id=iid),
        make_event("signal", {"interaction_id": iid, "kind": "copy"}, id=f"s-{iid}"),
    ]
    with _client(server, keys) as client:
        r = client.post("/v1/events", json={"events": events})
        assert r.status_code == 200, r.text
        assert r.json()["stored"] == 3
        assert [x["status"] for x in r.json()["results"]] == ["stored"] * 3

        r = client.get(f"/v1/interactions/{iid}")
    assert r.status_code == 200, r.text
    got = r.json()
    assert (got["id"], got["input"], got["output"], got["user_id"]) == (iid, "hi", "hello", "u-1")
    assert [f["id"] for f in got["feedback"]] == [f"f-{iid}"]
    assert got["feedback"][0]["thumbs"] == -1
    assert [s["id"] for s in got["signals"]] == [f"s-{iid}"]


def test_a_batch_sent_again_is_answered_207_with_every_event_duplicate(
    shared: tuple[LiveServer, ProjectKeys],
) -> None:
    server, keys = shared
    batch = interaction_batch(20)
    with _client(server, keys) as client:
        first = client.post("/v1/events", json={"events": batch})
        again = client.post("/v1/events", json={"events": batch})
    assert first.status_code == 200, first.text
    assert again.status_code == 207, again.text
    assert again.json()["duplicate"] == 20
    assert {x["status"] for x in again.json()["results"]} == {"duplicate"}
    rows, ledger = stored_ids(server.database_url)
    assert all(rows[e["id"]] == ledger[e["id"]] == 1 for e in batch)


def test_a_gzipped_batch_is_stored_and_read_back(shared: tuple[LiveServer, ProjectKeys]) -> None:
    server, keys = shared
    batch = interaction_batch(200, tag="gzip")
    raw = json.dumps({"events": batch}).encode()
    body = gzip.compress(raw)
    assert len(body) < len(raw)
    with _client(server, keys) as client:
        r = client.post(
            "/v1/events",
            content=body,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["stored"] == 200
        got = client.get(f"/v1/interactions/{batch[-1]['id']}")
    assert got.status_code == 200
    assert got.json()["tags"] == ["gzip"]


def test_a_truncated_gzip_body_is_refused_and_nothing_is_stored(
    shared: tuple[LiveServer, ProjectKeys],
) -> None:
    server, keys = shared
    batch = interaction_batch(10)
    body = gzip.compress(json.dumps({"events": batch}).encode())[:-12]
    with _client(server, keys) as client:
        r = client.post(
            "/v1/events",
            content=body,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
    assert r.status_code == 400, r.text
    rows, _ = stored_ids(server.database_url)
    assert not any(rows[e["id"]] for e in batch)


def test_liveness_and_readiness_answer(shared: tuple[LiveServer, ProjectKeys]) -> None:
    server, _ = shared
    healthz = httpx.get(f"{server.url}/healthz", timeout=10)
    readyz = httpx.get(f"{server.url}/readyz", timeout=10)
    assert (healthz.status_code, healthz.json()) == (200, {"status": "ok"})
    assert (readyz.status_code, readyz.json()) == (200, {"status": "ready"})


def test_metrics_count_each_outcome_and_the_counters_balance(
    shared: tuple[LiveServer, ProjectKeys],
) -> None:
    server, keys = shared
    iid = new_id()
    events = [
        make_event("interaction", {"input": "q", "output": "a"}, id=iid),
        make_event("interaction", {"input": "q", "output": "a"}, id=iid),  # in-batch duplicate
        make_event("feedback", {"interaction_id": iid, "thumbs": 3}),  # rejected
        make_event("feedback", {"interaction_id": iid, "rating": 4}),
    ]
    before = server.metrics()
    with _client(server, keys) as client:
        r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 207, r.text
    assert [x["status"] for x in r.json()["results"]] == [
        "stored",
        "duplicate",
        "rejected",
        "stored",
    ]
    assert r.json()["results"][2]["error"]["field"] == "body.thumbs"
    after = server.metrics()

    assert _delta(after, before) == {
        "received": 4,
        "stored": 2,
        "duplicate": 1,
        "rejected": 1,
        "dropped": 0,
    }
    assert _balanced(after), after
    assert after["closedloop_write_queue_depth"] == 0
    assert after["closedloop_http_requests_total"] >= 1
    assert after["closedloop_http_request_duration_seconds_count"] >= 1


@pytest.mark.slow
def test_sigterm_drains_and_every_acknowledged_event_is_present_after_a_restart(
    live_server: LiveServer, acme: ProjectKeys
) -> None:
    stop = threading.Event()
    senders = [
        Sender(live_server.url, acme.headers(), batch_size=50, stop=stop, seed=i) for i in range(6)
    ]
    for sender in senders:
        sender.start()
    time.sleep(1.0)
    signalled = time.monotonic()
    live_server.send_signal(signal.SIGTERM)
    code = live_server.wait()
    stop.set()
    for sender in senders:
        sender.join(30)
    assert live_server.stopped_gracefully(code), live_server.log_tail()
    assert not any(s.is_alive() or s.error or s.failures for s in senders)
    acked = {i: st for s in senders for i, st in s.acked.items()}
    answered_after_signal = sum(t > signalled for s in senders for t in s.answered_at)
    assert acked and answered_after_signal > 0, "no request in flight was drained"

    live_server.start()
    rows, ledger = stored_ids(live_server.database_url)
    missing = [i for i in acked if rows[i] != 1 or ledger[i] != 1]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged events are missing"
    # Drained, not cut: every request the server took in was answered before it exited.
    assert set(rows) == set(ledger) == set(acked)
    with httpx.Client(base_url=live_server.url, headers=acme.headers(), timeout=30) as client:
        last = max(acked)  # UUIDv7: the latest acknowledged id
        assert client.get(f"/v1/interactions/{last}").status_code == 200

    # The SDK re-sends what was not acknowledged: afterwards every event is there once.
    unacked = [b for s in senders for b in s.unacked]
    resender = Sender(live_server.url, acme.headers(), batches=unacked)
    resender.run()
    assert resender.error is None and not resender.failures and not resender.unacked
    sent = set().union(*(s.sent_ids for s in senders))
    rows, ledger = stored_ids(live_server.database_url)
    assert set(rows) == set(ledger) == sent
    assert set(rows.values()) == set(ledger.values()) == {1}


@pytest.mark.slow
def test_an_overloaded_server_answers_429_with_retry_after_and_loses_nothing(
    live_servers: MakeServer, database_url: str
) -> None:
    limit, batch_size = 100, 50
    server = live_servers(database_url, env={"CLOSEDLOOP_WRITE_QUEUE_EVENTS": str(limit)})
    keys = server.create_project("acme")
    server.start()
    deadline = time.monotonic() + 90
    senders = [
        Sender(
            server.url,
            keys.headers(),
            batch_size=batch_size,
            max_batches=8,
            deadline=deadline,
            retry_pause=(0.0, 0.02),
            seed=i,
        )
        for i in range(16)
    ]
    for sender in senders:
        sender.start()
    depths = []
    while any(s.is_alive() for s in senders):
        depths.append(server.metrics()["closedloop_write_queue_depth"])
        time.sleep(0.02)
    for sender in senders:
        sender.join()

    assert not any(s.error or s.failures or s.unacked for s in senders)
    refused: collections.Counter[int] = collections.Counter()
    for sender in senders:
        refused.update(sender.refused)
    retry_after = [v for s in senders for v in s.retry_after]
    assert refused[429] > 0, "the tiny write queue never filled"
    assert refused[503] == 0
    assert all(v is not None and v.isdigit() and int(v) >= 1 for v in retry_after)
    assert max(depths) <= limit, "the write queue grew past its bound"

    sent = set().union(*(s.sent_ids for s in senders))
    acked = {i for s in senders for i in s.acked}
    assert len(sent) == 16 * 8 * batch_size
    assert acked == sent
    rows, ledger = stored_ids(server.database_url)
    assert set(rows) == set(ledger) == sent
    assert set(rows.values()) == set(ledger.values()) == {1}

    metrics = server.metrics()
    assert metrics[EVENTS.format("stored")] == len(sent)
    assert metrics.get(EVENTS.format("duplicate"), 0) == 0
    assert _balanced(metrics), metrics
    assert server.stopped_gracefully(server.stop()), server.log_tail()
