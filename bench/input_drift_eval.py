"""False-alarm rate and power of the input-drift tests on CLINC150 intents.

Usage::

    python bench/input_drift_eval.py [--null 200] [--trials 100] [--window 500]
                                     [--embedders lexical,model] [--seed 0] [--embed-only]

Data: CLINC150 (CC BY 3.0, clinc/oos-eval), ``clinc150_data_full.json`` read from the folder
in ``CLOSEDLOOP_BENCH_DATA`` (see its ``PROVENANCE.md``). 150 intents; a seeded draw makes 30
of them *novel* (absent from every reference window) and keeps 120 *known*.

* Window pool: the test split (30 texts per intent). A reference window is
  ``--window`` texts drawn from the known intents; a current window is ``--window`` texts of
  which a share ``s`` comes from the novel intents and the rest from the known ones (all
  drawn without replacement, the two windows disjoint). ``s = 0`` is the null (``--null``
  windows); ``s`` = 5, 10, 20 and 40 % are the shifts (``--trials`` windows each).
* ``mmd``: :func:`~closedloop.analyze.input_drift.mmd_test` on the embeddings (defaults:
  200 permutations, median-heuristic RBF kernel).
  ``mmd (model, bandwidth x0.35)``: the same with a shorter kernel length scale; the 0.35
  was picked on a 40-window probe of these same data, so read that row as exploratory.
* ``topics``: :func:`~closedloop.analyze.input_drift.topic_mix_test` with the gold intent as
  the topic (a stand-in for the topic model). Two variants: ``topics (gold)`` keeps the novel
  intents' own ids (a topic model refitted on everything); ``topics (novel=-1)`` gives them
  "no topic" (a topic model fitted on the reference, which cannot name them).
* ``emerging``: :func:`~closedloop.analyze.input_drift.emerging` on each input's cosine
  similarity to the nearest known-intent centroid. Centroids are the normalised means of the
  known intents' texts in a seeded 3,000-text sample of the TRAIN split (about 20 per intent,
  the sample ``bench/cluster_eval.py`` embeds, so the cache is shared), so neither window is
  in-sample (fitting them on the reference window would bias its similarities up and the
  test toward alarms).

All tests run at alpha = 0.01; a row's rate is the share of windows flagged, with its Wilson
95 % interval. Embeddings are cached in ``bench/.cache/clinc150-<split>-<embedder>-<hash>.npy``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CLOSEDLOOP_BENCH_DATA", "bench-data-not-set"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from closedloop.analyze.drift.base import Estimate  # noqa: E402
from closedloop.analyze.input_drift import (  # noqa: E402
    DEFAULT_FAR,
    emerging,
    mmd_test,
    topic_mix_test,
)
from cluster_eval import embed_cached  # noqa: E402

ALPHA = 0.01
SHIFTS = (0.0, 0.05, 0.10, 0.20, 0.40)
N_NOVEL = 30
TRAIN_SAMPLE = 3000  # train texts the centroids come from (seeded, as in cluster_eval.py)


@dataclass(frozen=True)
class Split:
    texts: list[str]
    intents: np.ndarray  # int ids into the sorted intent names


def load(names: Sequence[str], index: dict[str, int] | None = None) -> tuple[Split, list[str]]:
    """The concatenated CLINC150 ``names`` splits, intents as ids."""
    with open(DATA / "clinc150_data_full.json", encoding="utf-8") as f:
        data = json.load(f)
    rows = [row for name in names for row in data[name]]
    if index is None:
        index = {name: i for i, name in enumerate(sorted({r[1] for r in rows}))}
    labels = sorted(index, key=index.__getitem__)
    return Split([r[0] for r in rows], np.array([index[r[1]] for r in rows])), labels


def train_sample(train: Split, n: int, seed: int = 0) -> np.ndarray:
    """Row indices of a seeded sample of ``n`` train texts (``cluster_eval.py``'s sample)."""
    return np.array(sorted(random.Random(seed).sample(range(len(train.texts)), n)))


@dataclass
class Tally:
    flagged: int = 0
    windows: int = 0

    def add(self, flag: bool) -> None:
        self.flagged += int(flag)
        self.windows += 1

    def __str__(self) -> str:
        est = Estimate.of_rate(self.flagged, self.windows)
        return f"{est.value:.3f} [{est.low:.2f}, {est.high:.2f}]"


Check = Callable[[np.ndarray, np.ndarray], bool]  # (reference rows, current rows) -> flagged


def run(
    checks: dict[str, Check],
    pool: Split,
    novel: np.ndarray,
    *,
    window: int,
    null: int,
    trials: int,
    seed: int,
) -> dict[tuple[str, float], Tally]:
    """Flag rate of every check for every shift (the same windows for every check)."""
    is_novel = np.isin(pool.intents, novel)
    known_rows, novel_rows = np.flatnonzero(~is_novel), np.flatnonzero(is_novel)
    rng = np.random.default_rng(seed)
    tallies = {(name, s): Tally() for name in checks for s in SHIFTS}
    for s in SHIFTS:
        n_novel = round(s * window)
        for _ in range(null if s == 0 else trials):
            drawn = rng.choice(known_rows, size=2 * window - n_novel, replace=False)
            reference = drawn[:window]
            current = np.concatenate(
                [drawn[window:], rng.choice(novel_rows, size=n_novel, replace=False)]
            )
            for name, check in checks.items():
                tallies[name, s].add(check(reference, current))
    return tallies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--null", type=int, default=200, help="null windows (default 200)")
    parser.add_argument("--trials", type=int, default=100, help="windows per shift (100)")
    parser.add_argument("--window", type=int, default=500, help="texts per window (500)")
    parser.add_argument("--embedders", default="lexical,model", help="comma-separated")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--embed-only", action="store_true", help="fill the embedding cache")
    args = parser.parse_args()

    pool, labels = load(["test"])
    index = {name: i for i, name in enumerate(labels)}
    train, _ = load(["train"], index)
    centroid_rows = train_sample(train, TRAIN_SAMPLE)
    novel = np.sort(np.random.default_rng(args.seed).choice(len(labels), N_NOVEL, replace=False))
    known = np.setdiff1d(np.arange(len(labels)), novel)

    embedders = [e.strip() for e in args.embedders.split(",") if e.strip()]
    vectors: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for choice in embedders:
        window_vecs = embed_cached("clinc150-test", pool.texts, choice)
        train_vecs = embed_cached("clinc150-train", [train.texts[i] for i in centroid_rows], choice)
        vectors[choice] = window_vecs, train_vecs
    if args.embed_only:
        return

    checks: dict[str, Check] = {}
    far_note: list[str] = []
    for choice, (window_vecs, train_vecs) in vectors.items():
        train_intents = train.intents[centroid_rows]
        centroids = np.stack([train_vecs[train_intents == k].mean(axis=0) for k in known])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        nearest = (window_vecs @ centroids.T).max(axis=1)
        is_novel = np.isin(pool.intents, novel)
        far_note.append(
            f"{choice}: nearest-centroid similarity, known intents median "
            f"{np.median(nearest[~is_novel]):.2f} (5th pct "
            f"{np.percentile(nearest[~is_novel], 5):.2f}), novel intents median "
            f"{np.median(nearest[is_novel]):.2f}; share below far={DEFAULT_FAR}: known "
            f"{np.mean(nearest[~is_novel] < DEFAULT_FAR):.3f}, novel "
            f"{np.mean(nearest[is_novel] < DEFAULT_FAR):.3f}"
        )

        def mmd(r: np.ndarray, c: np.ndarray, v: np.ndarray = window_vecs) -> bool:
            return mmd_test(v[r], v[c], alpha=ALPHA, seed=int(r[0])).drift

        def mmd_short(r: np.ndarray, c: np.ndarray, v: np.ndarray = window_vecs) -> bool:
            return mmd_test(v[r], v[c], alpha=ALPHA, seed=int(r[0]), bandwidth_scale=0.35).drift

        def far(r: np.ndarray, c: np.ndarray, sim: np.ndarray = nearest) -> bool:
            return emerging(sim[r], sim[c], alpha=ALPHA).emerging

        checks[f"mmd ({choice})"] = mmd
        if choice == "model":
            checks["mmd (model, bandwidth x0.35)"] = mmd_short
        checks[f"emerging ({choice}, far={DEFAULT_FAR})"] = far

    gold = pool.intents
    hidden = np.where(np.isin(gold, novel), -1, gold)

    def topics_gold(r: np.ndarray, c: np.ndarray) -> bool:
        return topic_mix_test(gold[r], gold[c], alpha=ALPHA).drift

    def topics_hidden(r: np.ndarray, c: np.ndarray) -> bool:
        return topic_mix_test(hidden[r], hidden[c], alpha=ALPHA).drift

    checks["topics (gold)"] = topics_gold
    checks["topics (novel=-1)"] = topics_hidden

    start = time.perf_counter()
    tallies = run(
        checks,
        pool,
        novel,
        window=args.window,
        null=args.null,
        trials=args.trials,
        seed=args.seed,
    )
    took = time.perf_counter() - start

    print(
        f"CLINC150, {len(known)} known / {N_NOVEL} novel intents, windows of {args.window}, "
        f"alpha {ALPHA}; {args.null} null windows, {args.trials} per shift; {took:.0f} s\n"
    )
    header = ["test", "false alarms (s=0)"] + [f"power s={s:.0%}" for s in SHIFTS[1:]]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name in checks:
        cells = [str(tallies[name, s]) for s in SHIFTS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nRates with Wilson 95 % intervals.")
    for line in far_note:
        print(f"- {line}")


if __name__ == "__main__":
    main()
