"""Embedders: one batch interface, a cache keyed by the text's hash, a real offline
sentence-embedding model by default and a lexical fallback.

Only the interface and the cache are imported here; the model and the fallback load when
:func:`load_embedder` picks one, so importing this package stays cheap.
"""

from __future__ import annotations

from closedloop.embed.base import Embedder, load_embedder, normalize_rows, text_hash
from closedloop.embed.cache import CacheStats, EmbeddingCache

__all__ = [
    "CacheStats",
    "Embedder",
    "EmbeddingCache",
    "load_embedder",
    "normalize_rows",
    "text_hash",
]
