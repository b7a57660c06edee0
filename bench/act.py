"""Act-stage benchmark: event rules, webhook delivery and recall, against floors and peers.

Usage::

    .venv/bin/python bench/act.py                # N = 20,000 feedback, M = 2,000, K = 5,000
    .venv/bin/python bench/act.py --quick        # N = 4,000, M = 100, K = 1,000 (< 1 min)
    .venv/bin/python bench/act.py --postgres postgresql://postgres@127.0.0.1:5432/postgres
    .venv/bin/python bench/act.py --parts rules,webhooks,recall --repeats 3

Each part runs on a fresh store: SQLite in a temporary folder, or with ``--postgres URL`` a
database created on that server (a role that may create databases) and dropped at the end.
Data is synthetic and seeded. Every figure is the median of ``--repeats`` runs, and every
ratio is our time over the floor's (or peer's) measured in the same run: above 1 is slower.

rules
    N interactions (prompt ``support@3``, sessions of 4 turns) and one feedback each (20 %
    thumbs down; ``--fire-rate`` of all, default 0.5 %, down with a correction) ingested through
    ``runtime.ingestor.ingest`` (validation, redaction, group commit) in batches of 500, then
    joined by ``Enricher.run``. The engine (``RuleEngine(runtime.act_context(), kinds)``)
    runs one event rule until its cursor stops moving (each run reads 2,000 feedback rows),
    three ways: a filter nothing matches (the scan alone), ``{thumbs: down, correction: true}``
    with a plugin-style no-op action (each firing records its row and baseline), and the same
    with the built-in ``review`` action (one task per firing). Firings and tasks are deleted
    between repeats. Floor: one plain SQLAlchemy SELECT of the same feedback rows and columns
    joined to their interactions in (received_at, id) order.
webhooks
    M deliveries enqueued to one endpoint (``allow_private``, ``webhook_allow=127.0.0.1/32``)
    of a receiver in its own process (``http.server.ThreadingHTTPServer``, HTTP/1.1, answers
    204). ``WebhookSender.run`` until nothing is due (lease, SSRF check, signing, a fresh
    pinned connection per delivery, recording); the deliveries are reset to ``pending``
    between repeats. Peers: the same bodies, signed before timing, posted in a loop with one
    keep-alive ``httpx.Client``, with a new client per post sharing one TLS context (a
    new connection each, as the sender opens), and with a default new client per post (on
    the first 400 bodies: each builds its own TLS context).
recall
    K knowledge-base entries (synthetic support questions, lexical embedder, stored as
    ``add_entry`` stores them) and 100 queries; ``knowledge.recall(..., k=3)`` one query at
    a time. Floors: the numpy matrix product alone (entries' matrix in memory, queries
    embedded before timing); the in-memory work of a recall (embed the query, product, top
    k); and that plus reading the active entries from the store.

Prints one markdown table per part, then the command that reruns it.
"""

from __future__ import annotations

import argparse
import atexit
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pydantic

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500
QUERIES = 100
FRESH_POSTS = 400
PROMPT = {"name": "support", "version": "3"}
MODEL = {"name": "gpt-4o-mini", "version": "2024-07-18"}
_VERBS = ("reset", "close", "open", "freeze", "replace", "upgrade", "cancel", "transfer", "check")
_NOUNS = ("card", "account", "password", "pin", "loan", "statement", "limit", "address", "plan")
_TAILS = ("today", "from abroad", "online", "in the app", "without fees", "for my partner", "")

NO_MATCH_RULE = "when: {event: {label: none-such}}\n  actions: [{noop: {}}]"
NOOP_RULE = "when: {event: {thumbs: down, correction: true}}\n  actions: [{noop: {}}]"
REVIEW_RULE = "when: {event: {thumbs: down, correction: true}}\n  actions: [{review: {}}]"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median_of(fn: Callable[[], float], args: argparse.Namespace) -> tuple[float, int]:
    """The median of up to ``--repeats`` calls of ``fn`` (each returns its own measured
    seconds; calls stop once they took ``--budget`` seconds in all) and the number of calls."""
    times: list[float] = []
    while len(times) < args.repeats and sum(times) < args.budget:
        times.append(fn())
    return statistics.median(times), len(times)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def question(rng: np.random.Generator, n: int) -> str:
    """A synthetic support question (unique through ``n``)."""
    verb, noun, tail = (str(rng.choice(w)) for w in (_VERBS, _NOUNS, _TAILS))
    return f"how do I {verb} my {noun} {tail} (case {n})".replace("  ", " ")


# --------------------------------------------------------------------------------------------
# Stores
# --------------------------------------------------------------------------------------------


def database_url(args: argparse.Namespace, part: str) -> str:
    """A fresh database for ``part``: SQLite in the work folder, or one on the PostgreSQL
    server of ``--postgres`` (dropped when this process exits)."""
    if not args.postgres:
        return f"sqlite:///{Path(args.work) / (part + '.db')}"
    import psycopg

    dsn = args.postgres.replace("postgresql+psycopg://", "postgresql://")
    name = f"cl_bench_act_{part}_{os.getpid()}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)
    return f"{dsn.rsplit('/', 1)[0]}/{name}"


def runtime_of(args: argparse.Namespace, part: str, **settings: Any) -> tuple[Any, int, Any]:
    """A started runtime on a fresh store, its one project's id and secret key."""
    from closedloop.runtime import Runtime
    from closedloop.settings import Settings

    s = Settings(
        data_dir=Path(args.work) / part,
        database_url=database_url(args, part),
        auth_cache_seconds=0,
        run_worker=False,
        embedder="lexical",
        _env_file=None,  # type: ignore[call-arg]
        **settings,
    )
    runtime = Runtime.build(s, load_plugins=False)
    runtime.start()
    project, _, secret = runtime.projects.create("bench")
    return runtime, project.id, runtime.verify(secret)


# --------------------------------------------------------------------------------------------
# rules
# --------------------------------------------------------------------------------------------


class NoopParams(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid")


class Noop:
    """A plugin-style action that does nothing: the engine's own cost."""

    name: ClassVar[str] = "noop"
    Params: ClassVar[type[pydantic.BaseModel]] = NoopParams

    def __init__(self, params: NoopParams, context: Any) -> None:
        pass

    def run(self, trigger: Any, *, dry_run: bool = False) -> Any:
        from closedloop.act.actions import ActionResult

        return ActionResult(action=self.name, ok=True, summary="nothing", dry_run=dry_run)


def ingest_feedback(runtime: Any, key: Any, n: int, seed: int, fire_rate: float) -> int:
    """Ingest ``n`` interactions and one feedback each (20 % thumbs down, ``fire_rate`` of all
    down with a correction), join them; how many match the rule."""
    from closedloop import make_event

    rng = np.random.default_rng(seed)
    down = rng.random(n) < 0.2
    corrected = down & (rng.random(n) < min(1.0, fire_rate / 0.2))
    start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=2)
    step = dt.timedelta(hours=1) / n
    for kind in ("interaction", "feedback"):
        for lo in range(0, n, BATCH):
            raws = []
            for k in range(lo, min(lo + BATCH, n)):
                ts = start + step * k
                if kind == "interaction":
                    body: dict[str, Any] = {
                        "input": question(rng, k),
                        "output": "You can do that in the Cards & Accounts section.",
                        "prompt": PROMPT,
                        "model": MODEL,
                        "session_id": f"s-{k // 4:07d}",
                    }
                    event = make_event("interaction", body, id=f"i-{k:07d}", timestamp=ts)
                else:
                    body = {"interaction_id": f"i-{k:07d}", "thumbs": -1 if down[k] else 1}
                    if corrected[k]:
                        body["correction"] = f"Open the app, then Cards, then {k}."
                    ts += dt.timedelta(minutes=1)
                    event = make_event("feedback", body, id=f"f-{k:07d}", timestamp=ts)
                raws.append(json.dumps(event).encode())
            result = runtime.ingestor.ingest(key, raws)
            if not result.all_stored:
                raise RuntimeError(f"ingest refused events: {result}")
    while runtime.enricher.run().busy:
        pass
    return int(corrected.sum())


def part_rules(args: argparse.Namespace) -> list[tuple[str, ...]]:
    import sqlalchemy as sa

    from closedloop.act.engine import RuleEngine
    from closedloop.act.rules import delete_rule, get_rule, list_rules, parse_rules, put_rule
    from closedloop.store import models

    runtime, pid, key = runtime_of(args, "rules")
    try:
        t0 = time.perf_counter()
        matches = ingest_feedback(runtime, key, args.n, args.seed, args.fire_rate)
        log(
            f"rules: {args.n:,} interactions + feedback ingested and joined in "
            f"{time.perf_counter() - t0:.1f} s; {matches:,} match"
        )
        engine = runtime.engine
        f, i = models.feedback, models.interactions
        with engine.connect() as conn:
            joined = conn.execute(
                sa.select(sa.func.count()).where(f.c.project_id == pid, f.c.join_state == "joined")
            ).scalar_one()
        if joined != args.n:
            raise RuntimeError(f"{joined} feedback joined, not {args.n}")
        kinds = {**runtime.action_kinds(), "noop": Noop}
        rules = RuleEngine(runtime.act_context(), kinds)
        # the engine reads feedback once it has settled (a few seconds old): wait for the last
        time.sleep(float(getattr(rules, "event_settle_seconds", 0.0)) + 0.5)
        columns = [
            f.c[c]
            for c in (
                "id",
                "received_at",
                "interaction_id",
                "thumbs",
                "rating",
                "rating_min",
                "rating_max",
                "label",
                "correction",
                "comment",
                "source",
                "join_state",
            )
        ]
        columns += [
            i.c[c] for c in ("prompt_name", "prompt_version", "model_name", "model_version")
        ]
        floor_query = (
            sa.select(*columns)
            .outerjoin(i, sa.and_(i.c.project_id == f.c.project_id, i.c.id == f.c.interaction_id))
            .where(f.c.project_id == pid, f.c.join_state != "pending")
            .order_by(f.c.received_at, f.c.id)
        )

        def select_all() -> float:
            with engine.connect() as conn:
                t0 = time.perf_counter()
                rows = conn.execute(floor_query).all()
                took = time.perf_counter() - t0
            if len(rows) != args.n:
                raise RuntimeError(f"the floor read {len(rows)} rows, not {args.n}")
            return took

        runs: dict[str, int] = {}

        def drain(name: str, body: str, fires: int) -> float:
            """Put a fresh rule, run the engine until its cursor stops; seconds in ``run``."""
            for old in list_rules(engine, pid):
                delete_rule(engine, pid, old.spec.name)
            with engine.begin() as conn:
                conn.execute(models.firings.delete())
                conn.execute(models.review_tasks.delete())
            text = f"- name: {name}\n  backfill: true\n  {body}\n"  # from the first feedback
            put_rule(engine, pid, parse_rules(text, kinds=kinds)[0])
            took, fired, ok, state, count = 0.0, 0, 0, None, 0
            while True:
                t0 = time.perf_counter()
                stats = rules.run(pid)
                took += time.perf_counter() - t0
                fired, ok, count = fired + stats.fired, ok + stats.actions_ok, count + 1
                now = get_rule(engine, pid, name).state
                if now == state:
                    break
                state = now
            if fired != fires or ok != fires:
                raise RuntimeError(f"{name}: {fired} fired, {ok} actions ok, not {fires}")
            runs[name] = count
            return took

        scan = median_of(lambda: drain("no-match", NO_MATCH_RULE, 0), args)
        noop = median_of(lambda: drain("noop", NOOP_RULE, matches), args)
        review = median_of(lambda: drain("review", REVIEW_RULE, matches), args)
        with engine.connect() as conn:  # each firing of `review` queued one task
            tasks = conn.execute(
                sa.select(sa.func.count()).select_from(models.review_tasks)
            ).scalar_one()
        if tasks != matches:
            raise RuntimeError(f"{tasks} review tasks, not {matches}")
        floor = median_of(select_all, args)
    finally:
        runtime.stop()
    log(
        f"rules: scan {scan[0]:.2f} s, noop {noop[0]:.2f} s, review {review[0]:.2f} s, "
        f"floor {floor[0]:.3f} s"
    )
    size, what = f"{args.n:,} feedback", "one SELECT"
    per_firing = [1000 * (t[0] - scan[0]) / max(1, matches) for t in (noop, review)]
    return [
        row(f"nothing matches ({runs['no-match']} engine runs)", size, args.n, scan, floor, what),
        row(f"{matches:,} firings, no-op action", size, args.n, noop, floor, what),
        row(f"{matches:,} firings, `review` action", size, args.n, review, floor, what),
        (
            "ms per firing beyond the scan: no-op / review",
            f"{matches:,} firings",
            " / ".join(f"{x:.1f}" for x in per_firing),
            "-",
            "-",
            "-",
        ),
    ]


# --------------------------------------------------------------------------------------------
# webhooks
# --------------------------------------------------------------------------------------------


class _Receiver(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive for the peer that reuses its connection
    received = 0
    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        with _Receiver.lock:
            _Receiver.received += 1
        self.send_response(204)
        self.send_header("content-length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        body = str(_Receiver.received).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_receiver() -> None:
    """The receiver process: prints its port, serves until killed."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


def part_webhooks(args: argparse.Namespace) -> list[tuple[str, ...]]:
    import httpx
    import sqlalchemy as sa
    from standardwebhooks.webhooks import Webhook

    from closedloop.act.webhooks.endpoints import Endpoints
    from closedloop.act.webhooks.outbox import WebhookSender, enqueue
    from closedloop.act.webhooks.ssrf import SsrfGuard
    from closedloop.store import models
    from closedloop.store.db import utcnow

    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--receiver"],
        stdout=subprocess.PIPE,
        text=True,
    )
    runtime = None
    try:
        assert proc.stdout is not None
        base = f"http://127.0.0.1:{int(proc.stdout.readline())}"
        runtime, pid, _ = runtime_of(args, "webhooks", webhook_allow=["127.0.0.1/32"])
        engine, m = runtime.engine, args.m
        endpoint = Endpoints(engine, SsrfGuard(["127.0.0.1/32"])).create(
            pid, "bench", f"{base}/hook", allow_private=True
        )
        with engine.begin() as conn:
            for k in range(m):
                payload = {
                    "rule": "corrections",
                    "segment": "prompt=support@3",
                    "snapshot": {
                        "feedback_id": f"f-{k:07d}",
                        "interaction_id": f"i-{k:07d}",
                        "thumbs": -1,
                        "correction": f"Open the app, then Cards ({k}).",
                    },
                    "fired_at": utcnow(),
                }
                enqueue(conn, pid, "bench", "rule.fired", payload)
        d = models.webhook_deliveries
        sender = WebhookSender(engine, runtime.settings)

        def received() -> int:
            return int(httpx.get(f"{base}/count", trust_env=False).text)

        def send() -> float:
            with engine.begin() as conn:
                conn.execute(
                    d.update().values(
                        state="pending",
                        attempts=0,
                        lease_until=None,
                        next_attempt_at=utcnow(),
                        delivered_at=None,
                    )
                )
            before = received()
            t0 = time.perf_counter()
            while sender.run(limit=50):
                pass
            took = time.perf_counter() - t0
            with engine.connect() as conn:
                done = conn.execute(
                    sa.select(sa.func.count()).where(d.c.state == "delivered")
                ).scalar_one()
            if done != m or received() - before != m:
                raise RuntimeError(f"{done} delivered, {received() - before} received, not {m}")
            return took

        with engine.connect() as conn:
            rows = conn.execute(sa.select(d.c.msg_id, d.c.payload).order_by(d.c.id)).all()
        signer, now = Webhook(endpoint.secret), utcnow()
        signed = [
            (
                r.payload,
                {
                    "content-type": "application/json",
                    "webhook-id": r.msg_id,
                    "webhook-timestamp": str(int(now.timestamp())),
                    "webhook-signature": signer.sign(r.msg_id, now, r.payload),
                },
            )
            for r in rows
        ]
        url = f"{base}/hook"

        context = httpx.create_ssl_context(trust_env=False)

        def peer(how: str, bodies: list[tuple[str, dict[str, str]]]) -> float:
            """Post every signed body: ``keep`` one client, ``shared`` a client per post with
            one TLS context (a new connection each), ``fresh`` a default client per post."""
            before = received()
            t0 = time.perf_counter()
            if how == "keep":
                with httpx.Client(trust_env=False, timeout=10) as client:
                    for body, headers in bodies:
                        client.post(url, content=body, headers=headers).raise_for_status()
            else:
                verify: Any = context if how == "shared" else True
                for body, headers in bodies:
                    with httpx.Client(trust_env=False, timeout=10, verify=verify) as client:
                        client.post(url, content=body, headers=headers).raise_for_status()
            took = time.perf_counter() - t0
            if received() - before != len(bodies):
                raise RuntimeError(f"the peer's {len(bodies)} posts were not all received")
            return took

        peer("keep", signed)  # warm-up (imports, the receiver's first threads)
        few = signed[:FRESH_POSTS]  # a default client costs ~20 ms: fewer suffice
        sent = median_of(send, args)
        keep = median_of(lambda: peer("keep", signed), args)
        shared = median_of(lambda: peer("shared", signed), args)
        fresh = median_of(lambda: peer("fresh", few), args)
    finally:
        if runtime is not None:
            runtime.stop()
        proc.kill()
        proc.wait()
    log(
        f"webhooks: sender {sent[0]:.2f} s, keep-alive {keep[0]:.2f} s, "
        f"client per post {shared[0]:.2f} s (one TLS context), {fresh[0]:.2f} s"
        " (default)"
    )
    size = f"{m:,} deliveries"
    return [
        row("WebhookSender", size, m, sent, keep, "one keep-alive httpx.Client"),
        row("WebhookSender", size, m, sent, shared, "an httpx.Client per post, one TLS context"),
        row("WebhookSender", size, m, sent, fresh, "a default httpx.Client per post", len(few)),
    ]


# --------------------------------------------------------------------------------------------
# recall
# --------------------------------------------------------------------------------------------


def part_recall(args: argparse.Namespace) -> list[tuple[str, ...]]:
    import sqlalchemy as sa

    from closedloop.act.knowledge import recall
    from closedloop.store import models
    from closedloop.store.db import utcnow

    runtime, pid, _ = runtime_of(args, "recall")
    try:
        engine, embedder, k = runtime.engine, runtime.embedder(), args.k
        rng = np.random.default_rng(args.seed + 1)
        texts = [question(rng, n) for n in range(k)]
        vectors = embedder.embed(texts).astype(np.float32)
        now = utcnow()
        t = models.kb_entries
        with engine.begin() as conn:
            conn.execute(
                t.insert(),
                [
                    {
                        "project_id": pid,
                        "query": q,
                        "answer": f"Answer {n}: use the app.",
                        "source": "manual",
                        "model": embedder.name,
                        "vector": vectors[n].tobytes(),
                        "active": True,
                        "created_at": now,
                        "updated_at": now,
                    }
                    for n, q in enumerate(texts)
                ],
            )
        queries = [question(rng, k + n) for n in range(QUERIES)]
        qvecs = [embedder.embed([q])[0] for q in queries]
        matrix = vectors.copy()

        def ours() -> float:
            t0 = time.perf_counter()
            for q in queries:
                if len(recall(engine, embedder, pid, q, k=3)) != 3:
                    raise RuntimeError("recall found fewer than 3 entries")
            return time.perf_counter() - t0

        def product() -> float:
            t0 = time.perf_counter()
            for v in qvecs:
                matrix @ v
            return time.perf_counter() - t0

        def in_memory(m: np.ndarray, q: str) -> list[int]:
            scores = m @ embedder.embed([q])[0]
            return [int(j) for j in np.argsort(-scores, kind="stable")[:3]]

        def memory() -> float:
            return timed(lambda: [in_memory(matrix, q) for q in queries])

        read = sa.select(
            t.c.id, t.c.query, t.c.answer, t.c.source, t.c.created_at, t.c.model, t.c.vector
        ).where(t.c.project_id == pid, t.c.active.is_(True))

        def stored() -> float:
            def one(q: str) -> list[int]:
                with engine.connect() as conn:
                    rows = conn.execute(read).all()
                blob = b"".join(r.vector for r in rows)
                m = np.frombuffer(blob, dtype=np.float32).reshape(len(rows), -1)
                return in_memory(m, q)

            return timed(lambda: [one(q) for q in queries])

        for q in queries[:5]:  # warm-up
            recall(engine, embedder, pid, q, k=3)
        product(), memory(), stored()
        times: dict[str, list[float]] = {"ours": [], "product": [], "memory": [], "stored": []}
        while len(times["ours"]) < args.repeats and sum(times["ours"]) < args.budget:
            for name, fn in (
                ("ours", ours),
                ("product", product),
                ("memory", memory),
                ("stored", stored),
            ):
                times[name].append(fn())
        med = {name: (statistics.median(ts), len(ts)) for name, ts in times.items()}
    finally:
        runtime.stop()
    log("recall: " + ", ".join(f"{n} {v[0] * 1000 / QUERIES:.3f} ms/query" for n, v in med.items()))
    size = f"{k:,} entries, {embedder.dim} dims, {QUERIES} queries"
    return [
        row("recall", size, QUERIES, med["ours"], med["product"], "the matrix product alone"),
        row("recall", size, QUERIES, med["ours"], med["memory"], "embed + product + top 3"),
        row(
            "recall",
            size,
            QUERIES,
            med["ours"],
            med["stored"],
            "read entries + embed + product + top 3",
        ),
    ]


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------

PARTS: dict[str, tuple[str, Callable[[argparse.Namespace], list[tuple[str, ...]]]]] = {
    "rules": ("feedback events/s", part_rules),
    "webhooks": ("deliveries/s", part_webhooks),
    "recall": ("queries/s", part_recall),
}


def row(
    label: str,
    size: str,
    count: int,
    ours: tuple[float, int],
    floor: tuple[float, int],
    what: str,
    floor_count: int | None = None,
) -> tuple[str, ...]:
    """A table row: ``count`` items in ``ours`` and ``floor_count`` (default the same) in
    ``floor`` (median seconds, runs); the ratio is of the time per item."""
    fc = count if floor_count is None else floor_count
    shown = f"{what}, {fc:,} items" if fc != count else what
    return (
        label,
        size,
        f"{fmt(count / ours[0])} ({ours[0]:.3g} s)",
        f"{shown}: {fmt(fc / floor[0])} ({floor[0]:.3g} s)",
        f"{(ours[0] / count) / (floor[0] / fc):.1f}",
        f"{ours[1]} / {floor[1]}",
    )


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.3g}"


def command() -> str:
    """The command line that reruns this benchmark, from the repository's root."""
    python = Path(sys.executable)
    try:
        shown = str(python.relative_to(ROOT))
    except ValueError:
        shown = str(python)
    return shlex.join([shown, "bench/act.py", *sys.argv[1:]])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=20_000, help="feedback rows (rules)")
    parser.add_argument("--m", type=int, default=2_000, help="webhook deliveries")
    parser.add_argument("--k", type=int, default=5_000, help="knowledge-base entries")
    parser.add_argument("--quick", action="store_true", help="N = 4,000, M = 100, K = 1,000")
    parser.add_argument(
        "--fire-rate", type=float, default=0.005, help="share of feedback that fires"
    )
    parser.add_argument("--repeats", type=int, default=3, help="medians of up to this many runs")
    parser.add_argument(
        "--budget",
        type=float,
        help="seconds of runs per measurement before it stops repeating (default 30, quick 5)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--parts", default="rules,webhooks,recall")
    parser.add_argument("--postgres", metavar="URL", help="a server whose role may create DBs")
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        serve_receiver()
        return
    if args.quick:
        args.n, args.m, args.k = 4_000, 100, 1_000
    if args.budget is None:
        args.budget = 5.0 if args.quick else 30.0
    unknown = set(args.parts.split(",")) - set(PARTS)
    if unknown:
        parser.error(f"--parts: unknown {', '.join(sorted(unknown))}; of {', '.join(PARTS)}")
    args.work = tempfile.mkdtemp(prefix="closedloop-bench-act-")
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    tables: dict[str, list[tuple[str, ...]]] = {}
    try:
        for part in args.parts.split(","):
            log(f"part {part}")
            tables[part] = PARTS[part][1](args)
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    for part, rows in tables.items():
        head = (
            "measurement",
            "size",
            f"ours: {PARTS[part][0]}",
            "floor / peer",
            "ratio (time)",
            "runs",
        )
        print(f"\n### {part}\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join("---" for _ in head) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    backend = "postgresql" if args.postgres else "sqlite"
    print(
        f"\n{backend}; medians of up to {args.repeats} runs ({args.budget:g} s budget each); "
        f"total {time.perf_counter() - t0:.0f} s; "
        f"load average {load:.2f} before, {os.getloadavg()[0]:.2f} after"
    )
    print(f"command: {command()}")


if __name__ == "__main__":
    main()
