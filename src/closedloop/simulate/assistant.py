"""The simulated product: nearest-neighbour intent recognition over a few-shot prompt, and
answers from a knowledge base.

The prompt is a set of labelled ``(text, intent)`` examples; a prompt candidate is a new
example set (:meth:`Assistant.with_examples`). The knowledge base maps an intent to a
:class:`~closedloop.simulate.world.KBEntry`; a knowledge-base refresh adds or rewrites
entries (:meth:`Assistant.set_answer`). Each distinct text is embedded once, by a
:class:`TextVectors` shared by every assistant of a run.

Examples
--------
>>> from closedloop.embed.lexical import LexicalEmbedder
>>> from closedloop.simulate.world import KBEntry
>>> bot = Assistant(
...     TextVectors(LexicalEmbedder()),
...     [("cancel my card", "card"), ("what's the weather", "weather")],
...     {"card": KBEntry("call us", 0)},
...     k=1,
... )
>>> bot.predict(["please cancel my card"])
['card']
>>> bot.model_version
'knn-k1-cosine/lexical-v1-d256-s0-c1'
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from closedloop.embed.base import Embedder, FloatArray
from closedloop.errors import ConfigError
from closedloop.simulate.world import KBEntry

__all__ = ["Assistant", "TextVectors"]


class TextVectors:
    """An in-memory embedding cache keyed by text: each distinct text is embedded once.

    It is an :class:`~closedloop.embed.base.Embedder` too (the wrapped one's ``name``,
    ``kind`` and ``dim``), so the closed-loop arm's pipeline embeds through the same cache as
    the assistants: a text the app saw is never embedded a second time by the store.
    """

    def __init__(self, embedder: Embedder) -> None:
        self.embedder = embedder
        self.name = embedder.name
        self.kind = embedder.kind
        self.dim = embedder.dim
        self._rows: dict[str, int] = {}
        self._matrix: FloatArray = np.zeros((1024, embedder.dim), dtype=np.float32)
        self.embedded = 0
        """How many texts were sent to the embedder (each distinct text once)."""

    def vectors(self, texts: Sequence[str]) -> FloatArray:
        """Unit vectors of ``texts``, shape ``(len(texts), dim)``, embedding only new texts."""
        new = list(dict.fromkeys(t for t in texts if t not in self._rows))
        if new:
            fresh = np.asarray(self.embedder.embed(new), dtype=np.float32)
            start, end = self.embedded, self.embedded + len(new)
            if end > self._matrix.shape[0]:  # grow by doubling: amortised linear copying
                grown = np.zeros((max(end, 2 * self._matrix.shape[0]), fresh.shape[1]), np.float32)
                grown[:start] = self._matrix[:start]
                self._matrix = grown
            self._matrix[start:end] = fresh
            self._rows.update({t: start + i for i, t in enumerate(new)})
            self.embedded = end
        index = np.fromiter((self._rows[t] for t in texts), dtype=np.int64, count=len(texts))
        out: FloatArray = self._matrix[index]
        return out

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """The :class:`~closedloop.embed.base.Embedder` interface: :meth:`vectors` (a copy)."""
        return self.vectors(texts)


class Assistant:
    """Recognises intents by ``k`` nearest examples (cosine, similarity-weighted vote) and
    answers from its knowledge base."""

    def __init__(
        self,
        vectors: TextVectors,
        examples: Iterable[tuple[str, str]],
        kb: Mapping[str, KBEntry],
        *,
        k: int = 3,
    ) -> None:
        if k < 1:
            raise ConfigError("k must be at least 1")
        self.vectors = vectors
        self.k = k
        self.kb: dict[str, KBEntry] = dict(kb)
        self._examples: dict[str, str] = {}
        self.add_examples(examples)

    @property
    def model_version(self) -> str:
        """Names the recogniser's settings and the embedder."""
        return f"knn-k{self.k}-cosine/{self.vectors.embedder.name}"

    @property
    def examples(self) -> list[tuple[str, str]]:
        """The prompt: ``(text, intent)`` examples (a text has one label; the last one wins)."""
        return list(self._examples.items())

    def add_examples(self, examples: Iterable[tuple[str, str]]) -> None:
        """Add (or relabel) examples in place."""
        for text, intent in examples:
            self._examples[text] = intent
        self._index: tuple[FloatArray, list[str], list[str]] | None = None

    def with_examples(self, examples: Iterable[tuple[str, str]]) -> Assistant:
        """A prompt candidate: a copy with ``examples`` added; this assistant is unchanged."""
        twin = Assistant(self.vectors, self.examples, self.kb, k=self.k)
        twin.add_examples(examples)
        return twin

    def set_answer(self, intent: str, entry: KBEntry) -> None:
        """A knowledge-base refresh: add or rewrite the answer of ``intent``."""
        self.kb[intent] = entry

    def _built(self) -> tuple[FloatArray, list[str], list[str]]:
        if self._index is None:
            texts = list(self._examples)
            labels = [self._examples[t] for t in texts]
            names = sorted(set(labels))
            self._index = (self.vectors.vectors(texts), labels, names)
        return self._index

    def predict(self, texts: Sequence[str]) -> list[str]:
        """The recognised intent of each text (``""`` when the prompt is empty)."""
        matrix, labels, names = self._built()
        if not texts or not labels:
            return ["" for _ in texts]
        sims = self.vectors.vectors(texts) @ matrix.T
        k = min(self.k, len(labels))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        code = {n: i for i, n in enumerate(names)}
        label_codes = np.array([code[lab] for lab in labels])
        votes = np.zeros((len(texts), len(names)), dtype=np.float64)
        rows = np.repeat(np.arange(len(texts)), k)
        np.add.at(
            votes,
            (rows, label_codes[top].ravel()),
            sims[np.arange(len(texts))[:, None], top].ravel(),
        )
        return [names[int(i)] for i in votes.argmax(axis=1)]

    def answer(self, intent: str) -> str:
        """The knowledge-base answer of ``intent`` (a fallback when there is none)."""
        entry = self.kb.get(intent)
        return entry.answer if entry is not None else "Sorry, I don't know about that yet."
