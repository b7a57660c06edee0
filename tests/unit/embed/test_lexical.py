"""The lexical fallback: deterministic, normalised, closer for shared words."""

from __future__ import annotations

import numpy as np
import pytest

from closedloop.embed.base import Embedder
from closedloop.embed.lexical import LexicalEmbedder

TEXTS = [
    "how do I reset my password",
    "I need to reset my password",
    "what's the weather like tomorrow",
    "Zahlung fehlgeschlagen 💳",
]


def test_two_instances_make_identical_vectors() -> None:
    a = LexicalEmbedder().embed(TEXTS)
    b = LexicalEmbedder().embed(list(reversed(TEXTS)))[::-1]
    assert np.array_equal(a, b), "vectors made at different times must be comparable"


def test_vectors_are_float32_unit_rows_of_the_configured_dim() -> None:
    e = LexicalEmbedder(dim=128)
    v = e.embed(TEXTS)
    assert isinstance(e, Embedder)
    assert v.dtype == np.float32 and v.shape == (4, 128) and e.dim == 128
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)


def test_a_paraphrase_sharing_words_is_nearer_than_an_unrelated_text() -> None:
    v = LexicalEmbedder().embed(TEXTS[:3])
    assert v[0] @ v[1] > 0.6
    assert v[0] @ v[2] < 0.3


def test_the_name_carries_the_parameters_so_different_configurations_never_mix() -> None:
    names = {LexicalEmbedder().name, LexicalEmbedder(dim=128).name, LexicalEmbedder(seed=1).name}
    assert len(names) == 3
    assert LexicalEmbedder().kind == "lexical"


def test_no_texts_give_an_empty_matrix_and_an_empty_text_a_zero_row() -> None:
    e = LexicalEmbedder()
    assert e.embed([]).shape == (0, 256)
    assert not e.embed([""]).any()


@pytest.mark.parametrize("kwargs", [{"dim": 1}, {"char_weight": -1.0}])
def test_invalid_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LexicalEmbedder(**kwargs)  # type: ignore[arg-type]
