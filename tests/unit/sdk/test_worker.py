"""The background sender: batching, bounds, retries, final errors, the spool, shutdown."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from closedloop.sdk._spool import Spool
from closedloop.sdk._transport import HttpTransport, parse_retry_after
from closedloop.sdk._worker import BackgroundWorker, WorkerParams
from closedloop.sdk.client import Client
from tests.unit.sdk.helpers import Recorder


def make_client(recorder: Recorder, **kwargs: Any) -> Client:
    kwargs.setdefault("flush_interval", 0.05)
    return Client("cl_sk_test", "http://closedloop.test", transport=recorder.transport(), **kwargs)


def test_events_are_batched_by_count_and_each_arrives_once() -> None:
    recorder = Recorder()
    with make_client(recorder, batch_events=10) as client:
        ids = [client.log_interaction(f"q{i}", "a", model="m") for i in range(25)]
        result = client.flush(5)
    assert result.sent == 25 and result.pending == 0 and result.failed == 0
    assert sorted(e["id"] for e in recorder.events) == sorted(ids)
    assert max(len(b) for b in recorder.batches) == 10
    event = recorder.events[0]
    assert event["type"] == "interaction" and event["body"]["model"] == {"name": "m"}


def test_a_partial_batch_leaves_after_the_flush_interval() -> None:
    recorder = Recorder()
    client = make_client(recorder, batch_events=100, flush_interval=0.05)
    client.feedback("i-1", thumbs=1)
    deadline = time.monotonic() + 5
    while not recorder.batches and time.monotonic() < deadline:
        time.sleep(0.01)
    assert recorder.events[0]["body"] == {"interaction_id": "i-1", "thumbs": 1}
    client.close()


def test_submit_never_blocks_and_counts_drops_when_the_queue_is_full() -> None:
    def hang(call: int, events: list[dict[str, Any]]) -> httpx.Response:
        time.sleep(0.5)
        return httpx.Response(503)

    client = make_client(Recorder(hang), max_queue_events=50, batch_events=10, max_retries=0)
    started = time.perf_counter()
    accepted = [client._worker.submit(b'{"id":"x"}') for _ in range(1000)]
    elapsed = time.perf_counter() - started
    assert elapsed < 0.5
    assert sum(accepted) <= 60
    stats = client.stats()
    assert stats["dropped_by_reason"]["queue_full"] == 1000 - sum(accepted)
    assert stats["submitted"] == 1000
    client.close(0.1)


def test_the_queue_is_bounded_by_bytes_too() -> None:
    worker = BackgroundWorker(
        HttpTransport("http://x", "k", transport=Recorder().transport()),
        WorkerParams(max_queue_bytes=100, flush_interval=10),
    )
    assert worker.submit(b"x" * 60)
    assert not worker.submit(b"x" * 60)
    worker.close(1)


def test_429_is_retried_after_the_retry_after_delay() -> None:
    def once(call: int, events: list[dict[str, Any]]) -> httpx.Response | None:
        return httpx.Response(429, headers={"retry-after": "0.3"}) if call == 0 else None

    recorder = Recorder(once)
    with make_client(recorder) as client:
        client.signal("i-1", "copy")
        result = client.flush(5)
    assert result.sent == 1 and recorder.calls == 2
    assert recorder.times[1] - recorder.times[0] >= 0.3
    assert client.stats()["retries"] == 1


@pytest.mark.parametrize("status", [502, 503, 504])
def test_gateway_and_unavailable_answers_are_retried(status: int) -> None:
    recorder = Recorder(lambda call, ev: httpx.Response(status) if call < 2 else None)
    with make_client(recorder, backoff_base=0.01) as client:
        client.signal("i-1", "accept")
        assert client.flush(5).sent == 1
    assert recorder.calls == 3


@pytest.mark.parametrize("status", [400, 401, 413, 415])
def test_other_4xx_are_final_counted_and_not_retried(status: int) -> None:
    recorder = Recorder(lambda call, ev: httpx.Response(status, json={"title": "no"}))
    with make_client(recorder, backoff_base=0.01) as client:
        client.signal("i-1", "accept")
        result = client.flush(2)
    assert recorder.calls == 1
    assert result.failed == 1 and result.pending == 0 and result.sent == 0
    assert f"HTTP {status}" in client.stats()["failed_by_reason"]


def test_a_per_event_rejection_is_final_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    def reject(call: int, events: list[dict[str, Any]]) -> httpx.Response:
        results = [
            {"id": e["id"], "status": "rejected", "error": {"field": "body.x", "message": "bad"}}
            for e in events
        ]
        return httpx.Response(207, json={"results": results})

    recorder = Recorder(reject)
    with make_client(recorder) as client:
        for _ in range(3):
            client.feedback("i-1", thumbs=1)
            client.flush(2)
    stats = client.stats()
    assert stats["rejected"] == 3 and stats["failed"] == 3 and recorder.calls == 3
    assert sum("rejected an event" in r.message for r in caplog.records) == 1


def test_network_errors_are_retried_then_counted_when_retries_run_out() -> None:
    def down(call: int, events: list[dict[str, Any]]) -> httpx.Response:
        raise httpx.ConnectError("refused")

    recorder = Recorder(down)
    client = make_client(recorder, max_retries=2, backoff_base=0.01)
    client.signal("i-1", "copy")
    result = client.flush(5)
    assert recorder.calls == 3
    assert result.failed == 1 and result.pending == 0
    client.close()


def test_the_spool_keeps_an_outage_and_resends_on_recovery(tmp_path: Path) -> None:
    up = {"value": False}

    def flaky(call: int, events: list[dict[str, Any]]) -> httpx.Response | None:
        if not up["value"]:
            raise httpx.ConnectError("refused")
        return None

    recorder = Recorder(flaky)
    spool_path = tmp_path / "spool.jsonl"
    client = make_client(
        recorder, spool_path=spool_path, backoff_base=0.02, backoff_max=0.05, batch_events=7
    )
    ids = [client.signal("i-1", "copy") for _ in range(50)]
    partial = client.flush(0.3)
    assert partial.pending == 50 and partial.dropped == 0
    assert spool_path.stat().st_size > 0
    up["value"] = True
    result = client.flush(5)
    assert result.pending == 0 and result.dropped == 0 and result.failed == 0
    assert sorted(e["id"] for e in recorder.events) == sorted(ids)
    assert Spool(spool_path).pending_bytes() == 0
    client.close()


def test_a_spool_left_by_a_previous_process_is_sent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    spool.append([b'{"id":"old-1","type":"signal"}', b'{"id":"old-2","type":"signal"}'])
    recorder = Recorder()
    client = make_client(recorder, spool_path=tmp_path / "spool.jsonl")
    client.signal("i-1", "copy")
    assert client.flush(5).pending == 0
    assert {"old-1", "old-2"} <= {e["id"] for e in recorder.events}
    client.close()


def test_close_is_idempotent_and_later_events_are_dropped() -> None:
    recorder = Recorder()
    client = make_client(recorder)
    client.signal("i-1", "copy")
    assert client.close(5).sent == 1
    assert client.close(5).sent == 1
    client.signal("i-1", "copy")
    assert client.stats()["dropped_by_reason"] == {"closed": 1}


def test_close_spools_what_it_could_not_send_in_time(tmp_path: Path) -> None:
    def slow(call: int, events: list[dict[str, Any]]) -> httpx.Response:
        raise httpx.ConnectError("refused")

    client = make_client(
        Recorder(slow), spool_path=tmp_path / "s.jsonl", backoff_base=10, backoff_max=10
    )
    for _ in range(5):
        client.signal("i-1", "copy")
    result = client.close(0.3)
    assert result.dropped == 0
    assert Spool(tmp_path / "s.jsonl").pending_events() == 5


def test_the_backoff_grows_and_is_capped() -> None:
    import random

    params = WorkerParams(backoff_base=1, backoff_max=4)
    rng = random.Random(1)
    delays = [params.backoff(a, None, rng) for a in range(1, 8)]
    assert all(0.5 <= d <= 4 for d in delays) and max(delays) > 2
    assert params.backoff(3, 7.5, rng) == 7.5
    assert parse_retry_after("-3") == 0.0


def test_invalid_params_are_refused() -> None:
    with pytest.raises(ValueError):
        WorkerParams(batch_events=0)
    with pytest.raises(ValueError):
        WorkerParams(flush_interval=0)
