"""The SDK's background sender: a bounded queue and one daemon thread.

:meth:`BackgroundWorker.submit` appends an already serialised event to a queue bounded by
event count and bytes and returns at once (``False`` when the event was dropped; it never
blocks on I/O and never raises). One daemon thread takes batches (by count, bytes or after
``flush_interval`` seconds), hands them to a transport and reacts to the outcome:

* per-event ``stored``/``duplicate`` are sent, per-event ``rejected`` are final (counted, logged
  once per kind), as is any other 4xx for the whole batch;
* network errors, 429, 502, 503 and 504 are retried with exponential backoff and jitter, and no
  sooner than the server's ``Retry-After``. With a :class:`~closedloop.sdk._spool.Spool` the
  batch goes to disk at once and is re-sent when the server answers again, so an outage loses
  nothing; without it the batch is retried ``max_retries`` times while new events wait in the
  bounded queue (the overflow is dropped and counted).

Nothing is dropped silently: ``submitted = sent + failed + dropped + pending`` (``sent``
counts ``stored`` and ``duplicate``). After a fork the child gets a fresh queue, thread and
HTTP client (and no spool: the file stays the parent's). At exit, open workers flush for at
most their ``shutdown_timeout``.
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import random
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from closedloop.sdk._spool import Spool
from closedloop.sdk._transport import SendOutcome, Transport

__all__ = ["BackgroundWorker", "FlushResult", "WorkerParams"]

logger = logging.getLogger("closedloop.sdk")


@dataclass(frozen=True)
class FlushResult:
    """Totals since the worker started (``pending`` is what is still queued or spooled)."""

    sent: int
    pending: int
    dropped: int
    failed: int


@dataclass(frozen=True, kw_only=True)
class WorkerParams:
    """Sizes and delays of the background sender.

    Parameters
    ----------
    max_queue_events, max_queue_bytes
        Bounds of the in-memory queue (default 10 000 events, 32 MiB).
    batch_events, batch_bytes
        Most events and bytes in one request (default 1000 events, the server's batch limit,
        and 1 MiB): fewer, larger requests keep the sender's GIL time per call low.
    flush_interval
        Seconds a partial batch waits before it is sent (default 1.0).
    max_retries
        Retries of one batch when there is no spool (default 6).
    backoff_base, backoff_max
        First and largest retry delay in seconds (default 0.5 and 30); jittered.
    shutdown_timeout
        Seconds the exit hook waits for the queue to drain (default 5).
    """

    max_queue_events: int = 10_000
    max_queue_bytes: int = 32 * 1024 * 1024
    batch_events: int = 1000
    batch_bytes: int = 1024 * 1024
    flush_interval: float = 1.0
    max_retries: int = 6
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    shutdown_timeout: float = 5.0

    def __post_init__(self) -> None:
        for name in ("max_queue_events", "max_queue_bytes", "batch_events", "batch_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.flush_interval <= 0 or self.backoff_base <= 0 or self.backoff_max <= 0:
            raise ValueError("flush_interval, backoff_base and backoff_max must be positive")
        if self.max_retries < 0:
            raise ValueError("max_retries must be 0 or more")

    def backoff(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (1-based): the server's word, else jittered.

        >>> p = WorkerParams(backoff_base=1.0, backoff_max=8.0)
        >>> rng = random.Random(0)
        >>> [round(p.backoff(a, None, rng), 2) for a in (1, 2, 3, 4, 5)]
        [0.92, 1.76, 2.84, 5.04, 6.05]
        >>> p.backoff(1, 3.0, rng)
        3.0
        """
        if retry_after is not None:
            return retry_after
        delay: float = min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1))
        return delay * rng.uniform(0.5, 1.0)


_WORKERS: weakref.WeakSet[BackgroundWorker] = weakref.WeakSet()


class BackgroundWorker:
    """A bounded queue drained by one daemon thread; see the module docstring."""

    def __init__(
        self,
        transport: Transport,
        params: WorkerParams | None = None,
        *,
        spool: Spool | None = None,
        name: str = "closedloop-sdk",
        seed: int | None = None,
    ) -> None:
        self.transport = transport
        self.params = params if params is not None else WorkerParams()
        self.spool = spool
        self.name = name
        self._rng = random.Random(seed)
        self._counts: collections.Counter[str] = collections.Counter()
        self._dropped: collections.Counter[str] = collections.Counter()
        self._failed: collections.Counter[str] = collections.Counter()
        self._warned: set[str] = set()
        self._spool_count = spool.pending_events() if spool is not None else 0
        self._init_state()
        self.running = True  # set before the thread starts (langfuse explains why)
        _WORKERS.add(self)

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: collections.deque[bytes] = collections.deque()
        self._queue_bytes = 0
        self._inflight = 0
        self._flush_waiters = 0
        self._closed = False
        self._stopping = False
        self._abort = threading.Event()
        self._next_try = 0.0  # monotonic time before which nothing is sent (an outage)
        self._outage = 0  # consecutive retryable failures
        self._thread: threading.Thread | None = None

    # -- the host app's side ---------------------------------------------------------------

    def submit(self, event: bytes) -> bool:
        """Queue one serialised event; ``False`` if it was dropped. Never blocks or raises."""
        try:
            size = len(event)
            with self._lock:
                if self._closed:
                    reason = "closed"
                elif (
                    len(self._queue) >= self.params.max_queue_events
                    or self._queue_bytes + size > self.params.max_queue_bytes
                ):
                    reason = "queue_full"
                else:
                    self._queue.append(event)
                    self._queue_bytes += size
                    self._counts["submitted"] += 1
                    if self._thread is None:
                        self._start()
                    if (
                        len(self._queue) >= self.params.batch_events
                        or self._queue_bytes >= self.params.batch_bytes
                    ):
                        self._cond.notify_all()
                    return True
                self._counts["submitted"] += 1
                self._dropped[reason] += 1
            self._warn_once(
                f"drop:{reason}",
                "closedloop dropped an event (%s); further drops of this kind are counted "
                "in stats() without a warning",
                reason,
            )
            return False
        except Exception:  # pragma: no cover - defensive: never into the host app
            return False

    def count_drop(self, reason: str) -> None:
        """Count an event the caller dropped before submitting it."""
        with self._lock:
            self._counts["submitted"] += 1
            self._dropped[reason] += 1

    def flush(self, timeout: float = 5.0) -> FlushResult:
        """Send what is queued; wait at most ``timeout`` seconds. Returns the totals."""
        deadline = time.monotonic() + max(0.0, timeout)
        with self._cond:
            self._flush_waiters += 1
            self._cond.notify_all()
            try:
                while self._pending_locked() > 0:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0 or self._thread is None and not self._queue:
                        break
                    if self._thread is None:
                        self._start()
                    self._cond.wait(min(remaining, 0.05))
            finally:
                self._flush_waiters -= 1
            return self._result_locked()

    def close(self, timeout: float | None = None) -> FlushResult:
        """Flush for at most ``timeout`` seconds and stop the thread. Idempotent.

        What the thread could not send in time goes to the spool if there is one, else it
        is counted as dropped (``shutdown``).
        """
        if timeout is None:
            timeout = self.params.shutdown_timeout
        with self._cond:
            if self._closed:
                return self._result_locked()
            self._closed = True
            self._stopping = True
            self.running = False
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, timeout))
            if thread.is_alive():
                self._abort.set()
                with self._cond:
                    self._cond.notify_all()
                thread.join(0.2)
        with self._cond:
            left = list(self._queue)
            self._queue.clear()
            self._queue_bytes = 0
        if left:
            self._spool_or_drop(left, "shutdown")
        if thread is None or not thread.is_alive():
            try:
                self.transport.close()
            except Exception:  # pragma: no cover - defensive
                pass
        with self._cond:
            return self._result_locked()

    def stats(self) -> dict[str, Any]:
        """Every counter: submitted, sent, stored, duplicate, rejected, failed, dropped..."""
        with self._lock:
            result = self._result_locked()
            return {
                "submitted": self._counts["submitted"],
                "sent": result.sent,
                "stored": self._counts["stored"],
                "duplicate": self._counts["duplicate"],
                "rejected": self._counts["rejected"],
                "failed": result.failed,
                "failed_by_reason": dict(self._failed),
                "dropped": result.dropped,
                "dropped_by_reason": dict(self._dropped),
                "pending": result.pending,
                "queued": len(self._queue),
                "queued_bytes": self._queue_bytes,
                "in_flight": self._inflight,
                "spooled": self._spool_count,
                "spool_writes": self._counts["spool_writes"],
                "batches": self._counts["batches"],
                "retries": self._counts["retries"],
            }

    # -- bookkeeping (callers hold the lock) -----------------------------------------------

    def _pending_locked(self) -> int:
        return len(self._queue) + self._inflight + self._spool_count

    def _result_locked(self) -> FlushResult:
        return FlushResult(
            sent=self._counts["stored"] + self._counts["duplicate"],
            pending=self._pending_locked(),
            dropped=sum(self._dropped.values()),
            failed=sum(self._failed.values()),
        )

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def _warn_once(self, kind: str, message: str, *args: object) -> None:
        if kind in self._warned:
            return
        self._warned.add(kind)
        logger.warning(message, *args)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            try:
                batch = self._take()
                if batch is None:
                    return
                if batch:
                    self._deliver(batch)
                self._drain_spool()
            except Exception:  # pragma: no cover - defensive: keep the thread alive
                logger.exception("closedloop's background sender failed; it goes on")
                with self._cond:
                    self._inflight = 0
                    self._cond.notify_all()
                time.sleep(0.1)

    def _spool_due(self) -> bool:
        return (
            self.spool is not None
            and self._spool_count > 0
            and time.monotonic() >= self._next_try
            and not self._abort.is_set()
        )

    def _take(self) -> list[bytes] | None:
        """The next batch; ``[]`` when only the spool is due; ``None`` when stopped."""
        p = self.params
        with self._cond:
            deadline = time.monotonic() + p.flush_interval
            while True:
                now = time.monotonic()
                q = self._queue
                if q and (
                    len(q) >= p.batch_events
                    or self._queue_bytes >= p.batch_bytes
                    or self._stopping
                    or self._flush_waiters
                    or now >= deadline
                ):
                    break
                if self._spool_due():
                    return []
                spool_waits = (
                    self.spool is not None and self._spool_count > 0 and not self._abort.is_set()
                )
                if self._stopping and not q and not spool_waits:
                    return None
                if not q and now >= deadline:
                    deadline = now + p.flush_interval
                wait = deadline - now
                if self.spool is not None and self._spool_count > 0:
                    wait = min(wait, max(0.01, self._next_try - now))
                self._cond.wait(max(0.001, wait))
            batch: list[bytes] = []
            size = 0
            while q and len(batch) < p.batch_events:
                event = q[0]
                if batch and size + len(event) > p.batch_bytes:
                    break
                q.popleft()
                batch.append(event)
                size += len(event)
            self._queue_bytes -= size
            self._inflight = len(batch)
            return batch

    def _done(self) -> None:
        with self._cond:
            self._inflight = 0
            self._cond.notify_all()

    def _send(self, events: list[bytes]) -> SendOutcome:
        try:
            outcome = self.transport.send(events)
        except Exception as exc:  # a transport must not raise; count it as final if it does
            outcome = SendOutcome(kind="fatal", reason=f"transport error: {exc!r}")
        with self._lock:
            self._counts["batches"] += 1
        return outcome

    def _record(self, events: list[bytes], outcome: SendOutcome) -> None:
        """Count a final outcome (``ok`` or ``fatal``)."""
        with self._lock:
            self._outage = 0
            self._next_try = 0.0
            if outcome.kind == "ok":
                self._counts["stored"] += outcome.stored
                self._counts["duplicate"] += outcome.duplicate
                self._counts["rejected"] += outcome.rejected
                if outcome.rejected:
                    self._failed["rejected"] += outcome.rejected
            else:
                self._failed[outcome.reason.split(":")[0]] += len(events)
        for why in outcome.rejections:
            self._warn_once(
                f"rejected:{why.split(':')[0]}",
                "closedloop rejected an event (%s); further rejections of this field are "
                "counted in stats() without a warning",
                why,
            )
        if outcome.kind == "fatal":
            self._warn_once(
                f"fatal:{outcome.reason.split(':')[0]}",
                "closedloop refused a batch of %d events, which is dropped: %s",
                len(events),
                outcome.reason,
            )

    def _retry_later(self, outcome: SendOutcome) -> None:
        with self._lock:
            self._outage += 1
            self._counts["retries"] += 1
            delay = self.params.backoff(self._outage, outcome.retry_after, self._rng)
            self._next_try = time.monotonic() + delay
        self._warn_once(
            f"retry:{outcome.reason}",
            "closedloop could not deliver events (%s); retrying with backoff",
            outcome.reason,
        )

    def _spool_or_drop(self, events: list[bytes], reason: str) -> None:
        spool = self.spool
        if spool is not None:
            try:
                if spool.append(events):
                    with self._lock:
                        self._spool_count += len(events)
                        self._counts["spool_writes"] += 1
                    return
                reason = "spool_full"
            except OSError:
                reason = "spool_error"
        with self._lock:
            self._dropped[reason] += len(events)
        self._warn_once(f"drop:{reason}", "closedloop dropped %d events (%s)", len(events), reason)

    def _deliver(self, batch: list[bytes]) -> None:
        try:
            if self._abort.is_set():
                self._spool_or_drop(batch, "shutdown")
                return
            if self.spool is not None and time.monotonic() < self._next_try:
                self._spool_or_drop(batch, "spool_full")  # an outage: straight to disk
                return
            tries = 0
            while True:
                outcome = self._send(batch)
                if outcome.kind != "retry":
                    self._record(batch, outcome)
                    return
                self._retry_later(outcome)
                if self.spool is not None:
                    self._spool_or_drop(batch, "spool_full")
                    return
                tries += 1
                if tries > self.params.max_retries:
                    with self._lock:
                        self._failed[f"retries exhausted ({outcome.reason})"] += len(batch)
                    return
                self._abort.wait(max(0.0, self._next_try - time.monotonic()))
                if self._abort.is_set():
                    self._spool_or_drop(batch, "shutdown")
                    return
        finally:
            self._done()

    def _drain_spool(self) -> None:
        spool = self.spool
        if spool is None:
            return
        p = self.params
        while self._spool_due():
            chunk = spool.peek(max_events=p.batch_events, max_bytes=p.batch_bytes)
            if not chunk.events:
                spool.commit(chunk)
                with self._cond:
                    self._spool_count = 0
                    self._cond.notify_all()
                return
            outcome = self._send(chunk.events)
            if outcome.kind == "retry":
                self._retry_later(outcome)
                return
            self._record(chunk.events, outcome)
            spool.commit(chunk)
            with self._cond:
                self._spool_count = max(0, self._spool_count - len(chunk.events))
                self._cond.notify_all()
                if len(self._queue) >= p.batch_events:
                    return  # serve the live queue too

    # -- process life ----------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """A fresh queue, lock and (lazily) thread and HTTP client; the spool stays with the
        parent. Counters start again from zero."""
        self._counts.clear()
        self._dropped.clear()
        self._failed.clear()
        self._warned.clear()
        self.spool = None
        self._spool_count = 0
        closed = self._closed
        self._init_state()
        self._closed = self._stopping = closed
        self.running = not closed
        try:
            self.transport.after_fork()
        except Exception:  # pragma: no cover - defensive
            pass


def _reinit_after_fork() -> None:
    for worker in list(_WORKERS):
        worker._after_fork_in_child()


def _close_at_exit() -> None:
    for worker in list(_WORKERS):
        try:
            worker.close()
        except Exception:  # pragma: no cover - never fail the interpreter's exit
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reinit_after_fork)
atexit.register(_close_at_exit)
