"""Vectors on the real store (SQLite and PostgreSQL): the table, the persistent embedding
cache, ANN indexes against exact search, rebuilds, removal, catch-up across processes, and the
embedding job end to end with the real sentence model."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pytest
import sqlalchemy as sa

from closedloop import make_event
from closedloop.embed.base import FloatArray, text_hash
from closedloop.embed.cache import EmbeddingCache
from closedloop.embed.lexical import LexicalEmbedder
from closedloop.embed.sentence import SentenceEmbedder
from closedloop.runtime import Runtime
from closedloop.sample import load_utterances
from closedloop.store import models
from closedloop.store.db import utc, utcnow
from closedloop.store.enforce import enforce_retention
from closedloop.store.retention import Retention
from closedloop.store.vectors import (
    EmbeddingJob,
    EmbedParams,
    IndexManager,
    NewVector,
    delete_for_interactions,
    delete_for_refs,
    delete_for_users,
    delete_older_than,
    insert_vectors,
    search,
)
from closedloop.store.vectors.search import SearchFilter, exact_search
from tests.conftest import Tenant

MODEL = "test-model"
T0 = utcnow().replace(microsecond=0) - dt.timedelta(days=2)


@pytest.fixture(scope="session")
def sentence() -> SentenceEmbedder:
    embedder = SentenceEmbedder()
    embedder.embed(["load the model once"])
    return embedder


def new_project(engine: sa.Engine, name: str = "p") -> int:
    with engine.begin() as conn:
        return int(
            conn.execute(
                models.projects.insert()
                .values(name=name, created_at=utcnow())
                .returning(models.projects.c.id)
            ).scalar_one()
        )


def clustered(n: int, dim: int, seed: int) -> npt.NDArray[np.float32]:
    """Unit vectors around 40 centres: texts of a product come in topics."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(40, dim))
    points = centres[rng.integers(0, 40, size=n)] + 0.6 * rng.normal(size=(n, dim))
    unit: npt.NDArray[np.float32] = (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(
        np.float32
    )
    return unit


def store(
    engine: sa.Engine,
    project_id: int,
    matrix: npt.NDArray[np.float32],
    *,
    start: int = 0,
    model: str = MODEL,
    user: str | None = None,
) -> int:
    rows = [
        NewVector(
            project_id=project_id,
            model=model,
            kind="input",
            ref_id=f"i-{start + j}",
            interaction_id=f"i-{start + j}",
            user_id=user if user is not None else f"u-{(start + j) % 7}",
            ts=T0 + dt.timedelta(minutes=start + j),
            vector=v,
            text_hash=text_hash(f"text {start + j}"),
        )
        for j, v in enumerate(matrix)
    ]
    with engine.begin() as conn:
        return insert_vectors(conn, rows)


def seq_of(engine: sa.Engine, project_id: int) -> dict[str, int]:
    v = models.vectors
    with engine.connect() as conn:
        return dict(
            conn.execute(sa.select(v.c.ref_id, v.c.seq).where(v.c.project_id == project_id)).all()
        )


def brute_force(
    matrix: npt.NDArray[np.float32], keys: Sequence[int], query: FloatArray, k: int
) -> list[int]:
    scores = matrix @ query
    return [keys[j] for j in np.argsort(-scores, kind="stable")[:k]]


# --- the table -----------------------------------------------------------------------------


def test_inserting_again_keeps_the_stored_row_and_counts_only_new_ones(engine: sa.Engine) -> None:
    pid = new_project(engine)
    m = clustered(5, 8, 0)
    assert store(engine, pid, m) == 5
    assert store(engine, pid, m[:3] * -1) == 0, "idempotent on (project, model, kind, ref)"
    assert store(engine, pid, m[:2], model="other") == 2
    with engine.connect() as conn:
        blob = conn.execute(
            sa.select(models.vectors.c.vector).where(
                models.vectors.c.ref_id == "i-0", models.vectors.c.model == MODEL
            )
        ).scalar_one()
    assert np.array_equal(np.frombuffer(blob, dtype=np.float32), m[0])


def test_deletes_by_interaction_ref_user_and_age_report_counts(engine: sa.Engine) -> None:
    pid, other = new_project(engine, "a"), new_project(engine, "b")
    store(engine, pid, clustered(20, 8, 1))
    store(engine, other, clustered(20, 8, 1))
    with engine.begin() as conn:
        assert delete_for_interactions(conn, pid, ["i-0", "i-1", "nope"]) == 2
        assert delete_for_refs(conn, pid, ["i-2"], kinds=["comment"]) == 0
        assert delete_for_refs(conn, pid, ["i-2", "i-3"]) == 2
        # users u-4 and u-5 own i-4, i-5, i-11, i-12, i-18, i-19
        assert delete_for_users(conn, pid, ["u-4", "u-5"]) == 6
        assert delete_older_than(conn, pid, T0 + dt.timedelta(minutes=10)) == 4  # i-6..i-9
    assert set(seq_of(engine, pid)) == {f"i-{j}" for j in (10, 13, 14, 15, 16, 17)}
    assert len(seq_of(engine, other)) == 20, "other projects are untouched"


def test_times_must_be_timezone_aware(engine: sa.Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="timezone"):
        delete_older_than(conn, 1, dt.datetime(2026, 1, 1))


# --- the persistent embedding cache --------------------------------------------------------


class Counting:
    def __init__(self) -> None:
        self.inner = LexicalEmbedder(dim=32)
        self.name, self.kind = self.inner.name, self.inner.kind
        self.texts: list[str] = []

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> FloatArray:
        self.texts += texts
        return self.inner.embed(texts)


def test_the_cache_table_survives_a_new_cache_instance(engine: sa.Engine) -> None:
    model = Counting()
    first = EmbeddingCache(model, engine=engine).embed(["reset my password", "hi"])
    again = EmbeddingCache(model, engine=engine)
    second = again.embed(["hi", "reset my password", "new text"])
    assert model.texts == ["reset my password", "hi", "new text"]
    assert np.array_equal(second[:2], first[::-1])
    assert (again.stats.stored_hits, again.stats.misses) == (2, 1)
    with engine.connect() as conn:
        rows = conn.execute(sa.select(models.embedding_cache.c.model)).scalars().all()
    assert rows == [model.name] * 3


# --- the ANN index --------------------------------------------------------------------------


def recall_at(engine: sa.Engine, manager: IndexManager, pid: int, k: int = 10) -> float:
    keys_by_ref = seq_of(engine, pid)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(models.vectors.c.seq, models.vectors.c.vector)
            .where(models.vectors.c.project_id == pid, models.vectors.c.model == MODEL)
            .order_by(models.vectors.c.seq)
        ).all()
    assert len(rows) == len(keys_by_ref)
    keys = [r.seq for r in rows]
    matrix = np.stack([np.frombuffer(r.vector, dtype=np.float32) for r in rows])
    found = 0
    queries = clustered(100, matrix.shape[1], seed=99)
    for q in queries:
        ann = [key for key, _ in manager.search(pid, MODEL, q, k)]
        found += len(set(ann) & set(brute_force(matrix, keys, q, k)))
    return found / (k * len(queries))


def test_ann_neighbours_agree_with_exact_search(engine: sa.Engine, tmp_path: Path) -> None:
    pid = new_project(engine)
    assert store(engine, pid, clustered(3000, 64, seed=7)) == 3000
    manager = IndexManager(engine, tmp_path / "indexes")
    recall = recall_at(engine, manager, pid)
    print(f"recall@10 of the ANN index on 3000 vectors ({engine.dialect.name}): {recall:.3f}")
    assert recall >= 0.95


def test_a_deleted_index_is_rebuilt_from_the_table_with_the_same_results(
    engine: sa.Engine, tmp_path: Path
) -> None:
    pid = new_project(engine)
    store(engine, pid, clustered(500, 32, seed=3))
    folder = tmp_path / "indexes"
    queries = clustered(20, 32, seed=4)
    first = IndexManager(engine, folder)
    before = [first.search(pid, MODEL, q, 10) for q in queries]
    ix = first.index(pid, MODEL)
    assert ix.sidecar.is_file() and json.loads(ix.sidecar.read_text())["last_seq"] == ix.last_seq

    reopened = IndexManager(engine, folder).index(pid, MODEL)
    assert reopened.open(), "a consistent saved index is loaded, not rebuilt"
    assert [reopened.search(q, 10) for q in queries] == before

    for path in (folder / str(pid)).iterdir():
        path.unlink()
    rebuilt = IndexManager(engine, folder).index(pid, MODEL)
    assert not rebuilt.open()
    after = [rebuilt.search(q, 10) for q in queries]
    # HNSW is built by several threads, so a rebuilt graph is not bit-identical: (nearly) the
    # same ten neighbours, as near to the exact ones as before
    same = sum(
        len({k for k, _ in a} & {k for k, _ in b}) for a, b in zip(after, before, strict=True)
    )
    assert same >= 0.95 * 10 * len(queries)
    assert recall_at(engine, IndexManager(engine, folder), pid) >= 0.95


def test_a_saved_index_of_another_database_is_not_loaded(engine: sa.Engine, tmp_path: Path) -> None:
    pid = new_project(engine)
    store(engine, pid, clustered(50, 16, seed=5))
    folder = tmp_path / "indexes"
    IndexManager(engine, folder).index(pid, MODEL).open()
    other = sa.create_engine(f"sqlite:///{tmp_path / 'other.db'}")
    models.metadata.create_all(other)
    assert not IndexManager(other, folder).index(pid, MODEL).open()
    other.dispose()


def test_removed_and_deleted_vectors_never_come_back(engine: sa.Engine, tmp_path: Path) -> None:
    pid = new_project(engine)
    m = clustered(300, 32, seed=8)
    store(engine, pid, m)
    seqs = seq_of(engine, pid)
    manager = IndexManager(engine, tmp_path / "indexes")
    top = manager.search(pid, MODEL, m[0], 3)
    assert top[0][0] == seqs["i-0"] and top[0][1] == pytest.approx(1.0, abs=1e-5)

    assert manager.remove(pid, [seqs["i-0"], 10**9]) == 1
    assert seqs["i-0"] not in [k for k, _ in manager.search(pid, MODEL, m[0], 10)]

    # deleted in the table by another process: the re-check drops it and the index forgets it
    with engine.begin() as conn:
        delete_for_interactions(conn, pid, ["i-1"])
    embedder = FixedEmbedder({"q": m[1]})
    hits = search(engine, manager, embedder, pid, "q", k=5)
    assert "i-1" not in [h.ref_id for h in hits] and len(hits) == 5
    assert seqs["i-1"] not in [k for k, _ in manager.search(pid, MODEL, m[1], 10)]
    exact = search(engine, None, embedder, pid, "q", k=5, exact=True)
    assert [h.ref_id for h in exact] == [h.ref_id for h in hits]
    assert [h.score for h in exact] == pytest.approx([h.score for h in hits])


class FixedEmbedder:
    """Answers known queries with given vectors (to search for stored vectors)."""

    kind: Literal["model"] = "model"
    name = MODEL

    def __init__(self, vectors: dict[str, FloatArray]) -> None:
        self.vectors = vectors

    @property
    def dim(self) -> int:
        return len(next(iter(self.vectors.values())))

    def embed(self, texts: Sequence[str]) -> FloatArray:
        return np.stack([self.vectors[t] for t in texts])


def test_another_process_catches_up_with_new_vectors_and_a_drop(
    engine: sa.Engine, tmp_path: Path
) -> None:
    pid = new_project(engine)
    folder = tmp_path / "indexes"
    server = IndexManager(engine, folder)  # the server process
    assert server.search(pid, MODEL, np.ones(16, dtype=np.float32), 5) == []
    m = clustered(400, 16, seed=11)
    store(engine, pid, m[:200])  # the worker process writes to the table
    assert len(server.search(pid, MODEL, m[0], 5)) == 5
    store(engine, pid, m[200:], start=200)
    seqs = seq_of(engine, pid)
    assert server.search(pid, MODEL, m[300], 1)[0][0] == seqs["i-300"]
    assert len(server.index(pid, MODEL)) == 400

    # erasure in another process: rows deleted, then the index dropped
    with engine.begin() as conn:
        assert delete_for_interactions(conn, pid, ["i-300"]) == 1
    IndexManager(engine, folder).drop(pid)
    assert server.search(pid, MODEL, m[300], 1)[0][0] != seqs["i-300"]
    assert len(server.index(pid, MODEL)) == 399, "rebuilt from the table, not the old memory"
    server.index(pid, MODEL).save()
    assert IndexManager(engine, folder).index(pid, MODEL).open()


# --- the embedding job, end to end -----------------------------------------------------------


def ingest(runtime: Runtime, tenant: Tenant, events: list[dict[str, Any]]) -> None:
    key = runtime.verify(tenant.secret_key)
    result = runtime.ingestor.ingest(key, [json.dumps(e).encode() for e in events])
    assert result.all_stored


def interaction(
    id: str, text: Any, seconds: float, *, model: str = "m", user: str = "u-1"
) -> dict[str, Any]:
    body = {"input": text, "output": "ok", "user_id": user, "model": {"name": model}}
    return make_event("interaction", body, id=id, timestamp=T0 + dt.timedelta(seconds=seconds))


def test_the_embedding_job_stores_vectors_and_search_finds_a_paraphrase(
    runtime: Runtime,
    tenant: Tenant,
    other_tenant: Tenant,
    sentence: SentenceEmbedder,
    tmp_path: Path,
) -> None:
    rows = load_utterances(dataset="banking77", split="test")[:120]
    events = [
        interaction(f"i-{j}", u.text, j, model="m-a" if j % 2 else "m-b")
        for j, u in enumerate(rows)
    ]
    events.append(
        interaction(
            "chat",
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "my card got stuck in the ATM"},
            ],
            500,
        )
    )
    events.append(interaction("no-text", [{"role": "system", "content": "Be brief."}], 501))
    events.append(
        make_event(
            "feedback",
            {
                "interaction_id": "i-0",
                "thumbs": -1,
                "correction": "Freeze the card in the app.",
                "comment": "the answer ignored my stolen card",
            },
            id="f-1",
        )
    )
    events.append(
        make_event("feedback", {"interaction_id": "i-1", "thumbs": 1, "comment": ""}, id="f-2")
    )
    ingest(runtime, tenant, events)
    ingest(runtime, other_tenant, [interaction("x-1", "my card got stuck in the ATM", 0)])

    cache = EmbeddingCache(sentence, engine=runtime.engine)
    job = EmbeddingJob(runtime.engine, cache, EmbedParams(batch=50))
    stats = job.run()
    assert (stats.stored, stats.skipped) == (120 + 1 + 2 + 1, 1)
    assert job.run().stored == 0, "everything has its vector"
    v = models.vectors
    with runtime.engine.connect() as conn:
        kinds: dict[str, int] = dict(
            conn.execute(
                sa.select(v.c.kind, sa.func.count())
                .where(v.c.project_id == tenant.project_id)
                .group_by(v.c.kind)
            ).all()
        )
    assert kinds == {"input": 121, "correction": 1, "comment": 1}

    manager = IndexManager(runtime.engine, tmp_path / "indexes")
    pid = tenant.project_id
    hits = search(runtime.engine, manager, cache, pid, "the cash machine kept my card", k=3)
    assert hits[0].ref_id == "chat" and hits[0].kind == "input"
    assert hits[0].text == "my card got stuck in the ATM" and hits[0].score > 0.5
    assert "x-1" not in [h.ref_id for h in hits], "projects never mix"
    exact = search(
        runtime.engine, None, cache, pid, "the cash machine kept my card", k=3, exact=True
    )
    assert [h.ref_id for h in exact] == [h.ref_id for h in hits]

    fb = search(
        runtime.engine,
        manager,
        cache,
        pid,
        "someone stole my card",
        k=2,
        kinds=["correction", "comment"],
    )
    assert [h.kind for h in fb] == ["comment", "correction"]
    assert fb[0].ref_id == "f-1" and fb[0].interaction_id == "i-0" and fb[0].thumbs == -1
    assert fb[0].text == "the answer ignored my stolen card"

    segment = search(runtime.engine, manager, cache, pid, "card", k=50, model_name="m-a")
    assert len(segment) == 50 and all(int(h.ref_id[2:]) % 2 for h in segment)
    recent = search(
        runtime.engine,
        manager,
        cache,
        pid,
        "card",
        k=10,
        since=T0 + dt.timedelta(seconds=100),
        until=T0 + dt.timedelta(seconds=110),
    )
    assert sorted(h.ref_id for h in recent) == [f"i-{j}" for j in range(100, 110)]

    # new interactions later: the job embeds them, the index catches up
    ingest(runtime, tenant, [interaction("late", "how do I top up with Apple Pay?", 600)])
    assert job.run_once() == 1
    found = search(runtime.engine, manager, cache, pid, "add money using apple pay", k=1)
    assert found[0].ref_id == "late"
    # 121 inputs and 2 feedback texts (the other project's input repeats one), "late", and
    # 4 distinct queries: each embedded once
    assert cache.stats.misses == 121 + 2 + 1 + 4


def test_exact_search_filters_like_the_index(engine: sa.Engine) -> None:
    pid = new_project(engine)
    m = clustered(30, 8, seed=2)
    store(engine, pid, m)
    with engine.connect() as conn:
        hits = exact_search(
            conn, pid, MODEL, m[0], 5, SearchFilter(since=T0 + dt.timedelta(minutes=20))
        )
    assert {h.ref_id for h in hits} <= {f"i-{j}" for j in range(20, 30)} and len(hits) == 5
    with pytest.raises(ValueError, match="kind"):
        SearchFilter(kinds=("output",))


# --- the embedding job: watermark, full sweeps, retention ------------------------------------


class FakeClock:
    """The job's monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def vector_refs(engine: sa.Engine, project_id: int) -> set[str]:
    v = models.vectors
    with engine.connect() as conn:
        return set(
            conn.execute(sa.select(v.c.ref_id).where(v.c.project_id == project_id)).scalars()
        )


def receive_at(engine: sa.Engine, table: sa.Table, ref: str, at: dt.datetime) -> None:
    """As if the row had been received at ``at`` (and committed only now)."""
    with engine.begin() as conn:
        conn.execute(table.update().where(table.c.id == ref).values(received_at=at))


def test_after_a_full_run_the_next_runs_embed_new_rows_only_from_the_watermark(
    runtime: Runtime, tenant: Tenant
) -> None:
    ingest(runtime, tenant, [interaction(f"i-{j}", f"question {j}", j) for j in range(5)])
    clock = FakeClock()
    job = EmbeddingJob(runtime.engine, LexicalEmbedder(dim=32), EmbedParams(), clock=clock)
    assert job.watermark is None
    assert job.run().stored == 5, "the first run of a process is a full sweep"
    first = job.watermark
    assert first is not None
    with runtime.engine.connect() as conn:
        stored = conn.execute(sa.select(sa.func.max(models.interactions.c.received_at))).scalar()
    assert first == utc(stored), "the largest received_at stored, not the local clock"

    clock.now += 60
    ingest(runtime, tenant, [interaction("new", "a brand new question", 10)])
    assert job.run().stored == 1, "a row received after the watermark is embedded"
    assert job.watermark is not None and job.watermark >= first
    clock.now += 60
    assert job.run().stored == 0
    assert vector_refs(runtime.engine, tenant.project_id) == {f"i-{j}" for j in range(5)} | {"new"}


def test_a_row_received_before_the_watermark_is_found_by_the_periodic_full_sweep(
    runtime: Runtime, tenant: Tenant
) -> None:
    ingest(runtime, tenant, [interaction(f"i-{j}", f"question {j}", j) for j in range(3)])
    clock = FakeClock()
    params = EmbedParams(margin_seconds=600, full_sweep_seconds=3600)
    job = EmbeddingJob(runtime.engine, LexicalEmbedder(dim=32), params, clock=clock)
    assert job.run().stored == 3
    assert job.watermark is not None
    # committed now, but received (by a server's clock) an hour before the watermark
    long_ago = job.watermark - dt.timedelta(hours=1)
    ingest(
        runtime,
        tenant,
        [
            interaction("late", "a question that took its time", 20),
            make_event(
                "feedback",
                {"interaction_id": "i-0", "thumbs": -1, "comment": "that was wrong"},
                id="f-late",
            ),
        ],
    )
    receive_at(runtime.engine, models.interactions, "late", long_ago)
    receive_at(runtime.engine, models.feedback, "f-late", long_ago)
    # and one received within the margin
    ingest(runtime, tenant, [interaction("near", "a question just behind", 21)])
    receive_at(runtime.engine, models.interactions, "near", job.watermark - dt.timedelta(minutes=5))

    clock.now += 3599
    assert job.run().stored == 1, "within the margin: found; before it: left to the full sweep"
    assert "near" in vector_refs(runtime.engine, tenant.project_id)
    assert job.run().stored == 0
    clock.now += 1
    assert job.run().stored == 2, "the full sweep, an hour after the last one, finds them"
    assert {"late", "f-late"} <= vector_refs(runtime.engine, tenant.project_id)

    # full_sweep_seconds=0: every run is a full sweep
    every = EmbeddingJob(
        runtime.engine, LexicalEmbedder(dim=32), EmbedParams(full_sweep_seconds=0), clock=clock
    )
    assert every.run().stored == 0 and every.watermark is not None
    ingest(runtime, tenant, [interaction("later", "yet another slow question", 30)])
    receive_at(runtime.engine, models.interactions, "later", every.watermark - dt.timedelta(days=1))
    assert every.run().stored == 1


def test_rows_past_vector_retention_are_not_embedded_again(
    runtime: Runtime, tenant: Tenant
) -> None:
    old = [interaction(f"old-{j}", f"old question {j}", j) for j in range(3)]  # two days ago
    old.append(
        make_event(
            "feedback",
            {"interaction_id": "old-0", "thumbs": -1, "correction": "say it differently"},
            id="f-old",
            timestamp=T0,
        )
    )
    ingest(runtime, tenant, old)
    job = EmbeddingJob(runtime.engine, LexicalEmbedder(dim=32), EmbedParams(full_sweep_seconds=0))
    assert job.run().stored == 4
    pid = tenant.project_id
    with runtime.engine.begin() as conn:
        conn.execute(
            models.projects.update()
            .where(models.projects.c.id == pid)
            .values(retention=Retention(vector_days=1).encode())
        )
    assert enforce_retention(runtime.engine, None).vectors[pid] == 4
    assert vector_refs(runtime.engine, pid) == set()

    recent = make_event(
        "interaction",
        {"input": "a question of today", "output": "ok", "user_id": "u-1"},
        id="today",
        timestamp=utcnow() - dt.timedelta(hours=1),
    )
    ingest(runtime, tenant, [recent])
    assert job.run().stored == 1, "the full sweep embeds today's row, not the expired ones"
    assert job.run().stored == 0
    assert vector_refs(runtime.engine, pid) == {"today"}

    # a row whose vector retention deleted, received again later (a backfill, a replayed
    # copy under a new id): past vector_days, so not embedded in the watermark window either
    ingest(runtime, tenant, [interaction("backfill", "an old question sent late", 40)])
    job.params = dataclasses.replace(job.params, full_sweep_seconds=3600)
    assert job.run().stored == 0
    # keep forever: the full sweep embeds them all again
    with runtime.engine.begin() as conn:
        conn.execute(
            models.projects.update()
            .where(models.projects.c.id == pid)
            .values(retention=Retention(vector_days=None).encode())
        )
    job.params = dataclasses.replace(job.params, full_sweep_seconds=0)
    assert job.run().stored == 5
