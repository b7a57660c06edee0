"""Analysis-stage benchmark: metrics, quality drift and topic tracking, against floors.

Usage::

    .venv/bin/python bench/analyze.py            # N = 200,000 interactions (SQLite)
    .venv/bin/python bench/analyze.py --quick    # N = 20,000
    .venv/bin/python bench/analyze.py --quick --postgres postgresql://user:pw@host/postgres
    .venv/bin/python bench/analyze.py --parts metrics,drift,topics --n 50000 --dim 256

N interactions (one model of three, spread over 30 days) each with one thumbs feedback and one
``input`` vector are inserted straight into a fresh hot store (SQLite in a temporary folder;
with ``--postgres URL`` a database created on that server, whose role may create databases,
and dropped at the end). Vectors are noisy copies of 50 seeded random unit centres
(``normalise(centre + 0.5 * noise)``) plus 1 % pure noise, so clustering has structure and a
pending pool. Each part runs in its own subprocess (``--part NAME``) so its peak RSS
(``ru_maxrss``, floor included) is its own; parts run in this order on the same store.

metrics
    ``metrics(analytics, 1, by="model")`` and ``metrics(..., by="all", bucket="day")``,
    median of 3 after a warm-up. Floors: the bare DuckDB staging of the join,
    ``SELECT count(*) FROM interactions i LEFT JOIN feedback f ON f.interaction_id = i.id``
    through the same ``Analytics``, and the same with every column the metrics statement names
    (so the same columns are staged). Rows per second are interactions per second.
quality drift
    One ``QualityDrift.run`` over all N feedback rows from a fresh state (each thumbs feeds the
    streams ``all`` and its model's). Floor: the same observations as ``BernoulliCusum.update``
    calls (same ARL0, warmup, drops) in a plain Python loop in memory.
topics
    ``ClusterTracker(engine, "topic", "bench-lexical").run`` repeated until it takes nothing
    (2,000 per run). Inputs per second over the first 5 runs and over all runs; the last
    (nothing new) run's time. Floor: ``IncrementalClusterer.step`` on the same vectors in
    memory in batches of 2,000 (first 5 batches, and all).

Prints a markdown table: part | size | ours | floor | ratio (ours / floor, as time; above 1
is slower than the floor) | peak RSS.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
DAYS = 30
CENTRES = 50
NOISE = 0.5
OUTLIERS = 0.01
MODEL = "bench-lexical"
MODELS = (
    ("gpt-4o-mini", "2024-07-18", 0.80),
    ("claude-3-5-haiku", "1", 0.82),
    ("llama", "8b", 0.7),
)
BATCH = 2000
FIRST_RUNS = 5
CHUNK = 10_000

FLOOR_IDS_SQL = (
    "SELECT count(*) FROM interactions i LEFT JOIN feedback f ON f.interaction_id = i.id"
)
FLOOR_COLS_SQL = """
SELECT count(*), count(i.ts), count(i.model_name), count(i.model_version), count(i.enrichment),
       count(i.session_id), count(i.quality), count(i.latency_ms), count(i.cost_usd),
       count(f.ts), count(f.thumbs), count(f.rating), count(f.rating_min), count(f.rating_max),
       count(f.correction), count(f.source)
FROM interactions i LEFT JOIN feedback f ON f.interaction_id = i.id
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def max_rss_mb() -> float:
    """This process's peak RSS so far (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


# --------------------------------------------------------------------------------------------
# Data: the same, seeded, in the store and in memory
# --------------------------------------------------------------------------------------------


def make_vectors(n: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit float32 vectors (noisy copies of the centres, some pure noise) and the
    centre of each (-1 for noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CENTRES, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    topic = rng.integers(0, CENTRES, n)
    topic[rng.random(n) < OUTLIERS] = -1
    noise = rng.normal(size=(n, dim)) / np.sqrt(dim)
    x = np.where((topic >= 0)[:, None], centres[topic] + NOISE * noise, noise)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), topic


def make_thumbs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The model index and the thumbs (1 / -1) of each interaction (stationary rates)."""
    rng = np.random.default_rng(seed + 1)
    model = rng.integers(0, len(MODELS), n)
    rate = np.array([m[2] for m in MODELS])[model]
    thumbs = np.where(rng.random(n) < rate, 1, -1)
    return model, thumbs


def seed_store(engine: Any, n: int, dim: int, seed: int) -> None:
    """Insert N interactions, N thumbs and N input vectors straight into the tables."""
    from closedloop.store import models

    vectors, topic = make_vectors(n, dim, seed)
    model, thumbs = make_thumbs(n, seed)
    rng = np.random.default_rng(seed + 2)
    quality = rng.uniform(0, 1, n)
    latency = rng.uniform(300, 2500, n)
    step = dt.timedelta(days=DAYS) / n
    now = dt.datetime.now(dt.UTC)
    for start in range(0, n, CHUNK):
        inter, fb, vec = [], [], []
        for k in range(start, min(start + CHUNK, n)):
            ts = T0 + step * k
            iid = f"i-{k:09d}"
            name, version, _ = MODELS[model[k]]
            text = f"question about topic {topic[k]} number {k}"
            inter.append(
                {
                    "project_id": 1,
                    "id": iid,
                    "ts": ts,
                    "received_at": ts,
                    "session_id": f"s-{k // 4:08d}",
                    "model_name": name,
                    "model_version": version,
                    "latency_ms": float(latency[k]),
                    "cost_usd": 1e-4,
                    "quality": float(quality[k]),
                    "quality_basis": "signals",
                    "body": json.dumps({"input": text, "output": "ok"}),
                }
            )
            f_ts = ts + dt.timedelta(minutes=1)
            fb.append(
                {
                    "project_id": 1,
                    "id": f"f-{k:09d}",
                    "ts": f_ts,
                    "received_at": f_ts,
                    "interaction_id": iid,
                    "thumbs": int(thumbs[k]),
                    "source": "user",
                    "body": json.dumps({"thumbs": int(thumbs[k])}),
                    "join_state": "joined",
                }
            )
            vec.append(
                {
                    "project_id": 1,
                    "model": MODEL,
                    "kind": "input",
                    "ref_id": iid,
                    "interaction_id": iid,
                    "ts": ts,
                    "dim": dim,
                    "vector": vectors[k].tobytes(),
                    "text_hash": hashlib.sha256(text.encode()).hexdigest(),
                    "created_at": now,
                }
            )
        with engine.begin() as conn:
            conn.execute(models.interactions.insert(), inter)
            conn.execute(models.feedback.insert(), fb)
            conn.execute(models.vectors.insert(), vec)


# --------------------------------------------------------------------------------------------
# Parts (each in a subprocess)
# --------------------------------------------------------------------------------------------


def engine_of(args: argparse.Namespace) -> Any:
    from closedloop.store.db import create_engine

    return create_engine(args.url)


def part_seed(args: argparse.Namespace) -> dict[str, Any]:
    from closedloop.store import migrate
    from closedloop.store.projects import Projects

    engine = engine_of(args)
    migrate.upgrade(engine)
    Projects(engine).create("bench")
    t0 = time.perf_counter()
    seed_store(engine, args.n, args.dim, args.seed)
    wall = time.perf_counter() - t0
    log(f"seed: {3 * args.n:,} rows in {wall:.1f} s")
    return {"seed_s": wall, "rss_mb": max_rss_mb()}


def median_time(fn: Any, runs: int = 3) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def part_metrics(args: argparse.Namespace) -> dict[str, Any]:
    from closedloop.analyze.metrics import metrics
    from closedloop.store.olap import Analytics

    analytics = Analytics(engine_of(args), str(Path(args.work) / "lake"))
    runs = {
        "by_model": lambda: metrics(analytics, 1, by="model"),
        "by_day": lambda: metrics(analytics, 1, by="all", bucket="day"),
        "floor_ids": lambda: analytics.query(FLOOR_IDS_SQL, project_id=1),
        "floor_cols": lambda: analytics.query(FLOOR_COLS_SQL, project_id=1),
    }
    check = runs["floor_ids"]().iloc[0, 0]
    if int(check) != args.n:
        raise RuntimeError(f"the floor counted {check} rows, not {args.n}")
    for fn in runs.values():  # warm-up
        fn()
    out: dict[str, Any] = {name: median_time(fn) for name, fn in runs.items()}
    out["rss_mb"] = max_rss_mb()
    log("metrics: " + ", ".join(f"{k} {v:.3f}" for k, v in out.items()))
    return out


def part_drift(args: argparse.Namespace) -> dict[str, Any]:
    from closedloop.analyze.drift.bernoulli import BernoulliCusum
    from closedloop.analyze.drift.calibrate import segment_arl0
    from closedloop.analyze.quality_drift import DEFAULT_PARAMS, QualityDrift

    params = DEFAULT_PARAMS
    job = QualityDrift(engine_of(args), params)
    t0 = time.perf_counter()
    stats = job.run(1, now=T0 + dt.timedelta(days=DAYS + 1))
    ours = time.perf_counter() - t0
    if stats.observations != 2 * args.n:
        raise RuntimeError(f"{stats.observations} observations, not {2 * args.n}")
    log(f"drift: {stats.observations:,} observations in {ours:.2f} s ({stats.alarms} alarms)")

    model, thumbs = make_thumbs(args.n, args.seed)
    xs = (thumbs > 0).astype(float).tolist()
    keys = model.tolist()
    arl0 = segment_arl0(params.arl0, params.n_segments)

    def new() -> BernoulliCusum:
        return BernoulliCusum(
            arl0=arl0, drops=params.drops, warmup=params.warmup, dispersion=params.dispersion
        )

    detectors = {"all": new(), **{k: new() for k in range(len(MODELS))}}
    every = detectors["all"]
    t0 = time.perf_counter()
    for key, x in zip(keys, xs, strict=True):
        every.update(x)
        detectors[key].update(x)
    floor = time.perf_counter() - t0
    log(f"drift floor: {2 * args.n:,} updates in {floor:.2f} s")
    return {
        "observations": stats.observations,
        "alarms": stats.alarms,
        "ours_s": ours,
        "floor_s": floor,
        "rss_mb": max_rss_mb(),
    }


def part_topics(args: argparse.Namespace) -> dict[str, Any]:
    from closedloop.analyze.cluster import IncrementalClusterer
    from closedloop.analyze.tracker import ClusterTracker, TrackerParams

    tracker = ClusterTracker(engine_of(args), "topic", MODEL, TrackerParams(batch=BATCH))
    times: list[float] = []
    added: list[int] = []
    opened = 0
    while True:
        t0 = time.perf_counter()
        stats = tracker.run(1)
        times.append(time.perf_counter() - t0)
        added.append(stats.added)
        opened += stats.opened
        if stats.added == 0:
            break
        if len(times) % 10 == 0:
            log(f"topics: run {len(times)}, {sum(added):,} taken, {sum(times):.1f} s")
    if sum(added) != args.n:
        raise RuntimeError(f"the tracker took {sum(added)} inputs, not {args.n}")
    log(f"topics: {len(times)} runs, {sum(times):.1f} s, {opened} opened")

    vectors, _ = make_vectors(args.n, args.dim, args.seed)
    keys = [f"i-{k:09d}" for k in range(args.n)]
    clusterer = IncrementalClusterer(TrackerParams().cluster)
    floor_times = []
    for start in range(0, args.n, BATCH):
        t0 = time.perf_counter()
        clusterer.step(keys[start : start + BATCH], vectors[start : start + BATCH])
        floor_times.append(time.perf_counter() - t0)
    log(f"topics floor: {len(floor_times)} steps, {sum(floor_times):.1f} s")
    first = min(FIRST_RUNS, len(floor_times))
    return {
        "runs": len(times),
        "opened": opened,
        "first_inputs": sum(added[:first]),
        "first_s": sum(times[:first]),
        "all_s": sum(times[:-1]),
        "last_s": times[-1],
        "floor_first_s": sum(floor_times[:first]),
        "floor_all_s": sum(floor_times),
        "run_s": times,
        "rss_mb": max_rss_mb(),
    }


PARTS = {"seed": part_seed, "metrics": part_metrics, "drift": part_drift, "topics": part_topics}


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def fresh_pg_database(admin_url: str) -> tuple[str, Any]:
    """A new database on the server of ``admin_url`` and a function that drops it."""
    import psycopg

    dsn = admin_url.replace("postgresql+psycopg://", "postgresql://")
    name = f"cl_bench_analyze_{os.getpid()}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return f"{dsn.rsplit('/', 1)[0]}/{name}", drop


def run_part(args: argparse.Namespace, part: str) -> dict[str, Any]:
    out = Path(args.work) / f"{part}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--part", part, "--out", str(out)]
    cmd += ["--work", args.work, "--url", args.url, "--n", str(args.n), "--dim", str(args.dim)]
    cmd += ["--seed", str(args.seed)]
    log(f"part {part}")
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not out.exists():
        log(f"part {part} failed (exit {proc.returncode})")
        return {"failed": proc.returncode, "wall_s": wall}
    result: dict[str, Any] = json.loads(out.read_text())
    result["wall_s"] = wall
    return result


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def rows_of(results: dict[str, Any], n: int) -> list[tuple[str, ...]]:
    """Table rows: part, size, ours, floor, ratio (time, ours / floor), peak RSS."""
    rows: list[tuple[str, ...]] = []
    size = f"{n:,}"
    m = results.get("metrics", {})
    if "by_model" in m:
        rss = f"{m['rss_mb']:.0f} MB"
        for name, label in (("by_model", 'by="model"'), ("by_day", 'by="all", bucket="day"')):
            for floor, what in (("floor_ids", "join of ids"), ("floor_cols", "same columns")):
                rows.append(
                    (
                        f"metrics {label} vs staging ({what})",
                        size,
                        f"{m[name]:.3f} s ({fmt(n / m[name])} rows/s)",
                        f"{m[floor]:.3f} s ({fmt(n / m[floor])} rows/s)",
                        f"{m[name] / m[floor]:.2f}",
                        rss,
                    )
                )
    d = results.get("drift", {})
    if "ours_s" in d:
        obs = d["observations"]
        rows.append(
            (
                "quality drift: one run, observations/s",
                f"{obs:,} obs",
                fmt(obs / d["ours_s"]),
                f"{fmt(obs / d['floor_s'])} (BernoulliCusum.update loop)",
                f"{d['ours_s'] / d['floor_s']:.2f}",
                f"{d['rss_mb']:.0f} MB",
            )
        )
    t = results.get("topics", {})
    if "first_s" in t:
        rss = f"{t['rss_mb']:.0f} MB"
        rows += [
            (
                f"topics: first {FIRST_RUNS} runs, inputs/s",
                f"{t['first_inputs']:,} inputs",
                fmt(t["first_inputs"] / t["first_s"]),
                f"{fmt(t['first_inputs'] / t['floor_first_s'])} (IncrementalClusterer.step)",
                f"{t['first_s'] / t['floor_first_s']:.2f}",
                rss,
            ),
            (
                f"topics: all {t['runs'] - 1} runs, inputs/s",
                size,
                fmt(n / t["all_s"]),
                f"{fmt(n / t['floor_all_s'])} (IncrementalClusterer.step)",
                f"{t['all_s'] / t['floor_all_s']:.2f}",
                rss,
            ),
            (
                "topics: last run (nothing new), s",
                f"{t['opened']} topics",
                f"{t['last_s']:.3f}",
                "-",
                "-",
                rss,
            ),
        ]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=200_000, help="interactions (and thumbs)")
    parser.add_argument("--quick", action="store_true", help="N = 20,000")
    parser.add_argument("--dim", type=int, default=256, help="vector dimensions")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--parts", default="metrics,drift,topics")
    parser.add_argument("--postgres", metavar="URL", help="a server whose role may create DBs")
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.part:  # a child: run one part, write its JSON
        result = PARTS[args.part](args)
        Path(args.out).write_text(json.dumps(result))
        return

    if args.quick:
        args.n = 20_000
    args.work = tempfile.mkdtemp(prefix="closedloop-bench-analyze-")
    drop = None
    if args.postgres:
        args.url, drop = fresh_pg_database(args.postgres)
    else:
        args.url = f"sqlite:///{Path(args.work) / 'hot.db'}"
    results: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        results["seed"] = run_part(args, "seed")
        if "failed" not in results["seed"]:
            for part in args.parts.split(","):
                results[part] = run_part(args, part)
    finally:
        if drop is not None:
            drop()
        if args.keep:
            log(f"data kept in {args.work}")
        else:
            shutil.rmtree(args.work, ignore_errors=True)
    wall = time.perf_counter() - t0

    head = ("part", "size", "ours", "floor", "ratio (time)", "peak RSS")
    rows = rows_of(results, args.n)
    print()
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    for key, v in results.items():
        if "failed" in v:
            print(f"{key}: FAILED (exit {v['failed']})")
    t = results.get("topics", {})
    if "run_s" in t:
        print("\ntopic runs, s: " + " ".join(f"{x:.2f}" for x in t["run_s"]))
    backend = "postgresql" if args.postgres else "sqlite"
    seed_s = results["seed"].get("seed_s", float("nan"))
    print(
        f"\n{backend}, N = {args.n:,}, dim {args.dim}; seeding {seed_s:.1f} s; total {wall:.0f} s; "
        f"load average {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    main()
