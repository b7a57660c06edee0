"""Group commit: concurrent batches share one transaction, so durability costs one fsync per
group instead of one per request.

One writer thread owns the writing connection. ``submit()`` enqueues a batch into a queue
bounded by event count and returns a future; the thread takes every batch waiting (up to
``max_group_events``), writes them in one transaction and resolves each future with, per
event, whether it was new. A full queue raises :class:`QueueFull` at once (HTTP 429); an
unreachable database fails the futures with :class:`StorageUnavailable` (HTTP 503). If a
group fails for another reason, its batches are retried one by one so that a bad batch cannot
sink the others.

Written by hand because no library offers a bounded, durable group commit over SQLAlchemy.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

import sqlalchemy.exc as sa_exc
from sqlalchemy.engine import Engine

from closedloop.errors import QueueFull, StorageError, StorageUnavailable
from closedloop.store.writer import write_events
from closedloop.types import PreparedEvent

__all__ = ["GroupCommitter"]

log = logging.getLogger(__name__)

_Item = tuple[Sequence[PreparedEvent], "Future[list[bool]]"]
_STOP = object()


class GroupCommitter:
    """Bounded queue plus one writer thread; see the module docstring.

    Parameters
    ----------
    engine
        The hot store.
    max_queue_events
        Most events waiting; beyond it ``submit`` raises :class:`QueueFull`.
    max_group_events
        Most events in one transaction.
    on_depth
        Called with the queue depth (in events) whenever it changes, for the metrics gauge.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        max_queue_events: int = 20_000,
        max_group_events: int = 4_000,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self.max_queue_events = max_queue_events
        self.max_group_events = max_group_events
        self._on_depth = on_depth
        self._queue: queue.SimpleQueue[_Item | object] = queue.SimpleQueue()
        self._depth = 0
        self._lock = threading.Lock()
        self._accepting = False
        self._thread: threading.Thread | None = None

    @property
    def depth(self) -> int:
        """Events waiting to be committed."""
        return self._depth

    @property
    def at_capacity(self) -> bool:
        """Whether the queue is full (checked before a request body is read)."""
        return self._depth >= self.max_queue_events

    def start(self) -> None:
        """Start the writer thread."""
        if self._thread is not None:
            return
        self._accepting = True
        self._thread = threading.Thread(target=self._run, name="closedloop-commit", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking batches, commit every batch already queued, then stop the thread."""
        with self._lock:
            self._accepting = False
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout)
        self._thread = None

    def submit(self, events: Sequence[PreparedEvent]) -> Future[list[bool]]:
        """Queue ``events`` for the next group commit; never blocks.

        Raises
        ------
        QueueFull
            when the queue holds ``max_queue_events`` events already.
        RuntimeError
            when the committer is not running.
        """
        future: Future[list[bool]] = Future()
        if not events:
            future.set_result([])
            return future
        with self._lock:
            if not self._accepting:
                raise RuntimeError("Cannot submit events, as the committer is not running.")
            if self._depth + len(events) > self.max_queue_events and self._depth > 0:
                raise QueueFull(
                    f"the write queue holds {self._depth} events (limit "
                    f"{self.max_queue_events}); retry after the Retry-After delay",
                    retry_after=1.0,
                )
            self._depth += len(events)
            depth = self._depth
        self._queue.put((events, future))
        self._report(depth)
        return future

    def _report(self, depth: int) -> None:
        if self._on_depth is not None:
            self._on_depth(depth)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is _STOP:
                break
            group: list[_Item] = [first]  # type: ignore[list-item]
            size = len(group[0][0])
            while size < self.max_group_events:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stopping = True
                    break
                group.append(item)  # type: ignore[arg-type]
                size += len(item[0])  # type: ignore[index]
            self._commit(group)
            with self._lock:
                self._depth -= size
                depth = self._depth
            self._report(depth)
        # Drain whatever arrived before the stop sentinel was seen.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _STOP:
                self._commit([item])  # type: ignore[list-item]

    def _commit(self, group: list[_Item]) -> None:
        try:
            results = self._write([events for events, _ in group])
        except StorageUnavailable as exc:
            for _, future in group:
                future.set_exception(exc)
            return
        except Exception:
            if len(group) == 1:
                log.exception("group commit failed")
                group[0][1].set_exception(StorageError("the batch could not be written"))
                return
            for item in group:  # isolate the failing batch
                self._commit([item])
            return
        for (_, future), result in zip(group, results, strict=True):
            future.set_result(result)

    def _write(self, batches: list[Sequence[PreparedEvent]]) -> list[list[bool]]:
        flat = [event for events in batches for event in events]
        try:
            with self.engine.begin() as conn:
                fresh = write_events(conn, _unique(flat))
        except (sa_exc.OperationalError, sa_exc.InterfaceError) as exc:
            if _is_disconnect(exc):
                raise StorageUnavailable(
                    "the database cannot be reached; retry after the Retry-After delay"
                ) from exc
            raise
        if len(fresh) != len(flat):  # the same id in two concurrent batches
            fresh = _spread(flat, fresh)
        out: list[list[bool]] = []
        start = 0
        for events in batches:
            out.append(fresh[start : start + len(events)])
            start += len(events)
        return out


def _unique(events: list[PreparedEvent]) -> list[PreparedEvent]:
    seen: set[tuple[int, str]] = set()
    out = []
    for e in events:
        key = (e.project_id, e.event_id)
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def _spread(flat: list[PreparedEvent], fresh_unique: list[bool]) -> list[bool]:
    """Map results of the de-duplicated list back: later copies of an id are duplicates."""
    seen: set[tuple[int, str]] = set()
    it = iter(fresh_unique)
    out = []
    for e in flat:
        key = (e.project_id, e.event_id)
        if key in seen:
            out.append(False)
        else:
            seen.add(key)
            out.append(next(it))
    return out


def _is_disconnect(exc: sa_exc.DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    text = str(exc.orig).lower()
    return any(
        hint in text
        for hint in (
            "connection",
            "could not connect",
            "server closed",
            "terminating",
            "unable to open",
            "disk i/o",
            "database is locked",
        )
    )
