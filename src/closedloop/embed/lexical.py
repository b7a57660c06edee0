"""The lexical fallback embedder: hashed word and character n-grams, randomly projected.

Why it is only a fallback: it sees spelling, not meaning. "cancel my card" and "block my
card" share words and come out close; "I lost my wallet" and "my card is gone" share none and
come out far apart, where a sentence model puts them together. It needs no model files and no
torch (scikit-learn only), so closedloop still clusters and searches text when the
``[embed]`` extra is not installed; ``load_embedder("auto")`` warns when it falls back.

It is stateless and deterministic: nothing is fitted on data. A ``HashingVectorizer`` maps
word 1-2-grams and character 3-5-grams to 2**18 hashed features (each family L2-normalised,
then summed with fixed weights), and a ``SparseRandomProjection`` with a fixed seed maps them to
``dim`` dimensions, so vectors made at different times, in different processes, are
comparable. Its ``name`` carries its parameters, so vectors of a different configuration are
never compared with these.

Examples
--------
>>> e = LexicalEmbedder()
>>> a, b, c = e.embed(["cancel my card", "please cancel my card", "what's the weather"])
>>> bool(a @ b > a @ c)
True
>>> LexicalEmbedder().embed(["cancel my card"])[0].tolist() == a.tolist()
True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.random_projection import SparseRandomProjection

from closedloop.embed.base import FloatArray, normalize_rows

__all__ = ["LexicalEmbedder"]

_FEATURES = 2**18


class LexicalEmbedder:
    """Hashed n-grams with a fixed random projection (see the module docstring).

    Parameters
    ----------
    dim
        Length of the vectors (default 256).
    seed
        Seed of the projection (default 0). Vectors of different seeds are not comparable,
        so the seed is part of :attr:`name`.
    char_weight
        Weight of the character n-grams against the word n-grams (default 1.0).
    """

    kind: Literal["lexical"] = "lexical"

    def __init__(self, dim: int = 256, *, seed: int = 0, char_weight: float = 1.0) -> None:
        if dim < 2:
            raise ValueError("dim must be at least 2")
        if char_weight < 0:
            raise ValueError("char_weight must be non-negative")
        self._dim = dim
        self.seed = seed
        self.char_weight = char_weight
        self.name = f"lexical-v1-d{dim}-s{seed}-c{char_weight:g}"
        common: dict[str, Any] = {
            "n_features": _FEATURES,
            "alternate_sign": False,
            "lowercase": True,
            "norm": "l2",
            "dtype": np.float32,
        }
        self._words = HashingVectorizer(analyzer="word", ngram_range=(1, 2), **common)
        self._chars = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)
        projection = SparseRandomProjection(n_components=dim, random_state=seed, dense_output=True)
        # "fitting" only draws the random matrix from the seed and the number of features
        projection.fit(np.zeros((1, _FEATURES), dtype=np.float32))
        self._projection = projection

    def __repr__(self) -> str:
        return f"LexicalEmbedder(name={self.name!r})"

    @property
    def dim(self) -> int:
        """Length of every vector."""
        return self._dim

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Vectors of ``texts`` (float32, unit rows; an empty text gives a zero row)."""
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        items = list(texts)
        features = self._words.transform(items) + self.char_weight * self._chars.transform(items)
        return normalize_rows(self._projection.transform(features))
