from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from closedloop.analyze.cluster import (
    Cluster,
    ClusterParams,
    IncrementalClusterer,
    Pending,
    cluster,
    nearest,
)
from closedloop.embed import load_embedder, normalize_rows

DIM = 32
PARAMS = ClusterParams(threshold=0.3, min_size=3)


def blobs(
    rng: np.random.Generator, sizes: list[int], spread: float = 0.05
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Well-separated gaussian blobs on the unit sphere: points, gold labels, centres."""
    centers = normalize_rows(rng.normal(size=(len(sizes), DIM)))
    points = [c + spread * rng.normal(size=(n, DIM)) for c, n in zip(centers, sizes, strict=True)]
    gold = np.repeat(np.arange(len(sizes)), sizes)
    return normalize_rows(np.vstack(points)), gold, centers


def test_cluster_recovers_well_separated_blobs_without_k() -> None:
    x, gold, _ = blobs(np.random.default_rng(0), [20, 15, 30, 10, 25])
    labels = cluster(x, PARAMS)
    assert adjusted_rand_score(gold, labels) == 1.0
    assert sorted(set(labels.tolist())) == [0, 1, 2, 3, 4]
    assert np.bincount(labels).tolist() == [30, 25, 20, 15, 10]  # biggest first


def test_cluster_gives_the_same_partition_and_labels_for_any_row_order() -> None:
    rng = np.random.default_rng(1)
    x, _, _ = blobs(rng, [12, 8, 5, 2], spread=0.2)  # noisy: merges are close calls
    labels = cluster(x, PARAMS)
    for _ in range(5):
        perm = rng.permutation(len(x))
        again = cluster(x[perm], PARAMS)
        assert adjusted_rand_score(labels[perm], again) == 1.0
        assert again.tolist() == labels[perm].tolist()


def test_groups_smaller_than_min_size_stay_unassigned() -> None:
    x, gold, _ = blobs(np.random.default_rng(2), [10, 2, 1, 6])
    labels = cluster(x, PARAMS)
    assert (labels[(gold == 1) | (gold == 2)] == -1).all()
    assert (labels[(gold == 0) | (gold == 3)] >= 0).all()
    assert cluster(x, ClusterParams(threshold=0.3, min_size=1)).max() == 3


def test_cluster_handles_tiny_inputs_and_rejects_bad_ones() -> None:
    assert cluster(np.zeros((0, 4))).tolist() == []
    assert cluster([[1.0, 0.0]]).tolist() == [-1]
    assert cluster([[1.0, 0.0]], ClusterParams(min_size=1)).tolist() == [0]
    with pytest.raises(ValueError, match="zero vectors"):
        cluster([[1.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match="max_batch"):
        cluster(np.ones((11, 2)), ClusterParams(max_batch=10, max_pending=10))
    with pytest.raises(ValueError, match="threshold"):
        ClusterParams(threshold=0)
    with pytest.raises(ValueError, match="max_pending"):
        ClusterParams(max_batch=10, max_pending=20)


def test_cluster_groups_texts_embedded_by_the_lexical_embedder() -> None:
    texts = [
        "my card was declined",
        "card declined at the shop",
        "why was my card declined",
        "reset my password",
        "how do I reset my password",
        "password reset please",
    ]
    x = load_embedder("lexical").embed(texts)
    labels = cluster(x, ClusterParams(threshold=0.7, min_size=2))
    assert adjusted_rand_score([0, 0, 0, 1, 1, 1], labels) == 1.0


def test_nearest_finds_the_closest_centroid_or_none() -> None:
    ids, sims = nearest([[1.0, 0.0]], [])
    assert ids.tolist() == [-1] and np.isneginf(sims).all()
    clusters = [
        Cluster(id=4, centroid=np.array([1.0, 0.0]), size=1),
        Cluster(id=2, centroid=np.array([0.0, 3.0]), size=1),  # normalised on construction
    ]
    ids, sims = nearest([[0.1, 1.0], [2.0, 0.1]], clusters)
    assert ids.tolist() == [2, 4]
    assert sims[0] == pytest.approx(1 / np.sqrt(1.01), abs=1e-6)


def test_incremental_ids_are_stable_and_new_blobs_open_new_clusters() -> None:
    rng = np.random.default_rng(3)
    x, gold, centers = blobs(rng, [10, 10])
    clusterer = IncrementalClusterer(PARAMS)
    first = clusterer.step([f"p{i}" for i in range(len(x))], x)
    assert first.opened == (1, 2) and first.pending == ()
    id_of = {g: first.joined[f"p{i}"] for i, g in enumerate(gold.tolist())}
    assert set(id_of.values()) == {1, 2}
    before = {c.id: c.size for c in clusterer.clusters}

    # a point near blob 0 joins its cluster; a new blob waits until it has min_size points
    new_center = normalize_rows(rng.normal(size=(1, DIM)))[0]

    def near(c: np.ndarray, n: int) -> np.ndarray:
        return normalize_rows(c + 0.05 * rng.normal(size=(n, DIM)))

    second = clusterer.step(
        ["a", "n1", "n2"], np.vstack([near(centers[0], 1), near(new_center, 2)])
    )
    assert second.joined == {"a": id_of[0]}
    assert second.opened == () and second.pending == ("n1", "n2")
    assert [k for k in clusterer.pending.keys] == ["n1", "n2"]
    assert {c.id: c.size for c in clusterer.clusters} == {**before, id_of[0]: before[id_of[0]] + 1}

    third = clusterer.step(["n3", "b"], np.vstack([near(new_center, 1), near(centers[1], 1)]))
    assert third.opened == (3,)
    assert third.joined == {"n1": 3, "n2": 3, "n3": 3, "b": id_of[1]}
    assert third.cluster_of("n3") == 3 and third.cluster_of("zz") is None
    assert [c.id for c in clusterer.clusters] == [1, 2, 3]
    assert clusterer.next_id == 4 and len(clusterer.pending) == 0


def test_incremental_state_round_trips_through_the_constructor() -> None:
    rng = np.random.default_rng(4)
    x, _, _ = blobs(rng, [6, 6, 2])
    a = IncrementalClusterer(PARAMS)
    a.step(list(range(len(x))), x)
    assert len(a.pending) == 2
    saved = (
        [(c.id, c.centroid.tolist(), c.size) for c in a.clusters],
        a.next_id,
        list(a.pending.keys),
        a.pending.vectors.tolist(),
    )
    b = IncrementalClusterer(
        PARAMS,
        clusters=[Cluster(id=i, centroid=np.array(v), size=s) for i, v, s in saved[0]],
        next_id=saved[1],
        pending=Pending(keys=tuple(saved[2]), vectors=np.array(saved[3])),
    )
    y, _, _ = blobs(np.random.default_rng(5), [4, 3])
    ra, rb = a.step(["x", "y", "z", "w"], y[:4]), b.step(["x", "y", "z", "w"], y[:4])
    assert ra == rb
    assert [(c.id, c.size) for c in a.clusters] == [(c.id, c.size) for c in b.clusters]
    assert a.next_id == b.next_id and a.pending.keys == b.pending.keys


def test_incremental_rejects_reused_ids_and_duplicate_keys() -> None:
    c = Cluster(id=5, centroid=np.array([1.0, 0.0]), size=2)
    with pytest.raises(ValueError, match="reuse"):
        IncrementalClusterer(PARAMS, clusters=[c], next_id=5)
    clusterer = IncrementalClusterer(PARAMS, clusters=[c], next_id=6)
    with pytest.raises(ValueError, match="unique"):
        clusterer.step(["k", "k"], [[0.0, 1.0], [0.0, 1.0]])
    clusterer.step(["k"], [[0.0, 1.0]])
    with pytest.raises(ValueError, match="pending"):
        clusterer.step(["k"], [[0.0, 1.0]])


def test_the_pending_pool_drops_its_oldest_points_beyond_the_cap() -> None:
    rng = np.random.default_rng(6)
    params = ClusterParams(threshold=0.05, min_size=3, max_batch=10, max_pending=4)
    clusterer = IncrementalClusterer(params)
    far = normalize_rows(rng.normal(size=(6, DIM)))  # no two are close: all stay pending
    first = clusterer.step(["a", "b", "c"], far[:3])
    assert first.dropped == () and first.pending == ("a", "b", "c")
    second = clusterer.step(["d", "e", "f"], far[3:])
    assert second.dropped == ("a", "b")
    assert second.pending == ("d", "e", "f")
    assert clusterer.pending.keys == ("c", "d", "e", "f")
