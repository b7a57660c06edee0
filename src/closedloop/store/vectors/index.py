"""Approximate-nearest-neighbour indexes over the ``vectors`` table, one per (project, model).

The library is usearch (HNSW, cosine metric): it removes vectors by key, which erasure needs,
and saves and restores an index as one file. faiss's HNSW indexes cannot remove vectors (only
its flat and IVF indexes can), so an erased user would stay in the graph until a full rebuild.

The table is the truth; an index is a cache of it, kept under a folder (the data directory's
``indexes/``):

* ``<project>/<model>.json``, the sidecar: model, dimensions, the database it was built from,
  the last ``seq`` included and the index file it describes;
* ``<project>/<model>.<generation>.usearch``, the index. A save writes a new file, then swaps
  the sidecar to it atomically (``os.replace``), so a reader never sees a sidecar and an
  index that disagree, also across processes;
* ``<project>/epoch``: a token that :meth:`IndexManager.drop` renews. Every process compares
  it before each search and save: an index built before a drop is rebuilt from the table, never
  searched or saved again, so an erased user's vectors do not survive in another process's
  memory or come back to disk. Saves and drops of a project hold a file lock (``flock``).

On open an index is loaded when its sidecar matches (model, dimensions, database, and a last
``seq`` the table has reached), else rebuilt from the table. Before each search it catches up
with ``seq > last_seq`` (one indexed query), so the server process sees what the worker wrote.
This needs ``seq`` to grow in commit order: the embedding job is the only writer and runs one
at a time (an advisory lock on PostgreSQL; SQLite has one writer).

Searches are re-checked against the table by the caller
(:mod:`closedloop.store.vectors.search`), so a row deleted by another process never comes
back; keys found missing are removed from the index on the way. Erasure calls
:meth:`IndexManager.drop` after deleting the rows: the files go, the epoch changes, and the
next search in any process rebuilds from what the table still holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy.engine import Engine
from usearch.index import Index

from closedloop.store.vectors.table import load_after, max_seq

__all__ = ["IndexManager", "VectorIndex"]

log = logging.getLogger(__name__)

_FORMAT = 1
_PAGE = 10_000


def _slug(model: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9_-]+", "_", model)[:48]
    return f"{readable}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"


def _read_epoch(folder: Path) -> str | None:
    try:
        return (folder / "epoch").read_text().strip() or None
    except OSError:
        return None


@contextlib.contextmanager
def _file_lock(folder: Path) -> Iterator[None]:
    """Serialise saves and drops of one project's indexes across processes (POSIX flock)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+b") as handle:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: one process per data directory
            yield
            return
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _database_id(engine: Engine) -> str:
    url = engine.url.render_as_string(hide_password=True)
    return hashlib.sha256(url.encode()).hexdigest()[:16]


class VectorIndex:
    """The index of one project's vectors of one model (see the module docstring).

    Made by :class:`IndexManager`; every method is thread-safe.
    """

    def __init__(
        self,
        engine: Engine,
        directory: Path,
        project_id: int,
        model: str,
        *,
        connectivity: int = 16,
        expansion_add: int = 128,
        expansion_search: int = 128,
        save_after: int = 1000,
        save_seconds: float = 60.0,
    ) -> None:
        self.engine = engine
        self.directory = directory / str(project_id)
        self.project_id = project_id
        self.model = model
        self.connectivity = connectivity
        self.expansion_add = expansion_add
        self.expansion_search = expansion_search
        self.save_after = save_after
        self.save_seconds = save_seconds
        self._slug = _slug(model)
        self._database = _database_id(engine)
        self._lock = threading.RLock()
        self._index: Index | None = None
        self._last_seq = 0
        self._opened = False
        self._epoch: str | None = None
        self._unsaved = 0
        self._saved_at = time.monotonic()

    # -- state ------------------------------------------------------------------------------

    @property
    def sidecar(self) -> Path:
        """The sidecar file's path."""
        return self.directory / f"{self._slug}.json"

    @property
    def last_seq(self) -> int:
        """The highest ``seq`` included."""
        return self._last_seq

    def __len__(self) -> int:
        with self._lock:
            return 0 if self._index is None else len(self._index)

    def _new(self, dim: int) -> Index:
        return Index(
            ndim=dim,
            metric="cos",
            dtype="f32",
            connectivity=self.connectivity,
            expansion_add=self.expansion_add,
            expansion_search=self.expansion_search,
        )

    def open(self) -> bool:
        """Load the saved index if it is consistent with the table, else rebuild it; then catch
        up. Returns whether a saved index was loaded."""
        with self._lock:
            self._epoch = _read_epoch(self.directory)
            loaded = self._load()
            if not loaded:
                self._index, self._last_seq = None, 0
            self._opened = True
            added = self._catch_up()
            if not loaded and added:
                log.info(
                    "rebuilt the vector index of project %s, model %s (%s vectors)",
                    self.project_id,
                    self.model,
                    added,
                )
                self.save()
            return loaded

    def _load(self) -> bool:
        try:
            meta: dict[str, Any] = json.loads(self.sidecar.read_text())
        except (OSError, ValueError):
            return False
        if (
            meta.get("format") != _FORMAT
            or meta.get("model") != self.model
            or meta.get("database") != self._database
            or meta.get("epoch") != self._epoch
            or not isinstance(meta.get("last_seq"), int)
            or not isinstance(meta.get("dim"), int)
        ):
            return False
        with self.engine.connect() as conn:
            if max_seq(conn, self.project_id, self.model) < meta["last_seq"]:
                return False  # the table lost rows the index holds (or is another database)
        index = self._new(meta["dim"])
        try:
            index.load(str(self.directory / str(meta["file"])))
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("cannot load %s (%s): rebuilding", meta.get("file"), exc)
            return False
        if index.ndim != meta["dim"]:
            return False
        self._index, self._last_seq = index, int(meta["last_seq"])
        self._unsaved, self._saved_at = 0, time.monotonic()
        return True

    # -- following the table ----------------------------------------------------------------

    def catch_up(self) -> int:
        """Add the vectors stored since the last call (``seq > last_seq``); returns how many."""
        with self._lock:
            if not self._opened or _read_epoch(self.directory) != self._epoch:
                self._index, self._last_seq = None, 0  # dropped elsewhere: never use it again
                self.open()
                return 0
            added = self._catch_up()
            if self._unsaved and (
                self._unsaved >= self.save_after
                or time.monotonic() - self._saved_at >= self.save_seconds
            ):
                self.save()
            return added

    def _catch_up(self) -> int:
        added = 0
        while True:
            with self.engine.connect() as conn:
                keys, matrix = load_after(
                    conn, self.project_id, self.model, self._last_seq, limit=_PAGE
                )
            if not len(keys):
                return added
            if self._index is None:
                self._index = self._new(matrix.shape[1])
            if matrix.shape[1] == self._index.ndim:
                fresh = ~np.asarray(self._index.contains(keys), dtype=bool)
                if fresh.any():
                    self._index.add(keys[fresh], matrix[fresh])
                    added += int(fresh.sum())
            self._last_seq = int(keys[-1])
            self._unsaved += len(keys)
            if len(keys) < _PAGE:
                return added

    # -- searching and removing -------------------------------------------------------------

    def search(self, query: npt.ArrayLike, count: int) -> list[tuple[int, float]]:
        """The ``count`` nearest keys to ``query`` with their cosine similarity, best first
        (after catching up)."""
        with self._lock:
            self.catch_up()
            if self._index is None or not len(self._index) or count < 1:
                return []
            q = np.asarray(query, dtype=np.float32).reshape(-1)
            if q.shape[0] != self._index.ndim:
                raise ValueError(f"query has {q.shape[0]} dimensions, the index {self._index.ndim}")
            matches = self._index.search(q, min(count, len(self._index)))
            return [
                (int(k), 1.0 - float(d))
                for k, d in zip(matches.keys, matches.distances, strict=True)
            ]

    def remove(self, keys: Sequence[int]) -> int:
        """Remove ``keys`` (those present); returns how many were."""
        with self._lock:
            if self._index is None or not keys:
                return 0
            array = np.asarray(keys, dtype=np.uint64)
            present = array[np.asarray(self._index.contains(array), dtype=bool)]
            if not len(present):
                return 0
            self._index.remove(present)
            self._unsaved += len(present)
            return len(present)

    # -- files ------------------------------------------------------------------------------

    def save(self) -> None:
        """Write the index and its sidecar (atomically; old index files are removed)."""
        with self._lock:
            if self._index is None:
                return
            with _file_lock(self.directory):
                if _read_epoch(self.directory) != self._epoch:
                    return  # dropped meanwhile: the next catch-up rebuilds
                self._save()

    def _save(self) -> None:
        assert self._index is not None
        name = f"{self._slug}.{self._last_seq}-{uuid.uuid4().hex[:8]}.usearch"
        tmp = self.directory / f".{name}.tmp"
        self._index.save(str(tmp))
        os.replace(tmp, self.directory / name)
        meta = {
            "format": _FORMAT,
            "model": self.model,
            "dim": int(self._index.ndim),
            "database": self._database,
            "last_seq": self._last_seq,
            "epoch": self._epoch,
            "count": len(self._index),
            "file": name,
        }
        tmp_meta = self.directory / f".{self._slug}.{uuid.uuid4().hex[:8]}.json.tmp"
        tmp_meta.write_text(json.dumps(meta, indent=1))
        os.replace(tmp_meta, self.sidecar)
        for old in self.directory.glob(f"{self._slug}.*.usearch"):
            if old.name != name:
                old.unlink(missing_ok=True)
        self._unsaved, self._saved_at = 0, time.monotonic()

    def forget(self) -> None:
        """Forget the in-memory index: the next use opens it again."""
        with self._lock:
            self._index, self._last_seq, self._opened, self._unsaved = None, 0, False, 0


class IndexManager:
    """The indexes of every (project, model), opened on first use.

    Parameters
    ----------
    engine
        The hot store (the truth the indexes follow).
    directory
        Where indexes are kept (the data directory's ``indexes/``).
    options
        Passed to each :class:`VectorIndex` (HNSW ``connectivity``, ``expansion_add``,
        ``expansion_search``; ``save_after`` additions or ``save_seconds``).
    """

    def __init__(self, engine: Engine, directory: str | Path, **options: Any) -> None:
        self.engine = engine
        self.directory = Path(directory).expanduser()
        self.options = options
        self._indexes: dict[tuple[int, str], VectorIndex] = {}
        self._lock = threading.Lock()

    def index(self, project_id: int, model: str) -> VectorIndex:
        """The index of ``project_id``'s vectors of ``model`` (opened, or rebuilt, once)."""
        with self._lock:
            found = self._indexes.get((project_id, model))
            if found is None:
                found = VectorIndex(self.engine, self.directory, project_id, model, **self.options)
                self._indexes[(project_id, model)] = found
        return found

    def search(
        self, project_id: int, model: str, query: npt.ArrayLike, count: int
    ) -> list[tuple[int, float]]:
        """The ``count`` nearest ``seq`` keys with their cosine similarity, best first."""
        return self.index(project_id, model).search(query, count)

    def remove(self, project_id: int, keys: Sequence[int], model: str | None = None) -> int:
        """Remove ``keys`` from the project's open indexes (of ``model``, or of every model)."""
        with self._lock:
            found = [
                ix
                for (pid, m), ix in self._indexes.items()
                if pid == project_id and model in (None, m)
            ]
        return sum(ix.remove(keys) for ix in found)

    def drop(self, project_id: int) -> None:
        """Delete the project's index files and renew its epoch: erasure calls this after
        deleting vectors, and the next search in any process rebuilds from the table."""
        with self._lock:
            for (pid, _), ix in list(self._indexes.items()):
                if pid == project_id:
                    ix.forget()
        folder = self.directory / str(project_id)
        with _file_lock(folder):
            tmp = folder / f".epoch.{uuid.uuid4().hex[:8]}.tmp"
            tmp.write_text(uuid.uuid4().hex)
            os.replace(tmp, folder / "epoch")
            for path in [*folder.glob("*.usearch"), *folder.glob("*.json")]:
                path.unlink(missing_ok=True)

    def save_all(self) -> None:
        """Save every open index that has unsaved changes (at shutdown)."""
        with self._lock:
            found = list(self._indexes.values())
        for ix in found:
            if ix._unsaved:
                ix.save()
