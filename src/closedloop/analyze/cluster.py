"""Group similar texts (by their embeddings) into issues and topics, without knowing how many.

:func:`cluster` is one batch: average-linkage agglomerative clustering on cosine distance,
cut at ``params.threshold``; groups smaller than ``params.min_size`` stay unassigned
(label ``-1``). :class:`IncrementalClusterer` is the periodic job: new vectors join the
nearest known cluster within the threshold, the rest wait in a bounded pending pool that is
re-clustered each step, and every group of at least ``min_size`` opens a cluster with a new,
never reused id.

Why this method and these defaults
----------------------------------
Chosen on the TRAIN splits only (seeded 3,000-query subsamples of Banking77 and CLINC150,
``python bench/cluster_eval.py --tune``, ``"model"`` embedder all-MiniLM-L6-v2), by the mean
NMI of both datasets with unassigned points counted as one extra cluster:

* complete linkage, threshold 0.7, ``min_size`` 3: 0.801 (flat from 0.65 to 0.75:
  0.798-0.801), the default; ``min_size`` 2 scores 0.814 (at 0.65) but opens issues on pairs;
* average linkage: at best 0.787 (threshold 0.55); single linkage chains everything
  (at best 0.54);
* HDBSCAN (``min_cluster_size`` 3/5/10): at best 0.653, leaving 39-63% of the short
  queries unassigned as noise.

``join_threshold`` 0.5 was chosen on the same train subsamples by streaming one half into
clusters of the other: tighter thresholds open duplicate clusters of known intents (0.35:
28 and 113 duplicates for the two datasets), looser ones absorb more (0.5: 0 and 25).

On the test splits (``python bench/cluster_eval.py``) the defaults reach NMI 0.781 on
Banking77 and 0.859 on CLINC150 in-scope, against 0.609 and 0.622 for TF-IDF + k-means told
the true number of intents.

Memory
------
Agglomerative clustering holds all ``n (n - 1) / 2`` pairwise distances: 5,000 points take
about 100 MB. :func:`cluster` refuses more than ``params.max_batch`` points (default 5,000);
larger corpora go through :class:`IncrementalClusterer`, whose pending pool is capped at
``params.max_pending`` (default 5,000, the oldest points dropped first).

Examples
--------
>>> rng = np.random.default_rng(0)
>>> centers = normalize_rows(rng.normal(size=(3, 32)))
>>> points = np.vstack([c + 0.05 * rng.normal(size=(10, 32)) for c in centers])
>>> points = np.vstack([points, rng.normal(size=(1, 32))])  # one outlier
>>> labels = cluster(normalize_rows(points), ClusterParams(threshold=0.3))
>>> labels.tolist()  # doctest: +NORMALIZE_WHITESPACE
[2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, -1]
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from closedloop.embed.base import FloatArray, normalize_rows

__all__ = [
    "Cluster",
    "ClusterParams",
    "IncrementalClusterer",
    "Key",
    "Linkage",
    "Pending",
    "StepResult",
    "cluster",
    "nearest",
]

Key = Hashable
"""What the caller calls a vector (an event id, a row id): returned in :class:`StepResult`."""

Linkage = Literal["average", "complete", "single"]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True, kw_only=True)
class ClusterParams:
    """The configuration of clustering.

    ``threshold`` is a cosine distance (``1 - cosine similarity``, default 0.7): two groups
    merge when their ``linkage`` distance (default ``"complete"``: the farthest pair) is at
    most this. ``join_threshold`` (default 0.5) is the cosine distance to a known cluster's
    centroid within which :class:`IncrementalClusterer` adds a new vector to it: a centroid
    is nearer its members than they are to each other, so it is tighter. Groups smaller than
    ``min_size`` (default 3) stay unassigned. ``max_batch`` caps the points of one
    :func:`cluster` call (memory is quadratic); ``max_pending`` caps the pending pool of
    :class:`IncrementalClusterer` (at most ``max_batch``).
    """

    threshold: float = 0.7
    join_threshold: float = 0.5
    min_size: int = 3
    linkage: Linkage = "complete"
    max_batch: int = 5000
    max_pending: int = 5000

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 2.0:
            raise ValueError(f"threshold must be in (0, 2], got {self.threshold!r}")
        if not 0.0 < self.join_threshold <= 2.0:
            raise ValueError(f"join_threshold must be in (0, 2], got {self.join_threshold!r}")
        if not (isinstance(self.min_size, int) and self.min_size >= 1):
            raise ValueError(f"min_size must be an integer of at least 1, got {self.min_size!r}")
        if self.linkage not in ("average", "complete", "single"):
            raise ValueError(f"linkage must be average, complete or single, not {self.linkage!r}")
        if not (isinstance(self.max_batch, int) and self.max_batch >= 2):
            raise ValueError(f"max_batch must be an integer of at least 2, got {self.max_batch!r}")
        if not (isinstance(self.max_pending, int) and 1 <= self.max_pending <= self.max_batch):
            raise ValueError(
                f"max_pending must be an integer in [1, max_batch], got {self.max_pending!r}"
            )


def _unit_rows(vectors: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``vectors`` as float64 rows of unit length; rejects zero, NaN and infinite rows."""
    x = np.asarray(vectors, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("vectors must be finite")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("zero vectors have no direction and cannot be clustered")
    out: npt.NDArray[np.float64] = x / norms
    return out


def cluster(vectors: npt.ArrayLike, params: ClusterParams = ClusterParams()) -> IntArray:
    """Cluster ``vectors`` (one per row) without knowing how many clusters there are.

    Parameters
    ----------
    vectors
        An ``(n, dim)`` array; rows are normalised here (cosine geometry).
    params
        The threshold, the linkage and the smallest group that counts as a cluster.

    Returns
    -------
    numpy.ndarray
        ``n`` labels ``0 .. k-1``, biggest cluster first, and ``-1`` for points in groups
        smaller than ``params.min_size``. Deterministic, and the same partition (with the
        same label names) for any order of the rows: the rows are put in a canonical
        (lexicographic) order before clustering.

    Raises
    ------
    ValueError
        More than ``params.max_batch`` rows, or a zero or non-finite row.

    Examples
    --------
    >>> cluster([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]], ClusterParams(min_size=2)).tolist()
    [0, 0, -1]
    """
    x = _unit_rows(vectors)
    n = len(x)
    if n > params.max_batch:
        raise ValueError(
            f"{n} vectors exceed max_batch={params.max_batch} (memory grows as n^2): "
            "feed them to an IncrementalClusterer in batches"
        )
    labels = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return labels
    if n == 1:
        labels[:] = 0 if params.min_size <= 1 else -1
        return labels
    order = np.lexsort(x.T[::-1])  # canonical order: the result ignores the input order
    distances = np.clip(pdist(x[order], metric="cosine"), 0.0, 2.0)
    tree = linkage(distances, method=params.linkage)
    flat = fcluster(tree, t=params.threshold, criterion="distance")
    _, first, sizes = np.unique(flat, return_index=True, return_counts=True)
    # name groups by size (descending), ties by their first row in canonical order
    ranked = sorted(range(len(sizes)), key=lambda g: (-sizes[g], first[g]))
    canonical = np.full(n, -1, dtype=np.int64)
    for label, g in enumerate(ranked):
        if sizes[g] < params.min_size:
            break
        canonical[flat == flat[first[g]]] = label
    labels[order] = canonical
    return labels


@dataclass(frozen=True, kw_only=True, eq=False)
class Cluster:
    """A known cluster: a stable ``id``, a unit ``centroid`` and its ``size`` (members)."""

    id: int
    centroid: FloatArray
    size: int

    def __post_init__(self) -> None:
        centroid = normalize_rows(np.asarray(self.centroid, dtype=np.float32).reshape(1, -1))[0]
        if not np.any(centroid):
            raise ValueError(f"cluster {self.id}: the centroid is a zero vector")
        if self.size < 1:
            raise ValueError(f"cluster {self.id}: size must be at least 1, got {self.size}")
        centroid.setflags(write=False)
        object.__setattr__(self, "centroid", centroid)

    def __repr__(self) -> str:
        return f"Cluster(id={self.id}, size={self.size}, dim={len(self.centroid)})"


@dataclass(frozen=True, kw_only=True, eq=False)
class Pending:
    """Vectors waiting for a cluster, oldest first, with the caller's ``keys``."""

    keys: tuple[Key, ...] = ()
    vectors: FloatArray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    def __post_init__(self) -> None:
        vectors = np.asarray(self.vectors, dtype=np.float32)
        if len(self.keys) == 0:
            vectors = vectors.reshape(0, vectors.shape[-1] if vectors.ndim == 2 else 0)
        if vectors.ndim != 2 or len(vectors) != len(self.keys):
            raise ValueError(f"{len(self.keys)} keys but vectors of shape {vectors.shape}")
        object.__setattr__(self, "keys", tuple(self.keys))
        object.__setattr__(self, "vectors", vectors)

    def __len__(self) -> int:
        return len(self.keys)


@dataclass(frozen=True, kw_only=True)
class StepResult:
    """What one :meth:`IncrementalClusterer.step` did.

    ``joined`` maps every key that got a cluster in this step (this step's input, or a key
    pending from an earlier step) to its cluster id; ``pending`` lists this step's keys still
    waiting; ``opened`` the ids of the clusters opened in this step; ``dropped`` the pending
    keys dropped (oldest first) to keep the pool within ``params.max_pending``.
    """

    joined: dict[Key, int]
    pending: tuple[Key, ...]
    opened: tuple[int, ...]
    dropped: tuple[Key, ...]

    def cluster_of(self, key: Key) -> int | None:
        """The cluster ``key`` joined in this step, or ``None``."""
        return self.joined.get(key)


def nearest(vectors: npt.ArrayLike, clusters: Sequence[Cluster]) -> tuple[IntArray, FloatArray]:
    """The nearest cluster of each vector, and its cosine similarity.

    With no clusters, every id is ``-1`` and every similarity ``-inf``: a vector far from all
    known clusters (low similarity) is an emerging topic.

    >>> c = [Cluster(id=7, centroid=np.array([1.0, 0.0]), size=3),
    ...      Cluster(id=9, centroid=np.array([0.0, 1.0]), size=5)]
    >>> ids, sims = nearest([[0.6, 0.8], [1.0, 0.0]], c)
    >>> ids.tolist(), [round(float(s), 2) for s in sims]
    ([9, 7], [0.8, 1.0])
    """
    x = _unit_rows(vectors)
    if not clusters:
        return (
            np.full(len(x), -1, dtype=np.int64),
            np.full(len(x), -np.inf, dtype=np.float32),
        )
    centroids = np.stack([c.centroid for c in clusters]).astype(np.float64)
    sims = x @ centroids.T
    best = np.argmax(sims, axis=1)
    ids = np.array([c.id for c in clusters], dtype=np.int64)[best]
    return ids, sims[np.arange(len(x)), best].astype(np.float32)


class IncrementalClusterer:
    """Assign batches of vectors to clusters whose ids never change.

    Parameters
    ----------
    params
        Threshold, linkage, ``min_size`` and the pending cap.
    clusters, next_id, pending
        Saved state (:attr:`clusters`, :attr:`next_id`, :attr:`pending`) to resume from;
        a fresh clusterer starts with none, id 1 and an empty pool.

    Notes
    -----
    In :meth:`step`, each new vector and each pending vector joins the nearest cluster when
    its cosine distance to the centroid is at most ``params.join_threshold``; a cluster's centroid
    becomes the renormalised ``size * centroid + sum(new members)`` and its size grows.
    Nearest clusters are found against the centroids as they were at the start of the step,
    so the result does not depend on the order within a batch. The other vectors join the
    pending pool (oldest dropped beyond ``params.max_pending``), which is clustered with
    :func:`cluster`; each group of at least ``min_size`` opens a cluster with id
    ``next_id`` (then incremented; ids are never reused).

    Examples
    --------
    >>> rng = np.random.default_rng(1)
    >>> a, b = normalize_rows(rng.normal(size=(2, 16)))
    >>> def near(center, n):
    ...     return normalize_rows(center + 0.05 * rng.normal(size=(n, 16)))
    >>> clusterer = IncrementalClusterer(ClusterParams(threshold=0.3))
    >>> first = clusterer.step(["a1", "a2", "a3", "b1"], np.vstack([near(a, 3), near(b, 1)]))
    >>> first.opened, first.pending
    ((1,), ('b1',))
    >>> second = clusterer.step(["a4", "b2", "b3"], np.vstack([near(a, 1), near(b, 2)]))
    >>> second.opened, sorted(second.joined.items())
    ((2,), [('a4', 1), ('b1', 2), ('b2', 2), ('b3', 2)])
    >>> [(c.id, c.size) for c in clusterer.clusters], clusterer.next_id
    ([(1, 4), (2, 3)], 3)
    """

    def __init__(
        self,
        params: ClusterParams = ClusterParams(),
        clusters: Sequence[Cluster] = (),
        next_id: int = 1,
        pending: Pending | None = None,
    ) -> None:
        self.params = params
        ids = [c.id for c in clusters]
        if len(set(ids)) != len(ids):
            raise ValueError("cluster ids must be unique")
        if ids and next_id <= max(ids):
            raise ValueError(f"next_id={next_id} would reuse an id (the largest is {max(ids)})")
        self._clusters: dict[int, Cluster] = {c.id: c for c in clusters}
        self._next_id = next_id
        self._pending = pending if pending is not None else Pending()

    @property
    def clusters(self) -> tuple[Cluster, ...]:
        """The known clusters, by id."""
        return tuple(self._clusters[i] for i in sorted(self._clusters))

    @property
    def next_id(self) -> int:
        """The id the next opened cluster gets."""
        return self._next_id

    @property
    def pending(self) -> Pending:
        """The vectors waiting for a cluster, oldest first."""
        return self._pending

    def step(self, keys: Sequence[Key], vectors: npt.ArrayLike) -> StepResult:
        """Assign one batch: ``keys[i]`` names ``vectors[i]``. See the class notes."""
        keys = tuple(keys)
        new = _unit_rows(vectors).astype(np.float32) if len(keys) else None
        if new is not None and len(new) != len(keys):
            raise ValueError(f"{len(keys)} keys but {len(new)} vectors")
        if len(set(keys)) != len(keys) or set(keys) & set(self._pending.keys):
            raise ValueError("keys must be unique, and not already pending")
        old = self._pending
        all_keys = old.keys + keys
        parts = [v for v in (old.vectors if len(old) else None, new) if v is not None]
        if not parts:
            return StepResult(joined={}, pending=(), opened=(), dropped=())
        x = np.vstack(parts)

        joined: dict[Key, int] = {}
        waiting = np.ones(len(x), dtype=bool)
        known = self.clusters
        if known:
            ids, sims = nearest(x, known)
            waiting = (1.0 - sims) > self.params.join_threshold
            for cid in np.unique(ids[~waiting]).tolist():
                members = (~waiting) & (ids == cid)
                c = self._clusters[cid]
                total = c.centroid * c.size + x[members].sum(axis=0)
                self._clusters[cid] = Cluster(
                    id=cid, centroid=total, size=c.size + int(members.sum())
                )
                for i in np.flatnonzero(members).tolist():
                    joined[all_keys[i]] = cid

        rest = np.flatnonzero(waiting)
        dropped: tuple[Key, ...] = ()
        if len(rest) > self.params.max_pending:
            cut = len(rest) - self.params.max_pending
            dropped = tuple(all_keys[i] for i in rest[:cut].tolist())
            rest = rest[cut:]
        opened: list[int] = []
        labels = cluster(x[rest], self.params) if len(rest) else np.zeros(0, dtype=np.int64)
        for label in range(int(labels.max(initial=-1)) + 1):
            members = rest[labels == label]
            cid = self._next_id
            self._next_id += 1
            self._clusters[cid] = Cluster(
                id=cid, centroid=x[members].sum(axis=0), size=len(members)
            )
            opened.append(cid)
            for i in members.tolist():
                joined[all_keys[i]] = cid
        still = rest[labels < 0]
        self._pending = Pending(keys=tuple(all_keys[i] for i in still.tolist()), vectors=x[still])
        gone = set(dropped)
        return StepResult(
            joined=joined,
            pending=tuple(k for k in keys if k not in joined and k not in gone),
            opened=tuple(opened),
            dropped=dropped,
        )
