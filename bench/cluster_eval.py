"""Evaluate issue clustering (:func:`closedloop.analyze.cluster.cluster`) on real intents.

Usage::

    python bench/cluster_eval.py [--tune] [--embed-only]

Data: Banking77 (CC BY 4.0, PolyAI) and CLINC150 (CC BY 3.0, clinc/oos-eval), read from the
folder in ``CLOSEDLOOP_BENCH_DATA`` (see its ``PROVENANCE.md``).

* Evaluation: Banking77 test (3,080 queries, 77 intents) and CLINC150 test in-scope (4,500
  queries, 150 intents). ``cluster()`` runs with its default :class:`ClusterParams` and is
  NOT told the number of intents. Scores are NMI and ARI against the gold intents, with every
  unassigned point (label -1) counted as ONE extra cluster. The baseline is TF-IDF + k-means
  given the true k (``KMeans(n_init=10, random_state=0)``).
* ``--tune``: the grid search of ``threshold`` / ``linkage`` / ``min_size`` that chose the
  defaults, on a seeded 3,000-query subsample of each TRAIN split only (never the test
  splits); it prints every grid point and the one best on the mean NMI of both datasets.

Embeddings are cached in ``bench/.cache/<dataset>-<embedder>.npy`` (one file per text list,
keyed by a hash of the texts).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CLOSEDLOOP_BENCH_DATA", "bench-data-not-set"))
CACHE = ROOT / "bench" / ".cache"
sys.path.insert(0, str(ROOT / "src"))

from sklearn.cluster import KMeans  # noqa: E402
from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: E402
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score  # noqa: E402

from closedloop.analyze.cluster import (  # noqa: E402
    Cluster,
    ClusterParams,
    IncrementalClusterer,
    cluster,
)
from closedloop.embed import load_embedder  # noqa: E402

TRAIN_SAMPLE = 3000
SEED = 0

Dataset = tuple[list[str], list[str]]  # texts, gold labels


def banking77(split: str) -> Dataset:
    """Banking77 ``split`` ("train" or "test"): texts and intents."""
    with open(DATA / f"banking77_{split}.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["category"] for r in rows]


def clinc150(split: str) -> Dataset:
    """CLINC150 ``split`` ("train", "val", "test", "oos_test", ...): texts and intents."""
    with open(DATA / "clinc150_data_full.json", encoding="utf-8") as f:
        rows = json.load(f)[split]
    return [r[0] for r in rows], [r[1] for r in rows]


def subsample(data: Dataset, n: int, seed: int = SEED) -> Dataset:
    """A seeded sample of ``n`` rows of ``data`` (all of it when smaller)."""
    texts, labels = data
    idx = sorted(random.Random(seed).sample(range(len(texts)), min(n, len(texts))))
    return [texts[i] for i in idx], [labels[i] for i in idx]


def embed_cached(name: str, texts: Sequence[str], choice: str = "model") -> np.ndarray:
    """Embeddings of ``texts`` with embedder ``choice``, cached on disk under ``name``."""
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    path = CACHE / f"{name}-{choice}-{digest}.npy"
    if path.exists():
        return np.load(path)
    CACHE.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    vectors = load_embedder(choice).embed(list(texts))
    took = time.perf_counter() - start
    print(f"  embedded {name} ({len(texts)} texts, {choice}) in {took:.0f} s", file=sys.stderr)
    np.save(path, vectors)
    return vectors


def scores(gold: Sequence[str], labels: np.ndarray) -> tuple[float, float]:
    """NMI and ARI of ``labels`` against ``gold``; all -1 points form one extra cluster."""
    return (
        float(normalized_mutual_info_score(gold, labels)),
        float(adjusted_rand_score(gold, labels)),
    )


def baseline(texts: Sequence[str], k: int) -> np.ndarray:
    """TF-IDF + k-means with the true number of clusters ``k``."""
    x = TfidfVectorizer(sublinear_tf=True, stop_words="english").fit_transform(texts)
    return np.asarray(KMeans(n_clusters=k, n_init=10, random_state=SEED).fit_predict(x))


def datasets(split: str) -> dict[str, Dataset]:
    """Both datasets' ``split`` ("train": seeded subsamples; "test": all of in-scope test)."""
    if split == "train":
        return {
            "banking77-train": subsample(banking77("train"), TRAIN_SAMPLE),
            "clinc150-train": subsample(clinc150("train"), TRAIN_SAMPLE),
        }
    return {"banking77-test": banking77("test"), "clinc150-test": clinc150("test")}


def tune() -> None:
    """Grid search on the train subsamples; prints each point and the best mean NMI."""
    data = datasets("train")
    vecs = {name: embed_cached(name, texts) for name, (texts, _) in data.items()}
    results = []
    print("threshold linkage min_size | per dataset: NMI ARI clusters unassigned")
    for linkage, grid in (
        ("average", np.arange(0.35, 0.71, 0.05)),
        ("complete", np.arange(0.50, 0.91, 0.05)),
        ("single", np.arange(0.15, 0.36, 0.1)),
    ):
        for min_size in (2, 3, 5):
            for threshold in grid:
                params = ClusterParams(
                    threshold=round(float(threshold), 3), min_size=min_size, linkage=linkage
                )
                row = [params.threshold, linkage, min_size]
                nmis = []
                for name, (_, gold) in data.items():
                    labels = cluster(vecs[name], params)
                    nmi, ari = scores(gold, labels)
                    nmis.append(nmi)
                    k = int(labels.max()) + 1
                    row += [round(nmi, 3), round(ari, 3), k, round(float(np.mean(labels < 0)), 3)]
                results.append((float(np.mean(nmis)), row))
                print(*row, f"mean_nmi={np.mean(nmis):.3f}", flush=True)
    best = max(results, key=lambda r: r[0])
    from sklearn.cluster import HDBSCAN  # the alternative that was measured

    for min_cluster_size in (3, 5, 10):
        row = ["hdbscan", f"min_cluster_size={min_cluster_size}"]
        nmis = []
        for name, (_, gold) in data.items():
            hdb = HDBSCAN(min_cluster_size=min_cluster_size, copy=True)
            labels = hdb.fit_predict(vecs[name])
            nmi, ari = scores(gold, labels)
            nmis.append(nmi)
            row += [round(nmi, 3), round(ari, 3), int(labels.max()) + 1]
            row += [round(float(np.mean(labels < 0)), 3)]
        print(*row, f"mean_nmi={np.mean(nmis):.3f}", flush=True)
    print(f"\nbest (mean NMI {best[0]:.3f}): threshold, linkage, min_size = {best[1][:3]}")


def tune_join() -> None:
    """Tune ``join_threshold`` on the train subsamples: cluster the first half with
    :func:`cluster`, feed the second half to an :class:`IncrementalClusterer` in batches of
    100, and score the second half's final assignment (pending = one extra cluster)."""
    data = datasets("train")
    vecs = {name: embed_cached(name, texts) for name, (texts, _) in data.items()}
    print(
        "\njoin_threshold | per dataset (streamed half): NMI ARI, clusters opened (nearly "
        "all duplicates: almost every intent is in the first half), share joining a known "
        "cluster, share of those joins to the cluster of their own intent"
    )
    for join in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.7):
        params = ClusterParams(join_threshold=join)
        row: list[object] = [join]
        nmis = []
        for name, (_, ordered) in data.items():
            # the files are sorted by intent: shuffle, so both halves hold every intent
            perm = np.random.default_rng(SEED).permutation(len(ordered))
            x, gold, half = vecs[name][perm], [ordered[i] for i in perm], len(ordered) // 2
            labels = cluster(x[:half], params)
            clusters = [
                Cluster(id=c + 1, centroid=x[:half][labels == c].sum(axis=0), size=n)
                for c, n in enumerate(np.bincount(labels[labels >= 0]).tolist())
            ]
            clusterer = IncrementalClusterer(params, clusters, next_id=len(clusters) + 1)
            got: dict[int, int] = {}
            opened = 0
            for start in range(half, len(gold), 100):
                keys = list(range(start, min(start + 100, len(gold))))
                result = clusterer.step(keys, x[keys])
                got.update(result.joined)
                opened += len(result.opened)
            pred = [got.get(i, -1) for i in range(half, len(gold))]
            nmi, ari = scores(gold[half:], np.array(pred))
            nmis.append(nmi)
            # majority gold intent of each first-half cluster; a join is right when it matches
            major = {
                c + 1: Counter(
                    g for g, lab in zip(gold[:half], labels, strict=True) if lab == c
                ).most_common(1)[0][0]
                for c in range(len(clusters))
            }
            into_known = [
                (i, p) for i, p in zip(range(half, len(gold)), pred, strict=True) if p in major
            ]
            right = sum(major[p] == gold[i] for i, p in into_known) / max(len(into_known), 1)
            row += [round(nmi, 3), round(ari, 3), opened, round(len(into_known) / len(pred), 3)]
            row += [round(right, 3)]
        print(*row, f"mean_nmi={np.mean(nmis):.3f}", flush=True)


def evaluate() -> None:
    """The markdown table of ours (model, lexical) vs TF-IDF + k-means on both test sets."""
    params = ClusterParams()
    print(
        f"ClusterParams: threshold={params.threshold}, linkage={params.linkage}, "
        f"min_size={params.min_size} (tuned on train subsamples only)\n"
        "Unassigned points (label -1) are counted as ONE extra cluster in NMI/ARI.\n"
    )
    print("| dataset | method | k given | clusters found | unassigned | NMI | ARI |")
    print("|---|---|---|---|---|---|---|")
    ratios = []
    for name, (texts, gold) in datasets("test").items():
        k = len(set(gold))
        base_labels = baseline(texts, k)
        b_nmi, b_ari = scores(gold, base_labels)
        rows = []
        for choice in ("model", "lexical"):
            start = time.perf_counter()
            labels = cluster(embed_cached(name, texts, choice), params)
            took = time.perf_counter() - start
            nmi, ari = scores(gold, labels)
            found = int(labels.max()) + 1
            share = float(np.mean(labels < 0))
            rows.append(
                f"| {name} ({k} intents, n={len(texts)}) | ours, {choice} embedder "
                f"({took:.1f} s) | no | {found} | {share:.1%} | {nmi:.3f} | {ari:.3f} |"
            )
            if choice == "model":
                ratios.append((name, nmi / b_nmi, ari / b_ari))
        rows.append(
            f"| {name} ({k} intents, n={len(texts)}) | TF-IDF + k-means (baseline) | yes ({k}) "
            f"| {k} | 0.0% | {b_nmi:.3f} | {b_ari:.3f} |"
        )
        # a reference, not the baseline: k-means on our embeddings, told the true k
        ref = KMeans(n_clusters=k, n_init=10, random_state=SEED).fit_predict(
            embed_cached(name, texts)
        )
        r_nmi, r_ari = scores(gold, ref)
        rows.append(
            f"| {name} ({k} intents, n={len(texts)}) | model embedder + k-means (reference) "
            f"| yes ({k}) | {k} | 0.0% | {r_nmi:.3f} | {r_ari:.3f} |"
        )
        print("\n".join(rows), flush=True)
    print()
    for name, r_nmi, r_ari in ratios:
        print(f"{name}: ours (model) / baseline = NMI x{r_nmi:.2f}, ARI x{r_ari:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tune", action="store_true", help="grid search on train subsamples")
    parser.add_argument("--embed-only", action="store_true", help="fill the embedding cache")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"set CLOSEDLOOP_BENCH_DATA to the data folder (not found: {DATA})")
    if args.embed_only:
        for split in ("train", "test"):
            for name, (texts, _) in datasets(split).items():
                for choice in ("model", "lexical"):
                    embed_cached(name, texts, choice)
        return
    if args.tune:
        tune()
        tune_join()
    else:
        evaluate()


if __name__ == "__main__":
    main()
