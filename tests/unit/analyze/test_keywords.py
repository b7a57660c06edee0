from __future__ import annotations

import numpy as np
import pytest

from closedloop.analyze.keywords import (
    Background,
    ctfidf_keywords,
    name_of,
    representatives,
    terms,
)

DOCS = {
    3: [
        "The refund has not arrived yet",
        "Where is my refund?",
        "I am still waiting for a refund for my order",
        "refund still pending after a week",
    ],
    8: [
        "The app crashes when I open it",
        "app crashes on startup",
        "Every time I upload a photo the app crashes",
    ],
    11: [
        "Please add a dark mode",
        "dark mode would be great",
        "is there a dark mode for the night?",
    ],
}


def test_keywords_name_the_obvious_word_of_each_cluster() -> None:
    keywords = ctfidf_keywords(DOCS, top=5)
    assert list(keywords) == [3, 8, 11]
    assert keywords[3][0] == "refund"
    assert set(keywords[8][:3]) >= {"app", "crashes"}
    assert "app crashes" in keywords[8]  # bigrams count
    assert set(keywords[11][:3]) >= {"dark", "mode"}
    assert all(len(words) == 5 for words in keywords.values())


def test_keywords_leave_out_stop_words_and_words_shared_by_every_cluster() -> None:
    docs = {1: ["the card is blocked", "my card is blocked"], 2: ["the card is lost", "lost it"]}
    keywords = ctfidf_keywords(docs, top=10)
    stop = {"the", "is", "my", "it", "a", "for", "i"}
    assert not stop & {w for words in keywords.values() for w in words}
    assert keywords[1][0] == "blocked" and keywords[2][0] == "lost"
    shared = ctfidf_keywords(DOCS, top=100)
    assert all("the" not in words for words in shared.values())


def test_keywords_of_only_stop_words_or_nothing_are_empty() -> None:
    assert ctfidf_keywords({}) == {}
    assert ctfidf_keywords({1: ["the and of"], 2: ["it is"]}) == {1: [], 2: []}
    with pytest.raises(ValueError):
        ctfidf_keywords(DOCS, top=0)


def test_keywords_are_deterministic() -> None:
    assert ctfidf_keywords(DOCS) == ctfidf_keywords(dict(reversed(list(DOCS.items()))))


def test_name_of_joins_the_first_three_keywords() -> None:
    assert name_of(["refund", "arrived", "waiting", "order"]) == "refund · arrived · waiting"
    assert name_of(["refund"]) == "refund"


def test_representatives_are_the_rows_nearest_the_centroid() -> None:
    rng = np.random.default_rng(0)
    centroid = rng.normal(size=8)
    vectors = rng.normal(size=(20, 8))
    vectors[[5, 12, 17]] = centroid + np.array([0.01, 0.05, 0.1])[:, None] * rng.normal(size=(3, 8))
    assert representatives(vectors, centroid, k=3).tolist() == [5, 12, 17]
    assert len(representatives(vectors, centroid, k=50)) == 20
    with pytest.raises(ValueError):
        representatives(vectors, centroid[:4])


OTHERS = {
    -1: "refund late refund arrived",
    -2: "card declined card shop",
    -3: "password reset reset link",
    -4: "app crashes startup photo",
}


def _with_others(docs: dict[int, list[str]], others: dict[int, str]) -> dict[int, list[str]]:
    """The keywords of ``docs`` when the others are ordinary classes (the reference)."""
    everything = ctfidf_keywords({**docs, **{cid: [text] for cid, text in others.items()}}, 8)
    return {cid: everything[cid] for cid in docs}


def test_a_background_weighs_like_the_same_classes_passed_as_docs() -> None:
    background = Background()
    background.sync(OTHERS)
    got = ctfidf_keywords(DOCS, top=8, background=background)
    assert got == _with_others(DOCS, OTHERS)
    assert got != ctfidf_keywords(DOCS, top=8), "the background changes the weights"


def test_a_synced_background_equals_a_fresh_one_after_changes() -> None:
    kept = Background()
    kept.sync(OTHERS)
    changed = {-1: "refund refund order", -3: OTHERS[-3], -5: "dark mode night", -6: ""}
    kept.sync(changed)  # one class changed, two left, two came
    fresh = Background()
    fresh.sync(changed)
    assert (len(kept), kept.words, kept.frequency) == (len(fresh), fresh.words, fresh.frequency)
    assert ctfidf_keywords(DOCS, top=8, background=kept) == _with_others(DOCS, changed)


def test_a_class_left_out_of_the_background_leaves_no_term_behind() -> None:
    background = Background()
    background.sync({1: "zebulon refund", 2: "refund order"})
    background.sync({2: "refund order"})
    assert "zebulon" not in background.frequency
    assert not any("zebulon" in term for term in background.frequency)
    assert background.frequency == terms(["refund order"])
