"""Bulk import of a JSONL file of events through the one ingest path.

Re-running an import stores nothing twice: every event keeps its id, and a line without an
``id`` gets a deterministic one (UUIDv5 of the project and the line's bytes).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from closedloop.ingest.pipeline import Ingestor
from closedloop.types import ProjectKey

__all__ = ["ImportReport", "import_jsonl"]

_NAMESPACE = uuid.UUID("6f1c9a52-5d8e-4c1e-9a3b-0c7d2e8f4b11")


@dataclass
class ImportReport:
    """What an import did; ``errors`` holds ``(line, field, message)`` of the first 100."""

    lines: int = 0
    stored: int = 0
    duplicate: int = 0
    rejected: int = 0
    errors: list[tuple[int, str, str]] = field(default_factory=list)


def _with_id(line: bytes, project: str) -> bytes:
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return line  # the pipeline rejects it with the parse position
    if isinstance(obj, dict) and "id" not in obj:
        obj["id"] = str(uuid.uuid5(_NAMESPACE, project + "\n" + line.decode("utf-8", "replace")))
        return msgspec.json.encode(obj)
    return line


def _batches(path: Path, size: int) -> Iterator[list[tuple[int, bytes]]]:
    batch: list[tuple[int, bytes]] = []
    with path.open("rb") as fh:
        for number, raw in enumerate(fh, start=1):
            line = raw.strip()
            if not line:
                continue
            batch.append((number, line))
            if len(batch) >= size:
                yield batch
                batch = []
    if batch:
        yield batch


def import_jsonl(
    ingestor: Ingestor,
    key: ProjectKey,
    path: Path,
    *,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Ingest every line of ``path`` (one event envelope per line) into ``key``'s project.

    ``progress`` is called with the number of bytes of each finished batch.
    """
    report = ImportReport()
    for batch in _batches(path, batch_size):
        raws = [_with_id(line, key.project_name) for _, line in batch]
        result = ingestor.ingest(key, raws)
        report.lines += len(batch)
        for (number, _), res in zip(batch, result.results, strict=True):
            if res.status == "stored":
                report.stored += 1
            elif res.status == "duplicate":
                report.duplicate += 1
            else:
                report.rejected += 1
                if len(report.errors) < 100:
                    report.errors.append((number, res.field or "", res.message or ""))
        if progress is not None:
            progress(sum(len(line) + 1 for _, line in batch))
    return report
