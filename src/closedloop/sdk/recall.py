"""Recall from the knowledge base: the entries closest to a query, bounded by a timeout.

An app asks before it answers (``client.recall("how do I reset my password?")``) and puts
what comes back in its prompt. Recall sits on the app's request path, so it never raises and
never waits past its timeout: any failure (server down, slow, a 4xx or 5xx, bad JSON) gives
``[]`` and a debug log line.

Over HTTP it posts to ``/v1/knowledge/recall`` with the client's secret key; embedded, it
searches the database through the embedded runtime in a small thread pool and gives up after
the timeout (the search goes on in its thread and its answer is dropped).

This module needs only the standard library and httpx, so the light SDK can use it.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

__all__ = ["Recalled", "recall_embedded", "recall_http"]

logger = logging.getLogger("closedloop.sdk")

_MAX_K = 50


@dataclass(frozen=True, kw_only=True)
class Recalled:
    """One knowledge-base entry found for a query, with its cosine ``score``."""

    id: int
    query: str
    answer: str
    score: float
    source: str
    created_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        """The entry as the API answers it."""
        return {
            "id": self.id,
            "query": self.query,
            "answer": self.answer,
            "score": self.score,
            "source": self.source,
            "created_at": self.created_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recalled:
        """An entry from the API's JSON (raises ``KeyError``/``ValueError`` when malformed)."""
        return cls(
            id=int(data["id"]),
            query=str(data["query"]),
            answer=str(data["answer"]),
            score=float(data["score"]),
            source=str(data["source"]),
            created_at=dt.datetime.fromisoformat(str(data["created_at"])),
        )


def _k(k: int) -> int:
    return max(1, min(int(k), _MAX_K))


def _post(
    base_url: str,
    api_key: str,
    query: str,
    *,
    k: int = 3,
    timeout: float = 0.5,
    transport: httpx.BaseTransport | None = None,
) -> list[Recalled]:
    with httpx.Client(
        base_url=base_url, timeout=httpx.Timeout(timeout), transport=transport
    ) as http:
        response = http.post(
            "/v1/knowledge/recall",
            json={"query": query, "k": _k(k)},
            headers={"authorization": f"Bearer {api_key}"},
        )
    if response.status_code != 200:
        raise ValueError(f"the server answered {response.status_code}: {response.text[:200]}")
    return [Recalled.from_json(e) for e in response.json()["entries"]]


def recall_http(
    base_url: str,
    api_key: str,
    query: str,
    *,
    k: int = 3,
    timeout: float = 0.5,
    transport: httpx.BaseTransport | None = None,
) -> list[Recalled]:
    """``POST /v1/knowledge/recall``; ``[]`` on any failure or after ``timeout`` seconds in
    all (httpx's timeouts bound each phase; the pool bounds the whole, so a server that
    dribbles its answer cannot hold the app either)."""

    def post() -> list[Recalled]:
        return _post(base_url, api_key, query, k=k, timeout=timeout, transport=transport)

    return recall_embedded(post, timeout=timeout)


_pool_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="closedloop-recall"
            )
        return _pool


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads do not exist here."""
    global _pool, _pool_lock
    _pool_lock = threading.Lock()
    _pool = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def recall_embedded(search: Callable[[], list[Recalled]], *, timeout: float) -> list[Recalled]:
    """Run ``search`` in a small thread pool; ``[]`` if it fails or takes over ``timeout``."""
    try:
        future = _executor().submit(search)
        return future.result(timeout=timeout)
    except Exception as exc:
        logger.debug("closedloop recall failed: %r", exc)
        return []
