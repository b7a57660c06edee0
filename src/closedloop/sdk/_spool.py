"""A bounded, append-only disk spool for batches the server could not take.

Events are appended one JSON document per line (msgspec escapes newlines inside strings, so a
line is an event). A second small file, ``<path>.offset``, records how many bytes from the
start have been delivered; reading resumes there. When everything is delivered both files are
truncated. A crash between a delivery and the offset update re-sends a batch, which the
server answers ``duplicate`` (the ids make delivery idempotent).

>>> import tempfile, pathlib
>>> spool = Spool(pathlib.Path(tempfile.mkdtemp()) / "spool.jsonl", max_bytes=1000)
>>> spool.append([b'{"id":"a"}', b'{"id":"b"}'])
True
>>> chunk = spool.peek(max_events=10, max_bytes=10_000)
>>> chunk.events
[b'{"id":"a"}', b'{"id":"b"}']
>>> spool.commit(chunk)
>>> spool.pending_bytes()
0
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Chunk", "Spool"]


@dataclass(frozen=True)
class Chunk:
    """Events read from the spool and where reading stopped."""

    events: list[bytes]
    end: int


class Spool:
    """Append-only file of serialised events, at most ``max_bytes`` large."""

    def __init__(self, path: Path, *, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = Path(path)
        self.offset_path = self.path.with_name(self.path.name + ".offset")
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def _offset(self) -> int:
        try:
            return int(self.offset_path.read_text() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def pending_bytes(self) -> int:
        """Bytes written and not yet delivered."""
        with self._lock:
            return max(0, self._size() - self._offset())

    def pending_events(self) -> int:
        """Events written and not yet delivered (counts lines)."""
        with self._lock:
            offset = self._offset()
            try:
                with self.path.open("rb") as f:
                    f.seek(offset)
                    return sum(1 for line in f if line.strip())
            except FileNotFoundError:
                return 0

    def append(self, events: list[bytes]) -> bool:
        """Append ``events``; ``False`` (nothing written) when the spool would overflow."""
        data = b"".join(e + b"\n" for e in events)
        with self._lock:
            if self._size() + len(data) > self.max_bytes:
                return False
            with self.path.open("ab") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        return True

    def peek(self, *, max_events: int, max_bytes: int) -> Chunk:
        """Up to ``max_events`` undelivered events (at least one, if any)."""
        with self._lock:
            offset = self._offset()
            events: list[bytes] = []
            size = 0
            end = offset
            try:
                with self.path.open("rb") as f:
                    f.seek(offset)
                    for line in f:
                        if not line.endswith(b"\n"):
                            break  # a torn last write: wait for the rest
                        event = line.rstrip(b"\n")
                        if events and (len(events) >= max_events or size + len(event) > max_bytes):
                            break
                        end += len(line)
                        if event:
                            events.append(event)
                            size += len(event)
            except FileNotFoundError:
                pass
            return Chunk(events, end)

    def commit(self, chunk: Chunk) -> None:
        """Mark ``chunk`` delivered; truncate the files when nothing is left."""
        with self._lock:
            if chunk.end >= self._size():
                with self.path.open("wb"):
                    pass
                self.offset_path.unlink(missing_ok=True)
                return
            tmp = self.offset_path.with_name(self.offset_path.name + ".tmp")
            tmp.write_text(str(chunk.end))
            os.replace(tmp, self.offset_path)
