"""The real sentence model, loaded once per test session (loading takes seconds)."""

from __future__ import annotations

import pytest

from closedloop.embed.sentence import SentenceEmbedder


@pytest.fixture(scope="session")
def sentence_embedder() -> SentenceEmbedder:
    embedder = SentenceEmbedder()
    embedder.embed(["load the model once"])
    return embedder
