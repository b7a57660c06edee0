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

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from sklearn.feature_extraction.text import CountVectorizer

__all__ = ["ctfidf_keywords", "name_of", "representatives"]


def ctfidf_keywords(
    docs_by_cluster: Mapping[int, Sequence[str]], top: int = 5
) -> dict[int, list[str]]:
    """The ``top`` c-TF-IDF terms (unigrams and bigrams) of each cluster, best first.

    Parameters
    ----------
    docs_by_cluster
        The texts of each cluster, by cluster id.
    top
        How many terms per cluster.

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
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, got {top!r}")
    ids = list(docs_by_cluster)
    if not ids:
        return {}
    joined = [" ".join(docs_by_cluster[i]) for i in ids]
    vectorizer = CountVectorizer(stop_words="english", ngram_range=(1, 2), lowercase=True)
    try:
        counts = vectorizer.fit_transform(joined)
    except ValueError:  # empty vocabulary: nothing but stop words
        return {i: [] for i in ids}
    terms = vectorizer.get_feature_names_out()
    x = np.asarray(counts.toarray(), dtype=np.float64)
    words_per_class = x.sum(axis=1)
    average = float(words_per_class.mean())
    idf = np.log(1.0 + average / x.sum(axis=0))
    tf = x / np.where(words_per_class > 0, words_per_class, 1.0)[:, None]
    weights = tf * idf
    out: dict[int, list[str]] = {}
    alphabetical = np.argsort(terms, kind="stable")
    for row, cid in enumerate(ids):
        w = weights[row, alphabetical]
        order = alphabetical[np.argsort(-w, kind="stable")]
        out[cid] = [str(terms[j]) for j in order[:top] if weights[row, j] > 0]
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
