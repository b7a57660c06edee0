"""Storage benchmark: tiering, two-tier analytics, vector search and embedding, against floors.

Usage::

    python bench/store.py [--quick] [--lake-rows 10000000] [--hot-rows 1000000]
                          [--vectors 100000,1000000] [--parts embed,vectors,tier,query]
                          [--backend sqlite|postgresql --database-url URL] [--no-faiss]

Each part runs in its own subprocess (``--part NAME``), so its peak RSS is its own; data lives
in a temporary folder that is deleted at the end. ``--quick`` takes about 1/20 of every size.
The hot store is SQLite in that folder; with ``--backend postgresql`` each part creates its own
database on the server of ``--database-url`` (a role that may create databases) and drops it.

embed
    The default model (``load_embedder("model")``, all-MiniLM-L6-v2 on CPU, torch's threads)
    over the packaged CLINC150 / Banking77 sample texts, in calls of 256 texts (the embedding
    job's batch; the model's own batch is 64); :class:`EmbeddingCache` on the same texts again
    (memory hits, then table hits after ``clear()``); the lexical fallback. Ratio: cache /
    model.
vectors
    Per size, base vectors made from REAL embeddings of the sample texts (from the ``embed``
    part), mixed and perturbed to reach the size: ``normalise(e_i + a * e_j + 0.01 * noise)``
    with ``a ~ U(0, 0.5)``. 1,000 held-out queries made the same way. The usearch index is the
    one the product builds (``VectorIndex._new``: cosine, f32, its connectivity and expansion
    defaults), filled with one ``add`` call (all cores) and searched one query at a time on
    one thread, as the search API does; recall@10 against exact search (numpy matmul);
    faiss ``IndexHNSWFlat`` with the same M / efConstruction / efSearch as a peer.
tier
    ``--hot-rows`` settled rows (2/3 interactions, 1/3 feedback, older than the hot window,
    over 8 days) inserted straight into the hot store with SQLAlchemy Core ``executemany``;
    then the floors (the same rows read from the database into Arrow per day and entity,
    then ``pyarrow.parquet.write_table``, zstd, one file per day and entity) and the real
    ``tier()`` (verified staging, move, manifest, delete).
query
    ``--lake-rows`` rows written as lake files through the product's verified publish path
    (``stage`` + ``Lake.move`` + ``manifest.publish``, one file per day and entity, Arrow
    tables generated with numpy) and ``--hot-rows`` in the hot store, at one daily volume
    over 90 days (the hot rows are the last days). The segment-metrics query (positive rate
    and mean quality by model version, prompt version and day) through
    ``closedloop.store.olap.Analytics`` against plain DuckDB over the same rows all in Parquet
    (the hot rows written to Parquet too); interleaved runs, p50/p95.

Results are printed as a table and written as JSON to ``bench/results/`` (gitignored).
See docs/benchmarks.md for figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DAY_US = 86_400_000_000
WINDOW_DAYS = 90
TIER_DAYS = 8
JOB_BATCH = 256  # texts per embedding-job pass (closedloop.store.vectors.job)
QUERIES = 1000
K = 10

_SYSTEM = "You are the support assistant of Northwind Bank. Answer using the retrieved documents."
_ANSWERS = (
    "Thanks for reaching out about {t}. Requests of this kind are handled within one business "
    "day and you get a notification as soon as the change is applied to your account.",
    "Here is what I found about {t}: you can manage this yourself in the Cards & Accounts "
    "section; changes take effect immediately and are confirmed by e-mail.",
    "For {t}, our fees are listed in the pricing schedule; standard accounts get the first "
    "three operations of each month free of charge. Anything else I can help with?",
)
_MODELS = (
    ("gpt-4o-mini", "2024-07-18", "openai", 0.80),
    ("claude-3-5-haiku", "20241022", "anthropic", 0.82),
    ("llama-3.1-8b-instruct", "q4_k_m", "ollama", 0.71),
)
_PROMPTS = ("v3", "v4", "v5", "v6", "v7")
_COMMENTS = ("Helpful, but too long.", "It did not answer my question.", "Perfect, thanks!")

SEGMENT_SQL = """
WITH fb AS (
    SELECT interaction_id,
           count(thumbs) AS n,
           sum(CASE WHEN thumbs = 1 THEN 1 ELSE 0 END) AS up
    FROM feedback
    WHERE thumbs IS NOT NULL
    GROUP BY interaction_id
)
SELECT date_trunc('day', i.ts) AS day,
       i.model_version,
       i.prompt_version,
       count(*) AS interactions,
       avg(i.quality) AS mean_quality,
       sum(fb.up) / nullif(sum(fb.n), 0) AS positive_rate
FROM interactions i
LEFT JOIN fb ON fb.interaction_id = i.id
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3
"""


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


class RssPeak:
    """Samples this process's RSS every 50 ms while open; ``peak`` in MB."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self.start = self._proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __enter__(self) -> RssPeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 1e6


def max_rss_mb() -> float:
    """This process's peak RSS so far (Linux reports KB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e6


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Realistic rows as Arrow, generated with numpy
# --------------------------------------------------------------------------------------------


class RowMaker:
    """Interactions and feedback of one project as Arrow tables of the lake's layout schema.

    Bodies (about 300-800 bytes of JSON) come from a pool of 4,096 built from the packaged
    CLINC150 / Banking77 sample; every id is unique."""

    def __init__(self, seed: int) -> None:
        from closedloop.sample import load_utterances

        self.rng = np.random.default_rng(seed)
        rng = self.rng
        utts = load_utterances()
        bodies, comments = [], []
        for n in range(4096):
            u = utts[int(rng.integers(len(utts)))]
            m = _MODELS[n % len(_MODELS)]
            topic = u.intent.replace("_", " ")
            body = {
                "input": [
                    {"role": "system", "content": _SYSTEM},
                    {"role": "user", "content": u.text},
                ],
                "output": _ANSWERS[n % len(_ANSWERS)].format(t=topic),
                "model": {"name": m[0], "version": m[1], "provider": m[2]},
                "prompt": {"name": "support-answer", "version": _PROMPTS[n % len(_PROMPTS)]},
                "metadata": {"intent": u.intent, "dataset": u.dataset, "channel": "web"},
            }
            if n % 3 == 0:
                body["retrieved"] = [{"id": f"kb-{u.intent}-0", "score": 0.81, "source": "kb"}]
            bodies.append(json.dumps(body))
            comments.append(json.dumps({"thumbs": 1, "comment": _COMMENTS[n % 3], "n": n}))
        self.bodies = pa.array(bodies)
        self.fb_bodies = pa.array(comments)
        self.users = pa.array([f"u-{i:05d}" for i in range(50_000)])
        self.enrichment = pa.array(
            [json.dumps({"topic": u.intent, "lang": "en"}) for u in utts[:512]]
        )
        self.next_id = 0

    def _ids(self, prefix: str, n: int) -> pa.Array:
        start = self.next_id
        self.next_id += n
        return pa.array([f"{prefix}-{i:012x}" for i in range(start, start + n)])

    def day(self, day_start: dt.datetime, n_inter: int, n_fb: int) -> tuple[pa.Table, pa.Table]:
        """One day's interactions and feedback (feedback on that day's interactions)."""
        from closedloop.store.lake.layout import arrow_schema

        rng = self.rng
        base = int(day_start.timestamp() * 1_000_000)
        ts = np.sort(rng.integers(0, DAY_US - 900_000_000, n_inter)) + base
        received = ts + rng.integers(50_000, 2_000_000, n_inter)
        model = rng.integers(0, len(_MODELS), n_inter)
        prompt = rng.integers(0, len(_PROMPTS), n_inter)
        users = rng.integers(0, len(self.users), n_inter)
        ids = self._ids("i", n_inter)
        sessions = pa.array(
            [f"s-{i:010x}" for i in (self.next_id - n_inter + np.arange(n_inter)) // 3]
        )
        tok_in = rng.integers(350, 900, n_inter)
        tok_out = rng.integers(60, 220, n_inter)
        skill = np.array([m[3] for m in _MODELS])[model] + 0.02 * (prompt - 2)
        quality = np.clip(rng.normal(skill, 0.12), 0, 1)
        has_q = rng.random(n_inter) < 0.9
        ts_type = pa.timestamp("us", tz="UTC")

        def pick(values: tuple[str, ...], idx: np.ndarray) -> pa.Array:
            return pa.array(values).take(pa.array(idx))

        inter = {
            "project_id": pa.array(np.ones(n_inter, dtype=np.int64)),
            "id": ids,
            "ts": pa.array(ts).cast(ts_type),
            "received_at": pa.array(received).cast(ts_type),
            "session_id": sessions,
            "user_id": self.users.take(pa.array(users)),
            "model_name": pick(tuple(m[0] for m in _MODELS), model),
            "model_version": pick(tuple(m[1] for m in _MODELS), model),
            "model_provider": pick(tuple(m[2] for m in _MODELS), model),
            "prompt_name": pa.array(["support-answer"] * n_inter),
            "prompt_version": pick(_PROMPTS, prompt),
            "latency_ms": pa.array(np.round(rng.uniform(300, 2500, n_inter), 1)),
            "tokens_input": pa.array(tok_in),
            "tokens_output": pa.array(tok_out),
            "cost_usd": pa.array((tok_in * 0.15 + tok_out * 0.6) / 1e6),
            "body": self.bodies.take(pa.array(rng.integers(0, len(self.bodies), n_inter))),
            "quality": pa.array(quality, mask=~has_q),
            "quality_basis": pa.array(np.where(has_q, "signals", None).tolist(), pa.string()),
            "enrichment": self.enrichment.take(
                pa.array(rng.integers(0, len(self.enrichment), n_inter))
            ),
            "enriched_at": pa.array(received + 5_000_000).cast(ts_type),
        }
        inter_t = pa.Table.from_pydict(inter, schema=arrow_schema("interactions"))

        of = np.sort(rng.integers(0, n_inter, n_fb))
        f_ts = ts[of] + rng.integers(5_000_000, 600_000_000, n_fb)
        kind = rng.random(n_fb)  # < 0.7 thumbs, < 0.9 rating, else comment with thumbs
        thumbs_on = (kind < 0.7) | (kind >= 0.9)
        up = rng.random(n_fb) < skill[of] + 0.05
        thumbs = np.where(up, 1, -1).astype(np.int16)
        rated = (kind >= 0.7) & (kind < 0.9)
        commented = kind >= 0.9
        of_arr = pa.array(of)
        fb = {
            "project_id": pa.array(np.ones(n_fb, dtype=np.int64)),
            "id": self._ids("f", n_fb),
            "ts": pa.array(f_ts).cast(ts_type),
            "received_at": pa.array(f_ts + 300_000).cast(ts_type),
            "interaction_id": ids.take(of_arr),
            "thumbs": pa.array(thumbs, mask=~thumbs_on),
            "rating": pa.array(rng.integers(1, 6, n_fb).astype(float), mask=~rated),
            "rating_min": pa.array(np.ones(n_fb), mask=~rated),
            "rating_max": pa.array(np.full(n_fb, 5.0), mask=~rated),
            "label": pa.nulls(n_fb, pa.string()),
            "correction": pa.nulls(n_fb, pa.string()),
            "comment": pa.array(
                np.where(commented, np.array(_COMMENTS)[of % 3], None).tolist(), pa.string()
            ),
            "source": pa.array(["user"] * n_fb),
            "given_by": pa.nulls(n_fb, pa.string()),
            "session_id": sessions.take(of_arr),
            "user_id": inter["user_id"].take(of_arr),
            "body": self.fb_bodies.take(pa.array(rng.integers(0, len(self.fb_bodies), n_fb))),
            "join_state": pa.array(["joined"] * n_fb),
            "orphan_reason": pa.nulls(n_fb, pa.string()),
        }
        fb_t = pa.Table.from_pydict(fb, schema=arrow_schema("feedback"))
        return inter_t, fb_t


def split(rows: int) -> tuple[int, int]:
    """Interactions and feedback rows of ``rows`` events (2/3, 1/3)."""
    n_inter = (2 * rows) // 3
    return n_inter, rows - n_inter


def open_store(args: argparse.Namespace, work: Path, name: str) -> Any:
    """A fresh hot store (migrated, one project) for a part."""
    import sqlalchemy as sa

    from closedloop.store import migrate, models
    from closedloop.store.db import create_engine
    from closedloop.store.projects import Projects

    if args.backend == "postgresql":
        if not args.database_url:
            raise SystemExit("--backend postgresql needs --database-url (a server's admin URL)")
        engine = create_engine(fresh_pg_database(args.database_url, name))
    else:
        engine = create_engine(f"sqlite:///{work / (name + '.db')}")
    migrate.upgrade(engine)
    Projects(engine).create("bench")
    with engine.connect() as conn:
        assert conn.execute(sa.select(models.projects.c.id)).scalar_one() == 1
    return engine


def fresh_pg_database(admin_url: str, part: str) -> str:
    """A new database on the server of ``admin_url``, dropped when this process exits."""
    import atexit

    import psycopg

    dsn = admin_url.replace("postgresql+psycopg://", "postgresql://")
    name = f"cl_bench_store_{part}_{os.getpid()}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)
    return f"{dsn.rsplit('/', 1)[0]}/{name}"


def insert_hot(engine: Any, tables: list[tuple[str, pa.Table]]) -> float:
    """Insert Arrow tables into the hot store with SQLAlchemy Core executemany; seconds."""
    from closedloop.store import models

    t0 = time.perf_counter()
    for entity, table in tables:
        target = getattr(models, entity)
        for batch in table.to_batches(max_chunksize=20_000):
            with engine.begin() as conn:
                conn.execute(target.insert(), batch.to_pylist())
    return time.perf_counter() - t0


# --------------------------------------------------------------------------------------------
# Parts
# --------------------------------------------------------------------------------------------


def part_embed(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch

    from closedloop.embed import EmbeddingCache, load_embedder, text_hash
    from closedloop.sample import load_utterances
    from closedloop.store import migrate
    from closedloop.store.db import create_engine

    texts = list(dict.fromkeys(u.text for u in load_utterances()))
    if args.quick:
        texts = texts[:600]
    default_threads = torch.get_num_threads()

    def rate(embed: Any, some: list[str] = texts) -> tuple[float, np.ndarray]:
        t0 = time.perf_counter()
        out = np.concatenate(
            [embed(some[i : i + JOB_BATCH]) for i in range(0, len(some), JOB_BATCH)]
        )
        return len(some) / (time.perf_counter() - t0), out

    out: dict[str, Any] = {"texts": len(texts), "torch_threads": default_threads}
    with RssPeak() as rss:
        model = load_embedder("model")
        t0 = time.perf_counter()
        model.embed(texts[:64])
        out["model_load_s"] = time.perf_counter() - t0
        # torch's default (one thread per core), what the product runs with, on a sample
        out["model_tps"] = rate(model.embed, texts[: min(len(texts), 1024)])[0]
        torch.set_num_threads(1)
        out["model_1thread_tps"], vectors = rate(model.embed)
        torch.set_num_threads(default_threads)
    out["model_rss_mb"] = rss.peak_mb
    np.save(work / "base_vectors.npy", vectors)
    log(f"embed: model {out['model_tps']:.0f} texts/s, 1 thread {out['model_1thread_tps']:.0f}")

    known = {text_hash(t): v for t, v in zip(texts, vectors, strict=True)}

    class Known:  # the model's vectors, already computed: fills the caches without the model
        name, kind, dim = model.name, model.kind, model.dim

        def embed(self, batch: list[str]) -> np.ndarray:
            return np.stack([known[text_hash(t)] for t in batch])

    cache = EmbeddingCache(Known())
    rate(cache.embed)  # fill
    out["cache_memory_tps"] = max(rate(cache.embed)[0] for _ in range(3))
    engine = create_engine(f"sqlite:///{work / 'embed.db'}")
    migrate.upgrade(engine)
    stored = EmbeddingCache(Known(), engine=engine)
    rate(stored.embed)  # fill the table
    runs = []
    for _ in range(3):
        stored.clear()
        runs.append(rate(stored.embed)[0])
    out["cache_table_tps"] = max(runs)
    out["cache_stats"] = str(stored.stats)

    lexical = load_embedder("lexical")
    lexical.embed(texts[:8])
    out["lexical_tps"] = max(rate(lexical.embed)[0] for _ in range(2))
    out["rss_mb"] = max_rss_mb()
    return out


def make_vectors(
    base: np.ndarray, n: int, rng: np.random.Generator, chunk: int = 100_000
) -> np.ndarray:
    """``n`` unit vectors ``normalise(e_i + a * e_j + 0.01 * noise)`` from real embeddings."""
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        i = rng.integers(0, len(base), m)
        j = rng.integers(0, len(base), m)
        a = rng.uniform(0, 0.5, (m, 1)).astype(np.float32)
        v = base[i] + a * base[j] + 0.01 * rng.standard_normal((m, base.shape[1]), np.float32)
        out[s : s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def part_vectors(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import sqlalchemy as sa

    from closedloop.store.vectors.index import VectorIndex

    n = args.size
    path = work / "base_vectors.npy"
    if path.exists():
        base = np.load(path).astype(np.float32)
    else:  # the embed part did not run: embed the sample here
        from closedloop.embed import load_embedder
        from closedloop.sample import load_utterances

        texts = list(dict.fromkeys(u.text for u in load_utterances()))
        base = load_embedder("model").embed(texts)
    rng = np.random.default_rng(7)
    data = make_vectors(base, n, rng)
    queries = make_vectors(base, QUERIES, np.random.default_rng(8))
    out: dict[str, Any] = {"size": n, "base_texts": len(base), "dim": int(base.shape[1])}

    t0 = time.perf_counter()
    truth = np.empty((QUERIES, K), dtype=np.int64)
    for s in range(0, QUERIES, 100):
        sims = queries[s : s + 100] @ data.T
        top = np.argpartition(-sims, K, axis=1)[:, :K]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        truth[s : s + 100] = np.take_along_axis(top, order, axis=1)
        del sims
    out["exact_qps"] = QUERIES / (time.perf_counter() - t0)
    log(f"vectors {n}: exact {out['exact_qps']:.0f} q/s")

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))

    engine = sa.create_engine("sqlite://")
    product = VectorIndex(engine, work / "indexes", 1, "bench")
    out["params"] = {
        "connectivity": product.connectivity,
        "expansion_add": product.expansion_add,
        "expansion_search": product.expansion_search,
    }
    gc.collect()
    with RssPeak() as rss:
        index = product._new(data.shape[1])
        t0 = time.perf_counter()
        index.add(np.arange(n, dtype=np.uint64), data)
        out["usearch_build_s"] = time.perf_counter() - t0
        found = np.zeros((QUERIES, K), dtype=np.int64)
        t0 = time.perf_counter()
        for q in range(QUERIES):
            keys = index.search(queries[q], K, threads=1).keys
            found[q, : len(keys)] = keys
        out["usearch_qps"] = QUERIES / (time.perf_counter() - t0)
    out["usearch_recall"] = recall(found)
    out["usearch_rss_mb"] = rss.peak_mb
    out["usearch_index_mb"] = (rss.peak - rss.start) / 1e6
    log(f"vectors {n}: usearch {out['usearch_qps']:.0f} q/s recall {out['usearch_recall']:.3f}")
    del index
    gc.collect()

    if not args.no_faiss:
        import faiss

        with RssPeak() as rss:
            peer = faiss.IndexHNSWFlat(
                data.shape[1], product.connectivity, faiss.METRIC_INNER_PRODUCT
            )
            peer.hnsw.efConstruction = product.expansion_add
            t0 = time.perf_counter()
            peer.add(data)
            out["faiss_build_s"] = time.perf_counter() - t0
            peer.hnsw.efSearch = product.expansion_search
            faiss.omp_set_num_threads(1)
            found = np.zeros((QUERIES, K), dtype=np.int64)
            t0 = time.perf_counter()
            for q in range(QUERIES):
                found[q] = peer.search(queries[q : q + 1], K)[1][0]
            out["faiss_qps"] = QUERIES / (time.perf_counter() - t0)
        out["faiss_recall"] = recall(found)
        out["faiss_rss_mb"] = rss.peak_mb
        log(f"vectors {n}: faiss {out['faiss_qps']:.0f} q/s recall {out['faiss_recall']:.3f}")
    out["rss_mb"] = max_rss_mb()
    return out


def part_tier(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import pyarrow.parquet as pq
    import sqlalchemy as sa

    from closedloop.store.db import create_engine
    from closedloop.store.lake.files import Lake
    from closedloop.store.lake.layout import table_of
    from closedloop.store.lake.tiering import tier, to_arrow

    engine = open_store(args, work, "tier")
    now = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    hot_days = 30
    first = now - dt.timedelta(days=hot_days + TIER_DAYS + 1)
    maker = RowMaker(seed=1)
    n_inter, n_fb = split(args.hot_rows)
    days = [first + dt.timedelta(days=d) for d in range(TIER_DAYS)]
    loader = (
        create_engine(str(engine.url), sqlite_synchronous="NORMAL")
        if args.backend == "sqlite"
        else engine
    )
    t_insert = 0.0
    for d in days:
        inter, fb = maker.day(d, n_inter // TIER_DAYS, n_fb // TIER_DAYS)
        t_insert += insert_hot(loader, [("interactions", inter), ("feedback", fb)])
    rows = 0
    with engine.connect() as conn:
        for e in ("interactions", "feedback"):
            rows += conn.execute(sa.select(sa.func.count()).select_from(table_of(e))).scalar_one()
    out: dict[str, Any] = {"rows": rows, "insert_rows_per_s": rows / t_insert}
    log(f"tier: {rows} hot rows inserted at {rows / t_insert:.0f} rows/s")

    # Floors: read per day and entity (as tier does) into Arrow, then plain write_table.
    floor_dir = work / "tier_floor"
    floor_dir.mkdir()
    t_read = t_write = 0.0
    size = 0
    for e in ("interactions", "feedback"):
        t = table_of(e)
        for d in days:
            t0 = time.perf_counter()
            with engine.connect() as conn:
                got = conn.execute(
                    sa.select(*t.c)
                    .where(t.c.project_id == 1, t.c.ts >= d, t.c.ts < d + dt.timedelta(days=1))
                    .order_by(t.c.ts, t.c.id)
                ).all()
            table = to_arrow(e, got)
            del got
            t1 = time.perf_counter()
            path = floor_dir / f"{e}-{d.date()}.parquet"
            pq.write_table(table, path, compression="zstd")
            t_write += time.perf_counter() - t1
            t_read += t1 - t0
            size += path.stat().st_size
    out.update(
        floor_write_rows_per_s=rows / t_write,
        floor_read_write_rows_per_s=rows / (t_read + t_write),
        floor_read_s=t_read,
        floor_write_s=t_write,
        parquet_mb=size / 1e6,
    )
    log(
        f"tier: floor write {rows / t_write:.0f} rows/s, read+write {rows / (t_read + t_write):.0f}"
    )

    lake = Lake(str(work / "tier_lake"))
    pa.default_memory_pool().release_unused()
    gc.collect()
    # Where tier's time goes: the time from each step's hook to the next one's, summed.
    spans: dict[str, float] = {}
    last: list[Any] = [None, 0.0]

    def on_step(step: str) -> None:
        now_s = time.perf_counter()
        if last[0] is not None:
            spans[last[0]] = spans.get(last[0], 0.0) + now_s - last[1]
        last[:] = [step, now_s]

    with RssPeak() as rss:
        t0 = time.perf_counter()
        report = tier(
            engine,
            lake,
            now=now,
            hot_days_of=float(hot_days),
            file_rows=250_000,
            on_step=on_step,
        )
        took = time.perf_counter() - t0
    out["tier_steps_s"] = spans
    if report.rows != rows:
        raise RuntimeError(f"tier moved {report.rows} rows of {rows}: {report}")
    out.update(tier_s=took, tier_rows_per_s=rows / took, tier_files=report.files)
    out["tier_rss_mb"] = rss.peak_mb
    out["tier_rss_start_mb"] = rss.start / 1e6
    out["rss_mb"] = max_rss_mb()
    log(f"tier: {rows / took:.0f} rows/s ({report.files} files); steps {spans}")
    return out


def part_query(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import duckdb
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from closedloop.store.db import create_engine
    from closedloop.store.lake import manifest
    from closedloop.store.lake.files import Lake
    from closedloop.store.lake.layout import SCHEMA_VERSION, partition_path
    from closedloop.store.lake.publish import stage
    from closedloop.store.olap import Analytics

    engine = open_store(args, work, "query")
    lake = Lake(str(work / "lake"))
    floor_dir = work / "query_floor"
    floor_dir.mkdir()
    now = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    since = now - dt.timedelta(days=WINDOW_DAYS)
    total = args.lake_rows + args.hot_rows
    hot_days = max(1, round(WINDOW_DAYS * args.hot_rows / total))
    lake_days = WINDOW_DAYS - hot_days
    maker = RowMaker(seed=2)
    out: dict[str, Any] = {"hot_days": hot_days, "lake_days": lake_days}

    # The lake: verified publish, one file per day and entity.
    n_inter, n_fb = split(args.lake_rows)
    t0 = time.perf_counter()
    lake_rows = 0
    paths: dict[str, list[str]] = {"interactions": [], "feedback": []}
    for d in range(lake_days):
        day = since + dt.timedelta(days=d)
        tables = maker.day(day, n_inter // lake_days, n_fb // lake_days)
        rows = []
        for entity, table in zip(("interactions", "feedback"), tables, strict=True):
            staged = stage(lake, table)
            final = partition_path(entity, 1, day.date(), staged.file_id)
            lake.move(staged.path, final)
            paths[entity].append(lake.full(final))
            ts = table.column("ts")
            rows.append(
                {
                    "project_id": 1,
                    "entity": entity,
                    "day": day.date(),
                    "path": final,
                    "rows": staged.rows,
                    "bytes": staged.bytes,
                    "checksum": staged.checksum,
                    "schema_version": SCHEMA_VERSION,
                    "min_ts": pc.min(ts).as_py(),
                    "max_ts": pc.max(ts).as_py(),
                    "created_at": dt.datetime.now(dt.UTC),
                }
            )
            lake_rows += table.num_rows
        with engine.begin() as conn:
            manifest.publish(conn, rows)
    out["lake_rows"] = lake_rows
    out["lake_write_s"] = time.perf_counter() - t0
    out["lake_mb"] = sum(os.path.getsize(p) for v in paths.values() for p in v) / 1e6
    log(f"query: {lake_rows} lake rows published in {out['lake_write_s']:.0f} s")

    # The hot rows: the last days, also written to Parquet for the floor.
    n_inter, n_fb = split(args.hot_rows)
    loader = (
        create_engine(str(engine.url), sqlite_synchronous="NORMAL")
        if args.backend == "sqlite"
        else engine
    )
    hot_paths: dict[str, list[str]] = {"interactions": [], "feedback": []}
    hot_rows = 0
    t_insert = 0.0
    for d in range(hot_days):
        day = now - dt.timedelta(days=hot_days - d)
        inter, fb = maker.day(day, n_inter // hot_days, n_fb // hot_days)
        t_insert += insert_hot(loader, [("interactions", inter), ("feedback", fb)])
        for entity, table in (("interactions", inter), ("feedback", fb)):
            path = floor_dir / f"{entity}-{day.date()}.parquet"
            pq.write_table(table, path, compression="zstd")
            paths[entity].append(str(path))
            hot_paths[entity].append(str(path))
        hot_rows += inter.num_rows + fb.num_rows
    out["hot_rows"] = hot_rows
    out["hot_insert_rows_per_s"] = hot_rows / t_insert
    log(f"query: {hot_rows} hot rows inserted at {hot_rows / t_insert:.0f} rows/s")

    analytics = Analytics(engine, str(work / "lake"))
    hot_since = now - dt.timedelta(days=hot_days)

    def product(start: dt.datetime) -> Any:
        return analytics.arrow(SEGMENT_SQL, project_id=1, since=start, until=now)

    def floor(start: dt.datetime) -> Any:
        window = f"ts >= TIMESTAMPTZ '{start.isoformat()}' AND ts < TIMESTAMPTZ '{now.isoformat()}'"
        conn = duckdb.connect(":memory:")
        try:
            conn.execute("SET TimeZone = 'UTC'")
            for entity in ("interactions", "feedback"):
                files = paths[entity] if start == since else hot_paths[entity]
                listed = ", ".join(f"'{p}'" for p in files)
                conn.execute(
                    f"CREATE VIEW {entity} AS SELECT * FROM read_parquet([{listed}]) "
                    f"WHERE project_id = 1 AND {window}"
                )
            return conn.sql(SEGMENT_SQL).to_arrow_table()
        finally:
            conn.close()

    for start in (since, hot_since):  # warm-up, and the two must agree
        a, b = product(start), floor(start)
        if (
            a.num_rows != b.num_rows
            or a.column("interactions").to_pylist() != b.column("interactions").to_pylist()
        ):
            raise RuntimeError("the product and the floor disagree on the segment metrics")
        out["segments" if start == since else "hot_segments"] = a.num_rows
    pa.default_memory_pool().release_unused()
    gc.collect()
    # 90 days (lake and hot rows), then the hot days alone: what staging the hot rows costs
    for label, start in (("", since), ("hot_", hot_since)):
        times: dict[str, list[float]] = {"product": [], "floor": []}
        with RssPeak() as rss:
            for _ in range(args.runs):
                for name, fn in (("product", product), ("floor", floor)):
                    t0 = time.perf_counter()
                    fn(start)
                    times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            out[f"{label}{name}_p50_s"] = statistics.median(ts)
            out[f"{label}{name}_p95_s"] = float(np.percentile(ts, 95))
            out[f"{label}{name}_runs_s"] = ts
        out[f"{label}query_rss_mb"] = rss.peak_mb
        out[f"{label}query_rss_start_mb"] = rss.start / 1e6
        log(
            f"query {label or 'all '}: product p50 {out[f'{label}product_p50_s']:.2f} s, "
            f"floor p50 {out[f'{label}floor_p50_s']:.2f} s"
        )
    out["rss_mb"] = max_rss_mb()
    return out


PARTS = {"embed": part_embed, "vectors": part_vectors, "tier": part_tier, "query": part_query}


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------


def run_part(args: argparse.Namespace, work: Path, part: str, size: int | None) -> dict[str, Any]:
    """Run one part in a subprocess; its JSON result (with ``wall_s``)."""
    out = work / f"{part}-{size or 0}.json"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--part",
        part,
        "--work",
        str(work),
        "--out",
        str(out),
        "--lake-rows",
        str(args.lake_rows),
        "--hot-rows",
        str(args.hot_rows),
        "--runs",
        str(args.runs),
        "--backend",
        args.backend,
    ]
    if size is not None:
        cmd += ["--size", str(size)]
    if args.database_url:
        cmd += ["--database-url", args.database_url]
    if args.no_faiss:
        cmd.append("--no-faiss")
    if args.quick:
        cmd.append("--quick")
    log(f"part {part}{'' if size is None else f' ({size:,} vectors)'}")
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


def table(results: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """Rows: figure, value, floor or peer, its value, ratio, target."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    e = results.get("embed", {})
    if "model_tps" in e:
        rows += [
            (
                "embed: model texts/s",
                fmt(e["model_tps"]),
                "-",
                "-",
                "-",
                f"RSS {e['model_rss_mb']:.0f} MB",
            ),
            (
                "embed: model, 1 torch thread, texts/s",
                fmt(e["model_1thread_tps"]),
                "model, default threads",
                fmt(e["model_tps"]),
                f"{e['model_1thread_tps'] / e['model_tps']:.1f}x",
                "-",
            ),
            (
                "embed: cache (memory hits) texts/s",
                fmt(e["cache_memory_tps"]),
                "model",
                fmt(e["model_tps"]),
                f"{e['cache_memory_tps'] / e['model_tps']:.0f}x",
                "-",
            ),
            (
                "embed: cache (table hits) texts/s",
                fmt(e["cache_table_tps"]),
                "model",
                fmt(e["model_tps"]),
                f"{e['cache_table_tps'] / e['model_tps']:.1f}x",
                "-",
            ),
            (
                "embed: lexical fallback texts/s",
                fmt(e["lexical_tps"]),
                "model",
                fmt(e["model_tps"]),
                f"{e['lexical_tps'] / e['model_tps']:.1f}x",
                f"RSS {e['rss_mb']:.0f} MB",
            ),
        ]
    for _, v in sorted((k, v) for k, v in results.items() if k.startswith("vectors-")):
        if "usearch_qps" not in v:
            continue
        n = f"{v['size']:,}"
        rows += [
            (
                f"vectors {n}: usearch QPS (1 thread)",
                fmt(v["usearch_qps"]),
                "exact (numpy, batched)",
                fmt(v["exact_qps"]),
                f"{v['usearch_qps'] / v['exact_qps']:.1f}x",
                "-",
            ),
            (
                f"vectors {n}: usearch recall@10",
                f"{v['usearch_recall']:.3f}",
                "exact",
                "1.000",
                "-",
                "-",
            ),
            (
                f"vectors {n}: usearch build s",
                fmt(v["usearch_build_s"]),
                "-",
                "-",
                "-",
                f"RSS {v['usearch_rss_mb']:.0f} MB",
            ),
        ]
        if "faiss_qps" in v:
            rows += [
                (
                    f"vectors {n}: usearch QPS vs faiss",
                    fmt(v["usearch_qps"]),
                    "faiss HNSW",
                    fmt(v["faiss_qps"]),
                    f"{v['usearch_qps'] / v['faiss_qps']:.2f}",
                    "-",
                ),
                (
                    f"vectors {n}: faiss recall@10 / build s",
                    f"{v['faiss_recall']:.3f}",
                    "-",
                    fmt(v["faiss_build_s"]),
                    "-",
                    f"RSS {v['faiss_rss_mb']:.0f} MB",
                ),
            ]
    t = results.get("tier", {})
    if "tier_rows_per_s" in t:
        rows += [
            (
                "tier: rows/s",
                fmt(t["tier_rows_per_s"]),
                "write_table (Arrow in hand)",
                fmt(t["floor_write_rows_per_s"]),
                f"{t['tier_rows_per_s'] / t['floor_write_rows_per_s']:.2f}",
                f"RSS {t['tier_rss_mb']:.0f} MB",
            ),
            (
                "tier: rows/s",
                fmt(t["tier_rows_per_s"]),
                "DB->Arrow + write_table",
                fmt(t["floor_read_write_rows_per_s"]),
                f"{t['tier_rows_per_s'] / t['floor_read_write_rows_per_s']:.2f}",
                "-",
            ),
        ]
    q = results.get("query", {})
    if "product_p50_s" in q:
        rows += [
            (
                "query: segment metrics p50 s",
                fmt(q["product_p50_s"]),
                "DuckDB on Parquet",
                fmt(q["floor_p50_s"]),
                f"{q['product_p50_s'] / q['floor_p50_s']:.2f}",
                "<= 2",
            ),
            (
                "query: segment metrics p95 s",
                fmt(q["product_p95_s"]),
                "DuckDB on Parquet",
                fmt(q["floor_p95_s"]),
                f"{q['product_p95_s'] / q['floor_p95_s']:.2f}",
                f"RSS {q['query_rss_mb']:.0f} MB",
            ),
        ]
    if "hot_product_p50_s" in q:
        rows.append(
            (
                f"query: hot days only ({q['hot_days']}) p50 s",
                fmt(q["hot_product_p50_s"]),
                "DuckDB on Parquet",
                fmt(q["hot_floor_p50_s"]),
                f"{q['hot_product_p50_s'] / q['hot_floor_p50_s']:.2f}",
                "-",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--lake-rows", type=int, default=10_000_000)
    parser.add_argument("--hot-rows", type=int, default=1_000_000)
    parser.add_argument("--vectors", default="100000,1000000", help="sizes, comma-separated")
    parser.add_argument("--parts", default="embed,vectors,tier,query")
    parser.add_argument("--quick", action="store_true", help="about 1/20 of every size")
    parser.add_argument("--runs", type=int, default=7, help="measured query runs of each side")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--database-url",
        default=None,
        help="PostgreSQL: a URL of the server whose role may create databases; each part "
        "creates its own database there and drops it",
    )
    parser.add_argument("--no-faiss", action="store_true", help="skip the faiss peer")
    parser.add_argument("--keep", action="store_true", help="keep the data folder")
    parser.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.part:  # a child: run one part, write its JSON
        result = PARTS[args.part](args, Path(args.work))
        Path(args.out).write_text(json.dumps(result, default=str))
        return

    sizes = [int(s) for s in args.vectors.split(",") if s]
    if args.quick:
        args.lake_rows //= 20
        args.hot_rows //= 20
        sizes = [max(1000, s // 20) for s in sizes]
    work = Path(tempfile.mkdtemp(prefix="closedloop-bench-store-"))
    results: dict[str, Any] = {
        "args": vars(args),
        "machine": {
            "cpus": os.cpu_count(),
            "ram_gb": round(psutil.virtual_memory().total / 1e9, 1),
            "python": platform.python_version(),
            "load_before": os.getloadavg(),
        },
    }
    try:
        for part in args.parts.split(","):
            if part == "vectors":
                for n in sizes:
                    results[f"vectors-{n:09d}"] = run_part(args, work, part, n)
            else:
                results[part] = run_part(args, work, part, None)
    finally:
        if args.keep:
            log(f"data kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["machine"]["load_after"] = os.getloadavg()

    rows = table(results)
    head = ("figure", "value", "floor / peer", "its value", "ratio", "target / note")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(6)]
    print()
    for r in [head, tuple("-" * w for w in widths), *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 or i == 2 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    for key, v in results.items():
        if isinstance(v, dict) and "failed" in v:
            print(f"{key}: FAILED (exit {v['failed']})")
    q, t = results.get("query", {}), results.get("tier", {})
    if "lake_rows" in q:
        print(
            f"\nquery data: {q['lake_rows']:,} lake rows over {q['lake_days']} days "
            f"({q['lake_mb']:.0f} MB, published in {q['lake_write_s']:.0f} s) + "
            f"{q['hot_rows']:,} hot rows over {q['hot_days']} days; {q['segments']} segments; "
            f"peak RSS {q['rss_mb']:.0f} MB"
        )
    if "rows" in t:
        print(
            f"tier data: {t['rows']:,} hot rows over {TIER_DAYS} days ({t['parquet_mb']:.0f} MB of "
            f"Parquet); floor read {t['floor_read_s']:.1f} s + write {t['floor_write_s']:.1f} s; "
            f"tier {t['tier_s']:.1f} s; peak RSS {t['rss_mb']:.0f} MB"
        )
        steps = ", ".join(f"{k} {v:.1f} s" for k, v in t.get("tier_steps_s", {}).items())
        print(f"tier time from each step's hook to the next: {steps}")
    print(
        f"load average before / after: {results['machine']['load_before']} / "
        f"{results['machine']['load_after']}"
    )
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"store-{stamp}{'-quick' if args.quick else ''}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
