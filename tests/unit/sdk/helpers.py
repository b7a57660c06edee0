"""A recording stand-in for ``POST /v1/events`` on ``httpx.MockTransport``."""

from __future__ import annotations

import gzip
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

Answer = Callable[[int, list[dict[str, Any]]], httpx.Response | None]


class Recorder:
    """Answers every batch 200 ``stored`` unless ``answer`` says otherwise; keeps them all."""

    def __init__(self, answer: Answer | None = None) -> None:
        self.answer = answer
        self.batches: list[list[dict[str, Any]]] = []
        self.times: list[float] = []
        self.calls = 0
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/events"
        assert request.headers["content-encoding"] == "gzip"
        events = json.loads(gzip.decompress(request.content))["events"]
        with self.lock:
            call = self.calls
            self.calls += 1
            self.times.append(time.monotonic())
        if self.answer is not None:
            response = self.answer(call, events)
            if response is not None:
                return response
        with self.lock:
            self.batches.append(events)
        return httpx.Response(
            200, json={"results": [{"id": e["id"], "status": "stored"} for e in events]}
        )

    @property
    def events(self) -> list[dict[str, Any]]:
        return [e for batch in self.batches for e in batch]

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)
