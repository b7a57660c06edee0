"""The embedding cache in memory (the persistent layer is tested on both databases in
tests/integration/test_vectors.py)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from closedloop.embed.base import Embedder, FloatArray
from closedloop.embed.cache import CacheStats, EmbeddingCache
from closedloop.embed.lexical import LexicalEmbedder


class Counting:
    """An embedder that counts the texts and calls that reach it."""

    def __init__(self) -> None:
        self.inner = LexicalEmbedder(dim=32)
        self.name = self.inner.name
        self.kind = self.inner.kind
        self.calls: list[list[str]] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> FloatArray:
        self.calls.append(list(texts))
        return self.inner.embed(texts)


def test_hits_do_not_call_the_model_and_misses_go_in_one_batch() -> None:
    model = Counting()
    cache = EmbeddingCache(model)
    assert isinstance(cache, Embedder)
    first = cache.embed(["a", "b", "a"])
    second = cache.embed(["b", "c", "a", "d"])
    assert model.calls == [["a", "b"], ["c", "d"]]
    assert np.array_equal(first[0], first[2]) and np.array_equal(second[2], first[0])
    assert np.array_equal(second, model.inner.embed(["b", "c", "a", "d"]))
    assert cache.stats == CacheStats(hits=2, misses=4, stored_hits=0)
    cache.embed(["a", "b", "c", "d"])
    assert len(model.calls) == 2


def test_the_memory_layer_is_bounded_least_recently_used_first() -> None:
    model = Counting()
    cache = EmbeddingCache(model, max_entries=2)
    cache.embed(["a"])
    cache.embed(["b"])
    cache.embed(["a"])  # a is now the most recent
    cache.embed(["c"])  # evicts b
    cache.embed(["a", "c"])
    assert model.calls == [["a"], ["b"], ["c"]]
    cache.embed(["b"])
    assert model.calls[-1] == ["b"]


def test_the_cache_has_its_embedders_identity_and_an_empty_batch_is_empty() -> None:
    model = Counting()
    cache = EmbeddingCache(model)
    assert (cache.name, cache.kind, cache.dim) == (model.name, "lexical", 32)
    assert cache.embed([]).shape == (0, 32)
    assert model.calls == []
