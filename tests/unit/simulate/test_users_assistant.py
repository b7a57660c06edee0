"""Users react at their parameters' rates and leave after repeated bad answers; the assistant
recognises by nearest examples and embeds each text once."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from closedloop.embed.base import FloatArray
from closedloop.embed.lexical import LexicalEmbedder
from closedloop.errors import ConfigError
from closedloop.simulate.assistant import Assistant, TextVectors
from closedloop.simulate.users import Retention, UserParams, react
from closedloop.simulate.world import KBEntry

N = 20_000


def _rates(correct: bool, params: UserParams) -> dict[str, float]:
    rng = np.random.default_rng(7)
    draws = [react(correct, rng, params, right_answer="right") for _ in range(N)]
    return {
        "thumb": sum(r.thumbs is not None for r in draws) / N,
        "down": sum(r.thumbs == -1 for r in draws)
        / max(sum(r.thumbs is not None for r in draws), 1),
        "correction": sum(r.correction == "right" for r in draws) / N,
        "edit": sum(r.signal == "edit" for r in draws) / N,
        "rephrase": sum(r.signal == "rephrase" for r in draws) / N,
        "abandon": sum(r.signal == "abandon" for r in draws) / N,
        "nothing": sum(not r.explicit and r.signal is None for r in draws) / N,
    }


def test_reaction_rates_match_the_parameters() -> None:
    p = UserParams()
    wrong = _rates(False, p)
    assert wrong["thumb"] == pytest.approx(p.thumbs_wrong, abs=0.01)
    assert wrong["down"] == pytest.approx(1 - p.thumbs_noise, abs=0.03)
    assert wrong["correction"] == pytest.approx(p.correction_wrong, abs=0.005)
    assert wrong["edit"] == pytest.approx(p.edit_wrong, abs=0.01)
    assert wrong["rephrase"] == pytest.approx(p.rephrase_wrong, abs=0.01)
    assert wrong["abandon"] == pytest.approx(p.abandon_wrong, abs=0.01)
    right = _rates(True, p)
    assert right["thumb"] == pytest.approx(p.thumbs_right, abs=0.005)
    assert right["down"] == pytest.approx(p.thumbs_noise, abs=0.05)
    assert right["correction"] == 0.0 and right["edit"] == 0.0
    assert right["rephrase"] == pytest.approx(p.rephrase_right, abs=0.005)
    assert right["nothing"] > 0.9  # most users give no feedback at all


def test_rates_follow_changed_parameters() -> None:
    p = UserParams(thumbs_wrong=0.5, thumbs_noise=0.0, correction_wrong=0.3)
    wrong = _rates(False, p)
    assert wrong["thumb"] == pytest.approx(0.5, abs=0.015)
    assert wrong["down"] == 1.0
    assert wrong["correction"] == pytest.approx(0.3, abs=0.015)


def test_retention_drops_only_after_repeated_bad_answers() -> None:
    params = UserParams()
    good, bad = Retention(100, params), Retention(100, params)
    rng = np.random.default_rng(0)
    for _ in range(30):
        for user in range(100):
            good.record(user, True, rng)
            if bad.active(user):
                bad.record(user, False, rng)
    assert good.retained_share == 1.0
    assert bad.retained_share < 0.1
    few = Retention(100, params)
    for user in range(100):
        for ok in [False] * (params.churn_bad - 1) + [True] * 20:
            few.record(user, ok, rng)
    assert few.retained_share == 1.0


def test_feedback_factor_scales_only_explicit_feedback() -> None:
    base = UserParams()
    double = base.with_feedback(2.0)
    assert double.thumbs_wrong == 2 * base.thumbs_wrong
    assert double.correction_wrong == 2 * base.correction_wrong
    assert double.edit_wrong == base.edit_wrong and double.churn_bad == base.churn_bad
    assert base.with_feedback(100.0).thumbs_wrong == 1.0
    assert base.with_feedback(1.0) == base


def test_invalid_user_parameters_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        UserParams(edit_wrong=0.6, rephrase_wrong=0.6)
    with pytest.raises(ConfigError):
        UserParams(churn_bad=11)
    with pytest.raises(ConfigError):
        UserParams().with_feedback(-1.0)


class CountingEmbedder:
    """The lexical embedder, counting the texts it is asked to embed."""

    def __init__(self) -> None:
        self.inner = LexicalEmbedder()
        self.name, self.kind, self.dim = self.inner.name, self.inner.kind, self.inner.dim
        self.texts: list[str] = []

    def embed(self, texts: Sequence[str]) -> FloatArray:
        self.texts.extend(texts)
        return self.inner.embed(texts)


def test_assistant_predicts_by_nearest_examples_and_embeds_each_text_once() -> None:
    counting = CountingEmbedder()
    vectors = TextVectors(counting)
    examples = [
        ("cancel my credit card", "cancel"),
        ("please cancel the card", "cancel"),
        ("what is the weather today", "weather"),
        ("will it rain tomorrow", "weather"),
    ]
    bot = Assistant(vectors, examples, {"cancel": KBEntry("done", 0)}, k=2)
    queries = ["cancel my card", "is it going to rain tomorrow", "cancel my card"]
    assert bot.predict(queries) == ["cancel", "weather", "cancel"]
    assert bot.predict(queries) == ["cancel", "weather", "cancel"]
    assert sorted(counting.texts) == sorted({t for t, _ in examples} | set(queries))
    assert "knn-k2-cosine" in bot.model_version and counting.name in bot.model_version


def test_the_cache_grows_past_its_first_block() -> None:
    vectors = TextVectors(LexicalEmbedder())
    texts = [f"request number {i}" for i in range(2500)]
    first = vectors.vectors(texts[:10])
    grown = vectors.vectors(texts)
    assert vectors.embedded == 2500 and grown.shape == (2500, vectors.embedder.dim)
    assert np.array_equal(grown[:10], first)
    assert np.allclose(np.linalg.norm(grown, axis=1), 1.0, atol=1e-5)


def test_a_prompt_candidate_and_a_kb_refresh() -> None:
    vectors = TextVectors(LexicalEmbedder())
    bot = Assistant(vectors, [("cancel my credit card", "cancel")], {}, k=1)
    candidate = bot.with_examples([("what is my balance", "balance")])
    assert bot.predict(["show my balance"]) == ["cancel"]
    assert candidate.predict(["show my balance"]) == ["balance"]
    assert "balance" not in bot.kb
    bot.set_answer("balance", KBEntry("it is 3", 5))
    assert bot.answer("balance") == "it is 3" and "don't know" in bot.answer("other")
