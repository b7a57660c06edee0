"""Evaluate emerging-issue detection (:class:`IncrementalClusterer`) on a CLINC150 stream.

Usage::

    python bench/emerging_eval.py [--held-out 10] [--oos 300] [--batch 100]

Data: CLINC150 (CC BY 3.0, clinc/oos-eval), from the folder in ``CLOSEDLOOP_BENCH_DATA``.

The stream is the in-scope test split (150 intents x 30 queries) in a seeded random order,
with ``--held-out`` seeded intents and ``--oos`` seeded out-of-scope queries (``oos_test``,
one more "new" group) kept out of the first ``START`` (2,000) queries and spread at random
over the rest, so each held-out intent arrives at about the rate of a known one. The first
``WINDOW`` (1,000) queries are clustered with :func:`cluster` (the clusters a first run of the
job would have found); the rest go to :meth:`IncrementalClusterer.step` in batches of
``--batch`` (a periodic job). Queries 1,000-2,000 are all of known intents: every cluster
opened there is a false opening (or a known intent the first window missed).

Reported, with the default :class:`ClusterParams`:

* per held-out intent: the detection delay, i.e. how many of its queries had arrived when a
  cluster opened whose members at opening were at least 50% that intent (``-`` if never), and
  the share of its queries absorbed into clusters of the first window;
* for clusters opened after ``START``: how many were dominated (>= 50% at opening) by a
  held-out intent, by out-of-scope queries, by a known intent (a false opening), or by none;
  precision = (held-out + out-of-scope) / all opened after ``START``.

The join-threshold rows at the end are a sensitivity check on this test stream, not tuning
(the defaults were chosen on train splits, see ``bench/cluster_eval.py --tune``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(os.environ.get("CLOSEDLOOP_BENCH_DATA", "bench-data-not-set"))
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from closedloop.analyze.cluster import (  # noqa: E402
    Cluster,
    ClusterParams,
    IncrementalClusterer,
    cluster,
)
from cluster_eval import SEED, clinc150, embed_cached  # noqa: E402

WINDOW = 1000
START = 2000
OOS = "oos"


def build_stream(
    held_out: int, n_oos: int, seed: int = SEED
) -> tuple[np.ndarray, list[str], set[str]]:
    """Vectors and gold labels in stream order, and the held-out intents."""
    texts, intents = clinc150("test")
    vectors = embed_cached("clinc150-test", texts)
    oos_texts, _ = clinc150("oos_test")
    oos_vectors = embed_cached("clinc150-oos_test", oos_texts)
    rng = np.random.default_rng(seed)
    names = sorted(set(intents))
    new = {names[i] for i in rng.choice(len(names), size=held_out, replace=False)}
    known = [i for i in rng.permutation(len(texts)) if intents[i] not in new]
    late = [i for i in range(len(texts)) if intents[i] in new]
    oos = rng.choice(len(oos_texts), size=min(n_oos, len(oos_texts)), replace=False)
    # (source, index): "in" rows of the in-scope test split, "oos" rows of oos_test
    head = [("in", i) for i in known[:START]]
    tail = [("in", i) for i in known[START:] + late] + [("oos", int(i)) for i in oos]
    order = rng.permutation(len(tail))
    rows = head + [tail[j] for j in order]
    x = np.vstack([vectors[i] if src == "in" else oos_vectors[i] for src, i in rows])
    gold = [intents[i] if src == "in" else OOS for src, i in rows]
    return x, gold, new


def run(
    x: np.ndarray, gold: list[str], new: set[str], params: ClusterParams, batch: int
) -> dict[str, object]:
    """Stream ``x`` through a clusterer; what opened when, and where held-out queries went."""
    labels = cluster(x[:WINDOW], params)
    first = [
        Cluster(id=c + 1, centroid=x[:WINDOW][labels == c].sum(axis=0), size=n)
        for c, n in enumerate(np.bincount(labels[labels >= 0]).tolist())
    ]
    clusterer = IncrementalClusterer(params, first, next_id=len(first) + 1)
    pending = np.flatnonzero(labels < 0)
    clusterer.step(pending.tolist(), x[pending])  # the first window's leftovers wait
    first_ids = {c.id for c in first}
    seen: Counter[str] = Counter()
    delay: dict[str, int] = {}
    absorbed: Counter[str] = Counter()
    openings: list[tuple[int, str]] = []  # (position, dominant group or "none"/"known:...")
    for start in range(WINDOW, len(gold), batch):
        keys = list(range(start, min(start + batch, len(gold))))
        seen.update(gold[k] for k in keys)
        result = clusterer.step(keys, x[keys])
        for key, cid in result.joined.items():
            if cid in first_ids and gold[key] in new:
                absorbed[gold[key]] += 1
        for cid in result.opened:
            members = Counter(gold[k] for k, c in result.joined.items() if c == cid)
            top, count = members.most_common(1)[0]
            dominant = top if count >= 0.5 * sum(members.values()) else "none"
            openings.append((start, dominant))
            if dominant in new and dominant not in delay:
                delay[dominant] = seen[dominant]
    after = [d for pos, d in openings if pos >= START]
    kinds = Counter(
        "held-out" if d in new else OOS if d == OOS else "none" if d == "none" else "known"
        for d in after
    )
    before = [d for pos, d in openings if pos < START]
    total = len(after)
    return {
        "delay": delay,
        "absorbed": absorbed,
        "kinds": kinds,
        "opened_after": total,
        "precision": (kinds["held-out"] + kinds[OOS]) / total if total else float("nan"),
        "opened_before": len(before),
        "first_clusters": len(first),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--held-out", type=int, default=10, help="intents held out (seeded)")
    parser.add_argument("--oos", type=int, default=300, help="out-of-scope queries streamed")
    parser.add_argument("--batch", type=int, default=100, help="queries per step")
    args = parser.parse_args()
    if not DATA.is_dir():
        sys.exit(f"set CLOSEDLOOP_BENCH_DATA to the data folder (not found: {DATA})")
    x, gold, new = build_stream(args.held_out, args.oos)
    params = ClusterParams()
    print(
        f"CLINC150 stream: {len(gold)} queries; {len(new)} held-out intents (30 queries each) "
        f"and {args.oos} out-of-scope queries, all after position {START}; first window "
        f"{WINDOW}, then steps of {args.batch}.\nClusterParams: threshold={params.threshold}, "
        f"join_threshold={params.join_threshold}, linkage={params.linkage}, "
        f"min_size={params.min_size}\n"
    )
    started = time.perf_counter()
    out = run(x, gold, new, params, args.batch)
    took = time.perf_counter() - started
    delay, absorbed = out["delay"], out["absorbed"]
    assert isinstance(delay, dict) and isinstance(absorbed, Counter)
    print("| held-out intent | detection delay (its queries seen) | absorbed into known |")
    print("|---|---|---|")
    for intent in sorted(new):
        d = delay.get(intent)
        print(
            f"| {intent} | {d if d is not None else '- (not detected)'} | {absorbed[intent]}/30 |"
        )
    found = sorted(delay.values())
    print(
        f"\ndetected {len(found)}/{len(new)}; median delay "
        f"{np.median(found) if found else float('nan'):.0f} queries; "
        f"run took {took:.1f} s ({out['first_clusters']} clusters in the first window)"
    )
    kinds = out["kinds"]
    assert isinstance(kinds, Counter)
    print(
        f"\nclusters opened after position {START}: {out['opened_after']} = "
        f"{kinds['held-out']} held-out + {kinds[OOS]} out-of-scope + {kinds['known']} known "
        f"(false) + {kinds['none']} mixed; precision {out['precision']:.2f}\n"
        f"clusters opened on the known-only stream ({WINDOW}-{START}): {out['opened_before']}"
    )
    print("\nsensitivity to join_threshold (same stream; not used for tuning):")
    print("| join_threshold | detected | median delay | opened after start | precision |")
    print("|---|---|---|---|---|")
    for join in (0.35, 0.4, 0.5, 0.6, 0.7):
        o = run(x, gold, new, replace(params, join_threshold=join), args.batch)
        d = o["delay"]
        assert isinstance(d, dict)
        med = f"{np.median(list(d.values())):.0f}" if d else "-"
        print(
            f"| {join} | {len(d)}/{len(new)} | {med} | {o['opened_after']} | {o['precision']:.2f} |"
        )


if __name__ == "__main__":
    main()
