"""Name clusters by their distinctive words (class-based TF-IDF) and pick examples.

c-TF-IDF (Grootendorst, BERTopic) treats all the texts of one cluster as one document: a
term's frequency in a cluster is normalised by the cluster's word count, and weighted by
``log(1 + A / f_t)``, where ``A`` is the average number of words per cluster and ``f_t`` the
term's frequency over all clusters. Words frequent in one cluster and rare elsewhere win.

Examples
--------
>>> docs = {
...     1: ["my card was declined", "card declined at the shop", "why is my card declined"],
...     2: ["reset my password", "forgot password", "password reset link expired"],
... }
>>> names = {c: name_of(words) for c, words in ctfidf_keywords(docs, top=3).items()}
>>> names[1]
'card · card declined · declined'
>>> names[2]
'password · reset · expired'

References
----------
M. Grootendorst, "BERTopic: Neural topic modeling with a class-based TF-IDF procedure",
arXiv:2203.05794, 2022.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from sklearn.feature_extraction.text import CountVectorizer

__all__ = ["Background", "ctfidf_keywords", "name_of", "representatives", "terms"]

# unigrams and bigrams of the lowercased text, English stop words left out (before the bigrams
# are formed): the terms sklearn's CountVectorizer counts, one class's texts at a time
_analyze = CountVectorizer(
    stop_words="english", ngram_range=(1, 2), lowercase=True
).build_analyzer()


def terms(texts: Sequence[str]) -> Counter[str]:
    """The c-TF-IDF terms of one class's ``texts`` (joined), counted.

    >>> sorted(terms(["The refund is late", "refund"]).items())
    [('late', 1), ('late refund', 1), ('refund', 2), ('refund late', 1)]
    """
    return Counter(_analyze(" ".join(texts)))


class Background:
    """Classes that names are weighed against but that are not named themselves.

    The other clusters of :func:`ctfidf_keywords`, one text each, kept by id: :meth:`sync`
    analyses only the texts that changed since the last call, so a caller that keeps one
    ``Background`` between runs does not count the whole corpus again each time. The result
    is the same as passing every class to :func:`ctfidf_keywords` afresh.

    Examples
    --------
    >>> background = Background()
    >>> background.sync({5: "card declined", 6: "password reset"})
    >>> len(background), background.words, background.frequency["card"]
    (2, 6, 1)
    >>> background.sync({5: "card declined card"})
    >>> len(background), background.words, background.frequency["password"]
    (1, 5, 0)
    """

    def __init__(self) -> None:
        self._texts: dict[int, str] = {}
        self._counts: dict[int, Counter[str]] = {}
        self.frequency: Counter[str] = Counter()
        """Each term's count over all the classes."""
        self.words = 0
        """The count of all terms of all the classes."""

    def __len__(self) -> int:
        return len(self._texts)

    def sync(self, texts: Mapping[int, str]) -> None:
        """Make the classes exactly ``texts`` (each class's text, by id)."""
        for cid in [c for c, text in self._texts.items() if texts.get(c) != text]:
            del self._texts[cid]
            gone = self._counts.pop(cid)
            self.frequency.subtract(gone)
            self.words -= gone.total()
            for term in gone:  # no count of zero is kept (nor the word it names)
                if self.frequency[term] <= 0:
                    del self.frequency[term]
        for cid, text in texts.items():
            if cid not in self._texts:
                self._texts[cid] = text
                self._counts[cid] = counts = terms([text])
                self.frequency.update(counts)
                self.words += counts.total()


def ctfidf_keywords(
    docs_by_cluster: Mapping[int, Sequence[str]],
    top: int = 5,
    *,
    background: Background | None = None,
) -> dict[int, list[str]]:
    """The ``top`` c-TF-IDF terms (unigrams and bigrams) of each cluster, best first.

    Parameters
    ----------
    docs_by_cluster
        The texts of each cluster, by cluster id.
    top
        How many terms per cluster.
    background
        More classes, weighed against (they count in ``A`` and ``f_t``) but not named; the
        same as adding them to ``docs_by_cluster`` and leaving their terms out of the result.

    Returns
    -------
    dict
        Each cluster id to its terms; English stop words are left out, text is lowercased,
        terms of zero weight are never returned (a cluster of only stop words gets ``[]``).
        Ties are broken alphabetically, so the result is deterministic.

    Examples
    --------
    >>> ctfidf_keywords({0: ["the refund is late"], 1: ["the app crashes"]}, top=2)
    {0: ['late', 'refund'], 1: ['app', 'app crashes']}
    >>> background = Background()
    >>> background.sync({1: "the app crashes"})
    >>> ctfidf_keywords({0: ["the refund is late"]}, top=2, background=background)
    {0: ['late', 'refund']}
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top!r}")
    counts = {cid: terms(docs) for cid, docs in docs_by_cluster.items()}
    if not counts:
        return {}
    frequency: Counter[str] = Counter()
    for c in counts.values():
        frequency.update(c)
    classes, words = len(counts), frequency.total()
    if background is not None:
        classes += len(background)
        words += background.words
    # the weights of all the terms of the named classes, computed as over the whole matrix
    # (a term's frequency over all classes is exact: sums of counts), only sparse
    vocabulary = sorted(frequency)
    index = {t: j for j, t in enumerate(vocabulary)}
    others: Mapping[str, int] = background.frequency if background is not None else {}
    f_t = np.array([frequency[t] + others.get(t, 0) for t in vocabulary], dtype=np.float64)
    average = float(words) / classes  # A: the mean of the classes' word counts
    idf = np.log(1.0 + average / f_t)
    out: dict[int, list[str]] = {}
    for cid, c in counts.items():
        own = sorted(c)  # alphabetical: ties keep this order
        x = np.array([c[t] for t in own], dtype=np.float64)
        weights = x / float(x.sum() or 1.0) * idf[[index[t] for t in own]]
        order = np.argsort(-weights, kind="stable")[:top]
        out[cid] = [own[j] for j in order.tolist() if weights[j] > 0]
    return out


def name_of(keywords: Sequence[str], n: int = 3) -> str:
    """A display name: the first ``n`` keywords joined with ``" · "``.

    >>> name_of(["refund", "late", "money", "bank"])
    'refund · late · money'
    >>> name_of([])
    ''
    """
    return " · ".join(keywords[:n])


def representatives(
    vectors: npt.ArrayLike, centroid: npt.ArrayLike, k: int = 3
) -> npt.NDArray[np.int64]:
    """Indices of the ``k`` rows of ``vectors`` most cosine-similar to ``centroid``.

    Best first; ties keep the lower index. Zero rows rank last.

    >>> rng = np.random.default_rng(0)
    >>> vectors = rng.normal(size=(6, 4))
    >>> representatives(vectors, vectors[4] + 0.01, k=2).tolist()[0]
    4
    """
    x = np.asarray(vectors, dtype=np.float64)
    c = np.asarray(centroid, dtype=np.float64).ravel()
    if x.ndim != 2 or x.shape[1] != len(c):
        raise ValueError(f"vectors of shape {x.shape} do not match a centroid of {len(c)}")
    norms = np.linalg.norm(x, axis=1) * (np.linalg.norm(c) or 1.0)
    sims = np.divide(x @ c, norms, out=np.full(len(x), -np.inf), where=norms > 0)
    order: npt.NDArray[np.int64] = np.argsort(-sims, kind="stable")[: max(k, 0)].astype(np.int64)
    return order
