"""A cache in front of an embedder: a text is embedded once per model.

The key is the SHA-256 of the text (:func:`~closedloop.embed.base.text_hash`) under the
embedder's ``name``. Two layers: a bounded in-process LRU, and, given an engine, the
``embedding_cache`` table, shared by every process on the store. A batch embeds only its
misses, in one call to the model.

Examples
--------
>>> from closedloop.embed.lexical import LexicalEmbedder
>>> cache = EmbeddingCache(LexicalEmbedder())
>>> _ = cache.embed(["a", "b"]); _ = cache.embed(["b", "c"])
>>> cache.stats
CacheStats(hits=1, misses=3, stored_hits=0)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from closedloop.embed.base import Embedder, EmbedderKind, FloatArray, text_hash
from closedloop.store import models
from closedloop.store.db import utcnow

__all__ = ["CacheStats", "EmbeddingCache"]

_CHUNK = 400  # keys per IN (...) list


@dataclass(frozen=True)
class CacheStats:
    """Texts answered from memory (``hits``), from the table (``stored_hits``), and embedded
    by the model (``misses``), since the cache was made."""

    hits: int = 0
    misses: int = 0
    stored_hits: int = 0


class EmbeddingCache:
    """An :class:`~closedloop.embed.base.Embedder` that remembers what it embedded.

    Parameters
    ----------
    embedder
        The embedder it wraps; ``name``, ``dim`` and ``kind`` are its.
    engine
        The store, for the persistent layer (``embedding_cache``); ``None``: memory only.
    max_entries
        Most vectors kept in memory (default 10 000: about 15 MB at 384 dimensions).
    """

    def __init__(
        self, embedder: Embedder, *, engine: Engine | None = None, max_entries: int = 10_000
    ) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must be non-negative")
        self.embedder = embedder
        self.engine = engine
        self.max_entries = max_entries
        self.name: str = embedder.name
        self.kind: EmbedderKind = embedder.kind
        self._lru: OrderedDict[str, FloatArray] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._stored = 0

    def __repr__(self) -> str:
        return f"EmbeddingCache({self.embedder!r}, max_entries={self.max_entries})"

    @property
    def dim(self) -> int:
        """Length of every vector."""
        return self.embedder.dim

    @property
    def stats(self) -> CacheStats:
        """Hits and misses so far."""
        return CacheStats(hits=self._hits, misses=self._misses, stored_hits=self._stored)

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Vectors of ``texts``; only texts seen by neither layer reach the model."""
        keys = [text_hash(t) for t in texts]
        found: dict[str, FloatArray] = {}
        with self._lock:
            for key in keys:
                vector = self._lru.get(key)
                if vector is not None:
                    self._lru.move_to_end(key)
                    found[key] = vector
        self._count(hits=sum(1 for k in keys if k in found))
        wanted = list(dict.fromkeys(k for k in keys if k not in found))
        if wanted and self.engine is not None:
            stored = self._read(wanted)
            found.update(stored)
            self._count(stored=sum(1 for k in keys if k in stored))
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in found:
                missing.setdefault(key, text)
        if missing:
            computed = self.embedder.embed(list(missing.values()))
            fresh = dict(zip(missing, computed, strict=True))
            found.update(fresh)
            self._count(misses=len(missing))
            if self.engine is not None:
                self._write(fresh)
        with self._lock:
            for key in dict.fromkeys(keys):
                self._lru[key] = found[key]
                self._lru.move_to_end(key)
            while len(self._lru) > self.max_entries:
                self._lru.popitem(last=False)
        if not keys:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def clear(self) -> None:
        """Forget the in-memory layer (the table is kept)."""
        with self._lock:
            self._lru.clear()

    def _count(self, *, hits: int = 0, misses: int = 0, stored: int = 0) -> None:
        with self._lock:
            self._hits += hits
            self._misses += misses
            self._stored += stored

    def _read(self, keys: Sequence[str]) -> dict[str, FloatArray]:
        assert self.engine is not None
        c = models.embedding_cache
        out: dict[str, FloatArray] = {}
        dim = self.dim
        with self.engine.connect() as conn:
            for start in range(0, len(keys), _CHUNK):
                rows = conn.execute(
                    sa.select(c.c.text_hash, c.c.vector).where(
                        c.c.model == self.name, c.c.text_hash.in_(keys[start : start + _CHUNK])
                    )
                )
                for key, blob in rows:
                    vector = np.frombuffer(blob, dtype=np.float32)
                    if vector.shape == (dim,):  # a stale entry of another size is ignored
                        out[key] = vector
        return out

    def _write(self, fresh: dict[str, FloatArray]) -> None:
        assert self.engine is not None
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        now = utcnow()
        rows = [
            {
                "model": self.name,
                "text_hash": key,
                "vector": np.asarray(v, dtype=np.float32).tobytes(),
                "created_at": now,
            }
            for key, v in fresh.items()
        ]
        with self.engine.begin() as conn:
            conn.execute(dialect.insert(models.embedding_cache).on_conflict_do_nothing(), rows)
