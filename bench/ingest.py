"""Ingest benchmark: HTTP ingest through a real ``closedloop serve`` against the plain floor.

Usage::

    python bench/ingest.py [--backend sqlite|postgresql|both] [--seconds N] [--clients N]
                           [--profile cpu|gil] [--server-workers N]

For each backend, on a fresh database each time:

1. ``interactions`` (~1.6 KB events) and ``feedback`` (feedback and signals only, ~0.3 KB)
   mixes: a real ``closedloop serve`` subprocess, and a load generator in a separate process
   (``--clients`` threads, one keep-alive ``httpx`` client each) posting batches of 100 events
   built before timing (every id unique). Reported: durable events/s (only events answered
   ``stored``, i.e. committed), p50/p99 request latency, the server's peak RSS and CPU use.
2. The floor: as many events of the same kind, rows built before timing, written straight into
   a fresh database with the same schema (``closedloop.store.migrate.upgrade``) at the same
   durability. SQLite: WAL, ``synchronous=FULL``, ``executemany`` in transactions of 500
   events. PostgreSQL: ``COPY`` (psycopg 3) in transactions of 500 events. Each event is one
   ``event_ids`` row plus one row in ``interactions`` / ``feedback`` / ``signals``, exactly
   what the server writes (built by the server's own row builder).
3. Overload: many more clients than the server can take (retrying at once, no back-off) and a
   small write queue; reported: 429s, stored events/s and the server's RSS through the window.

Results are printed as a table and written as JSON to ``bench/results/`` (gitignored), with
py-spy stacks there too under ``--profile``. PostgreSQL needs the server at ``--pg-admin-url``
(default the test database); the benchmark creates its own databases there and drops them.
See docs/benchmarks.md for figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import random
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import msgspec
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
BATCH = 100  # events per request
FLOOR_TXN = 500  # events per floor transaction
PROJECT_ID = 1  # the first project of a fresh database


# --------------------------------------------------------------------------------------------
# Realistic events, from the shipped CLINC150 / Banking77 slice
# --------------------------------------------------------------------------------------------

_SYSTEM = (
    "You are the support assistant of Northwind Bank. Answer in two to four friendly, precise "
    "sentences, using only the retrieved documents. Never ask for a card number or a PIN."
)
_ANSWERS = (
    "Thanks for reaching out about {topic}. Based on our help centre, {doc} If anything looks "
    "wrong on your side, open the app, go to Help > {topic_title} and start a chat: an agent "
    "can check your account directly and usually answers within a few minutes.",
    "Here is what I found about {topic}: {doc} You can follow the status in the app under "
    "Activity. If this does not solve it, reply here and I will escalate your case to a "
    "specialist with the details you already gave me.",
    "Good question. For {topic}, {doc} Please note that processing times can vary on weekends "
    "and public holidays. Is there anything else I can help you with today?",
)
_DOCS = (
    "requests of this kind are handled within one business day and you get a notification as "
    "soon as the change is applied to your account.",
    "you can manage this yourself in the Cards & Accounts section; changes take effect "
    "immediately and are confirmed by e-mail.",
    "our fees for this service are listed in the pricing schedule; standard accounts get the "
    "first three operations of each month free of charge.",
    "for security reasons we may ask you to verify your identity with a selfie and a photo of "
    "a valid ID document before we proceed.",
)
_MODELS = (
    ("gpt-4o-mini", "2024-07-18", "openai"),
    ("claude-3-5-haiku", "20241022", "anthropic"),
    ("llama-3.1-8b-instruct", "q4_k_m", "ollama"),
)
_CORRECTIONS = (
    "The fee is waived for premium accounts; the answer should say so.",
    "Transfers to this country take up to five business days, not one.",
    "The customer asked about a virtual card, not a physical one.",
)
_COMMENTS = (
    "Helpful, but too long.",
    "It did not answer my question at all.",
    "Perfect, exactly what I needed!",
    "The link in the answer does not work.",
)
_SIGNALS = ("copy", "regenerate", "accept", "click", "dwell", "abandon", "escalate", "edit")


def _utterances() -> list[Any]:
    from closedloop.sample import load_utterances

    return load_utterances()


def interaction_body(rng: random.Random, utts: list[Any]) -> dict[str, Any]:
    """One ~1.5 KB interaction body: chat input, answer, model, prompt, RAG docs, tokens."""
    u = rng.choice(utts)
    topic = u.intent.replace("_", " ")
    docs = rng.sample(_DOCS, 2)
    model = rng.choice(_MODELS)
    tokens_in = rng.randint(350, 900)
    tokens_out = rng.randint(60, 220)
    answer = rng.choice(_ANSWERS).format(topic=topic, topic_title=topic.title(), doc=docs[0])
    return {
        "input": [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": u.text + _UNIQUE},
        ],
        "output": answer + _UNIQUE,
        "session_id": f"s-{rng.getrandbits(48):012x}",
        "user_id": f"u-{rng.randrange(50_000):05d}",
        "model": {"name": model[0], "version": model[1], "provider": model[2]},
        "prompt": {"name": "support-answer", "version": f"v{rng.randint(3, 7)}"},
        "retrieved": [
            {
                "id": f"kb-{u.intent}-{i}",
                "score": round(rng.uniform(0.55, 0.95), 4),
                "text": doc,
                "source": "help-centre",
            }
            for i, doc in enumerate(docs)
        ],
        "latency_ms": round(rng.uniform(300, 2500), 1),
        "tokens": {"input": tokens_in, "output": tokens_out, "total": tokens_in + tokens_out},
        "cost_usd": round((tokens_in * 0.15 + tokens_out * 0.6) / 1e6, 8),
        "metadata": {
            "intent": u.intent,
            "dataset": u.dataset,
            "domain": u.domain,
            "app_version": f"4.{rng.randint(0, 9)}.{rng.randint(0, 20)}",
            "locale": rng.choice(("en-GB", "en-US", "en-IE")),
            "channel": rng.choice(("ios", "android", "web")),
        },
        "tags": ["support", u.dataset, rng.choice(("tier-1", "tier-2"))],
    }


def feedback_event(rng: random.Random, utts: list[Any]) -> tuple[str, dict[str, Any]]:
    """A feedback or signal event body (the feedback-only mix: 60 % feedback, 40 % signals)."""
    interaction_id = str(uuid.UUID(int=rng.getrandbits(128)))
    common = {
        "interaction_id": interaction_id,
        "session_id": f"s-{rng.getrandbits(48):012x}",
        "user_id": f"u-{rng.randrange(50_000):05d}",
    }
    if rng.random() < 0.6:
        kind = rng.choice(("thumbs", "thumbs", "rating", "correction", "comment"))
        body: dict[str, Any] = dict(common)
        if kind == "thumbs":
            body["thumbs"] = rng.choice((-1, 1))
        elif kind == "rating":
            body["rating"] = rng.randint(1, 5)
        elif kind == "correction":
            body["correction"] = rng.choice(_CORRECTIONS)
            body["source"] = "reviewer"
            body["given_by"] = f"reviewer-{rng.randrange(20)}"
        else:
            body["thumbs"] = rng.choice((-1, 1))
            body["comment"] = rng.choice(_COMMENTS)
        body["metadata"] = {"channel": rng.choice(("ios", "android", "web"))}
        return "feedback", body
    kind = rng.choice(_SIGNALS)
    body = dict(common, kind=kind)
    if kind == "edit":
        body["text"] = rng.choice(utts).text
    elif kind == "dwell":
        body["duration_ms"] = rng.randint(500, 60_000)
    elif kind == "click":
        body["target"] = f"https://help.example.com/kb/{rng.randrange(1000)}"
        body["rank"] = rng.randrange(5)
    return "signal", body


_SESSION = re.compile(rb'"session_id":"[^"]*"')
# Filled per event with a word unique to it: users' inputs and the model's answers do not
# repeat, while the system prompt, documents, metadata and tags do (the redactor caches those).
_UNIQUE = " (case QQQQQQ)"


def _word(n: int) -> bytes:
    """``n`` as six lower-case letters."""
    out = bytearray()
    for _ in range(6):
        n, r = divmod(n, 26)
        out.append(97 + r)
    return bytes(out)


class EventFactory:
    """Serialised events with unique UUIDv7-shaped ids; bodies from a pre-encoded pool."""

    def __init__(self, mix: str, seed: int, pool: int = 2000) -> None:
        rng = random.Random(seed)
        utts = _utterances()
        self.mix = mix
        self.bodies: list[tuple[bytes, bytes]] = []
        for _ in range(pool):
            if mix == "interactions":
                type_, body = "interaction", interaction_body(rng, utts)
            else:
                type_, body = feedback_event(rng, utts)
            self.bodies.append((type_.encode(), msgspec.json.encode(body)))
        self.rng = rng
        self.salt = f"7{rng.getrandbits(12):03x}-{0x8000 | (seed & 0x3FFF):04x}"
        self.seed = seed
        self.seq = 0

    def event(self) -> bytes:
        """One serialised envelope with a fresh id and a current timestamp."""
        type_, body = self.bodies[self.rng.randrange(len(self.bodies))]
        now = dt.datetime.now(dt.UTC)
        ms = int(now.timestamp() * 1000)
        self.seq += 1
        # UUIDv7-shaped and time-ordered like the SDK's ids; unique by (seed, sequence).
        event_id = f"{ms >> 16:08x}-{ms & 0xFFFF:04x}-{self.salt}-{self.seq:012x}".encode()
        ts = now.isoformat().encode()
        # sessions of three turns, as in a chat (a pooled body's own session id would make
        # sessions of thousands of turns, which the enrichment job re-reads again and again)
        session = b"s-%s-%08x" % (self.salt.encode(), self.seq // 3)
        body = _SESSION.sub(b'"session_id":"' + session + b'"', body, count=1)
        body = body.replace(b"QQQQQQ", _word(self.seq * 7919 + self.seed))
        return b'{"id":"%s","type":"%s","timestamp":"%s","body":%s}' % (event_id, type_, ts, body)

    def batch(self, n: int = BATCH) -> bytes:
        """A request body ``{"events": [...]}`` of ``n`` fresh events."""
        return b'{"events":[' + b",".join(self.event() for _ in range(n)) + b"]}"


# --------------------------------------------------------------------------------------------
# The server under test
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A ``closedloop serve`` subprocess on a fresh database."""

    env: dict[str, str]
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    key: str = ""
    workers: int = 1

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @classmethod
    def create(
        cls, workdir: Path, database_url: str, *, pii: str = "default", **settings: str
    ) -> Server:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOSEDLOOP_")}
        env.update(
            CLOSEDLOOP_DATA_DIR=str(workdir),
            CLOSEDLOOP_DATABASE_URL=database_url,
            CLOSEDLOOP_CONFIG_FILE=str(workdir / "none.toml"),
        )
        env.update({f"CLOSEDLOOP_{k.upper()}": v for k, v in settings.items()})
        server = cls(env=env, port=_free_port(), log=workdir / f"serve-{time.time_ns()}.log")
        out = subprocess.run(
            [sys.executable, "-m", "closedloop", "projects", "create", "bench", "--json"],
            env=env,
            capture_output=True,
            check=True,
            cwd=workdir,
        )
        server.key = json.loads(out.stdout)["secret_key"]
        if pii == "off":  # the project's PII policy: redaction off (to measure its cost)
            subprocess.run(
                [sys.executable, "-m", "closedloop", "projects", "pii", "bench", "--disable"],
                env=env,
                capture_output=True,
                check=True,
                cwd=workdir,
            )
        return server

    def start(self) -> None:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "closedloop", "serve"),
                    *("--port", str(self.port), "--workers", str(self.workers)),
                ],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.log.parent,
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError("server did not start in 30 s")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class RssSampler:
    """Samples a process's RSS and CPU time (with its children) every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[float, int, float]:
        now = time.monotonic()
        rss, cpu = 0, 0.0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                rss += p.memory_info().rss
                times = p.cpu_times()
                cpu += times.user + times.system
        return now, rss, cpu

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append(self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, since: float = 0.0) -> int:
        return max((r for t, r, _ in self.samples if t >= since), default=0)

    def at(self, when: float) -> tuple[float, int, float]:
        """The first sample at or after ``when`` (the last one if none)."""
        for sample in self.samples:
            if sample[0] >= when:
                return sample
        return self.samples[-1] if self.samples else (when, 0, 0.0)

    def cpu_cores(self, start: float, end: float) -> float:
        """Mean CPU use between ``start`` and ``end``, in cores."""
        (t0, _, c0), (t1, _, c1) = self.at(start), self.at(end)
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0


# --------------------------------------------------------------------------------------------
# The load generator (a separate process)
# --------------------------------------------------------------------------------------------


@dataclass
class LoadConfig:
    url: str
    key: str
    mix: str
    clients: int
    warmup: float
    seconds: float
    seed: int
    expected_rate: float  # events/s to pre-build for (ample)
    start_at_wall: float = 0.0  # filled by the child: wall-clock start of the window


class _Answer(msgspec.Struct):
    stored: int = 0


def _client(
    cfg: LoadConfig, bodies: list[bytes], factory: EventFactory, t_measure: float, t_end: float
) -> dict[str, Any]:
    decoder = msgspec.json.Decoder(_Answer)
    headers = {"authorization": f"Bearer {cfg.key}", "content-type": "application/json"}
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stored = stored_total = errors = rebuilt = 0
    i = 0
    with httpx.Client(base_url=cfg.url, timeout=120, headers=headers) as client:
        while True:
            if time.perf_counter() >= t_end:
                break
            if i < len(bodies):
                body = bodies[i]
                bodies[i] = b""  # sent bodies are not kept
            else:
                body = factory.batch()
                rebuilt += 1
            i += 1
            t0 = time.perf_counter()
            try:
                r = client.post("/v1/events", content=body)
            except httpx.HTTPError:
                errors += 1
                continue
            t1 = time.perf_counter()
            n = decoder.decode(r.content).stored if r.status_code in (200, 207) else 0
            stored_total += n
            if t_measure <= t1 <= t_end:
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code in (200, 207):
                    latencies.append(t1 - t0)
                    stored += n
    return {
        "latencies": latencies,
        "statuses": statuses,
        "stored": stored,
        "stored_total": stored_total,
        "errors": errors,
        "rebuilt_batches": rebuilt,
        "sent": i,
    }


def loadgen(cfg: LoadConfig, out: Any) -> None:
    """Child process: build every body first, then run the clients and report."""
    factories = [
        EventFactory(cfg.mix, seed=cfg.seed * 1000 + c, pool=400) for c in range(cfg.clients)
    ]
    per_client = math.ceil(cfg.expected_rate * (cfg.warmup + cfg.seconds) / BATCH / cfg.clients)
    bodies = [[f.batch() for _ in range(per_client)] for f in factories]
    out.put({"ready": True, "bytes_per_event": len(bodies[0][0]) / BATCH})
    now = time.perf_counter()
    t_measure, t_end = now + cfg.warmup, now + cfg.warmup + cfg.seconds
    results: list[dict[str, Any]] = [{} for _ in range(cfg.clients)]

    def run(c: int) -> None:
        results[c] = _client(cfg, bodies[c], factories[c], t_measure, t_end)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(cfg.clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, t_measure - time.perf_counter()))
    cpu0 = time.process_time()
    time.sleep(max(0.0, t_end - time.perf_counter()))
    cpu_cores = (time.process_time() - cpu0) / cfg.seconds
    for t in threads:
        t.join()
    latencies = sorted(x for r in results for x in r["latencies"])
    statuses: dict[str, int] = {}
    for r in results:
        for code, n in r["statuses"].items():
            statuses[str(code)] = statuses.get(str(code), 0) + n
    stored = sum(r["stored"] for r in results)
    out.put(
        {
            "stored": stored,
            "stored_total": sum(r["stored_total"] for r in results),  # warm-up included
            "events_per_s": stored / cfg.seconds,
            "requests": len(latencies),
            "statuses": statuses,
            "errors": sum(r["errors"] for r in results),
            "rebuilt_batches": sum(r["rebuilt_batches"] for r in results),
            "p50_ms": _pct(latencies, 50) * 1000,
            "p99_ms": _pct(latencies, 99) * 1000,
            "mean_ms": (statistics.fmean(latencies) * 1000) if latencies else 0.0,
            "loadgen_cpu_cores": cpu_cores,
        }
    )


def _pct(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    k = min(len(values) - 1, max(0, math.ceil(p / 100 * len(values)) - 1))
    return values[k]


def _receive(out: Any, child: Any) -> dict[str, Any]:
    """The next message of the load generator; fails if it dies first."""
    import queue

    while True:
        try:
            message: dict[str, Any] = out.get(timeout=1)
            return message
        except queue.Empty:
            if not child.is_alive():
                raise RuntimeError(f"the load generator died (exit {child.exitcode})") from None


def _py_spy(pid: int, seconds: float, output: Path, gil: bool) -> subprocess.Popen[bytes]:
    """Record the server's stacks (py-spy, raw collapsed format) for ``seconds``."""
    command = [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid)]
    command += ["--duration", str(max(1, int(seconds))), "--rate", "200", "--nonblocking"]
    command += ["--threads", "--format", "raw", "--output", str(output)]
    if gil:  # only the thread holding the GIL
        command.append("--gil")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize_profile(path: Path, top: int = 12) -> str:
    """The functions with the most samples of their own in a py-spy raw file, per thread."""
    import collections
    import re

    own: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    with contextlib.suppress(FileNotFoundError), path.open() as lines:
        for line in lines:
            stack, _, count = line.rstrip().rpartition(" ")
            if not count.isdigit():
                continue
            frames = stack.split(";")
            thread = re.sub(r"^thread \(\d+\): ?", "", frames[0]) or "thread"
            leaf = re.sub(r":\d+\)$", ")", frames[-1])
            own[(thread, leaf)] += int(count)
            total += int(count)
    out = [f"  {path.name}: {total} samples; most samples of their own:"]
    for (thread, leaf), n in own.most_common(top):
        out.append(f"    {n / max(total, 1):6.1%}  {thread[:20]:<20} {leaf}")
    return "\n".join(out)


def run_load(
    server: Server, cfg: LoadConfig, profile: Path | None = None, gil: bool = False
) -> dict[str, Any]:
    """Run the load generator process against ``server``; sample the server's RSS meanwhile.

    With ``profile``, py-spy records the server through the measured window into that file.
    """
    assert server.proc is not None
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=loadgen, args=(cfg, out), daemon=True)
    with RssSampler(server.proc.pid) as rss:
        child.start()
        ready = _receive(out, child)
        t_measure = time.monotonic() + cfg.warmup
        spy = None
        if profile is not None:
            time.sleep(cfg.warmup)
            spy = _py_spy(server.proc.pid, cfg.seconds, profile, gil)
        report = _receive(out, child)
        child.join(30)
        if spy is not None:
            spy.wait(60)
    report["bytes_per_event"] = ready["bytes_per_event"]
    report["rss_peak_mb"] = rss.peak() / 2**20
    t_end = t_measure + cfg.seconds
    report["rss_start_mb"] = rss.at(t_measure)[1] / 2**20
    report["rss_end_mb"] = rss.at(t_end)[1] / 2**20
    report["server_cpu_cores"] = rss.cpu_cores(t_measure, t_end)
    report["rss_timeline_mb"] = [  # once a second through the measured window
        round(rss.at(t_measure + i)[1] / 2**20, 1) for i in range(int(cfg.seconds) + 1)
    ]
    report["clients"] = cfg.clients
    report["seconds"] = cfg.seconds
    return report


# --------------------------------------------------------------------------------------------
# Databases and the floor
# --------------------------------------------------------------------------------------------


LEDGER_COLUMNS = ("project_id", "event_id", "type", "received_at")


@dataclass
class FloorRows:
    """What the server writes for some events, as plain tuples in arrival order."""

    ledger: list[tuple[Any, ...]]  # event_ids rows
    rows: list[tuple[str, tuple[Any, ...]]]  # (event type, row of its table)
    columns: dict[str, list[str]]  # event type -> its table's columns, in row order
    tables: dict[str, str]  # event type -> table name

    @classmethod
    def build(cls, events: list[bytes], sqlite_datetimes: bool) -> FloorRows:
        """Decode ``events`` and build their rows with the server's own row builder.

        ``sqlite_datetimes``: timestamps as SQLAlchemy stores them in SQLite (text).
        """
        from closedloop.events import decode_event
        from closedloop.ingest.pipeline import _row
        from closedloop.store.db import utcnow
        from closedloop.store.writer import TABLES

        def value(v: Any) -> Any:
            if sqlite_datetimes and isinstance(v, dt.datetime):
                return v.strftime("%Y-%m-%d %H:%M:%S.%f")  # SQLAlchemy's SQLite format
            return v

        # the columns the server writes (enrichment's columns are filled later, by the job)
        columns: dict[str, list[str]] = {}
        received_at = utcnow()
        ledger, rows = [], []
        for raw in events:
            event = decode_event(raw)
            row = _row(PROJECT_ID, event)
            row["received_at"] = received_at
            ledger.append((PROJECT_ID, event.id, event.type, value(received_at)))
            cols = columns.setdefault(event.type, list(row))
            rows.append((event.type, tuple(value(row[c]) for c in cols)))
        return cls(ledger, rows, columns, {t: table.name for t, table in TABLES.items()})

    def transactions(self) -> Iterator[tuple[list[tuple[Any, ...]], dict[str, list[Any]]]]:
        """Per transaction of ``FLOOR_TXN`` events: ledger rows, and rows by event type."""
        for start in range(0, len(self.ledger), FLOOR_TXN):
            by_type: dict[str, list[Any]] = {}
            for type_, row in self.rows[start : start + FLOOR_TXN]:
                by_type.setdefault(type_, []).append(row)
            yield self.ledger[start : start + FLOOR_TXN], by_type


def _migrate(url: str) -> None:
    """The server's schema (tables and indexes) on the database at ``url``."""
    from closedloop.store import migrate
    from closedloop.store.db import create_engine

    engine = create_engine(url)
    try:
        migrate.upgrade(engine)
    finally:
        engine.dispose()


class Backend:
    name = ""

    def fresh(self) -> str:
        """A SQLAlchemy URL of a new, empty database."""
        raise NotImplementedError

    def cleanup(self) -> None:
        pass

    def floor(self, url: str, events: list[bytes]) -> float:
        """Events/s of the plain write of ``events`` into ``url`` (fresh, same schema)."""
        raise NotImplementedError


class SqliteBackend(Backend):
    """SQLite files in a temporary directory; floor: WAL, synchronous=FULL, executemany."""

    name = "sqlite"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.n = 0

    def fresh(self) -> str:
        self.n += 1
        path = self.workdir / f"db{self.n}" / "closedloop.db"
        path.parent.mkdir(parents=True)
        return f"sqlite:///{path}"

    def floor(self, url: str, events: list[bytes]) -> float:
        _migrate(url)
        data = FloorRows.build(events, sqlite_datetimes=True)
        transactions = list(data.transactions())
        insert = {
            t: f"INSERT INTO {data.tables[t]} ({', '.join(cols)}) "
            f"VALUES ({', '.join('?' * len(cols))})"
            for t, cols in data.columns.items()
        }
        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        start = time.perf_counter()
        for ledger, by_type in transactions:
            conn.execute("BEGIN")
            conn.executemany(
                f"INSERT INTO event_ids ({', '.join(LEDGER_COLUMNS)}) VALUES (?, ?, ?, ?)",
                ledger,
            )
            for type_, rows in by_type.items():
                conn.executemany(insert[type_], rows)
            conn.execute("COMMIT")
        elapsed = time.perf_counter() - start
        conn.close()
        return len(events) / elapsed


class PostgresBackend(Backend):
    """Databases created (and dropped) through an admin connection; floor: COPY."""

    name = "postgresql"

    def __init__(self, admin_url: str) -> None:
        import psycopg

        self.admin_url = admin_url
        self.admin = psycopg.connect(admin_url, autocommit=True)
        self.created: list[str] = []

    def fresh(self) -> str:
        name = f"cl_bench_{os.getpid()}_{len(self.created)}_{uuid.uuid4().hex[:6]}"
        self.admin.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        base = self.admin_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
        return f"{base}/{name}"

    def cleanup(self) -> None:
        for name in self.created:
            with contextlib.suppress(Exception):
                self.admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()
        self.admin.close()

    def floor(self, url: str, events: list[bytes]) -> float:
        import psycopg

        _migrate(url)
        data = FloorRows.build(events, sqlite_datetimes=False)
        transactions = list(data.transactions())
        copy_sql = {
            t: f"COPY {data.tables[t]} ({', '.join(cols)}) FROM STDIN"
            for t, cols in data.columns.items()
        }
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            conn.execute("SET synchronous_commit = on")  # the default, said explicitly
            conn.commit()
            start = time.perf_counter()
            for ledger, by_type in transactions:
                with conn.transaction(), conn.cursor() as cur:
                    with cur.copy(f"COPY event_ids ({', '.join(LEDGER_COLUMNS)}) FROM STDIN") as cp:
                        for row in ledger:
                            cp.write_row(row)
                    for type_, rows in by_type.items():
                        with cur.copy(copy_sql[type_]) as cp:
                            for row in rows:
                                cp.write_row(row)
            elapsed = time.perf_counter() - start
        return len(events) / elapsed


@dataclass
class Row:
    backend: str
    mix: str
    http: dict[str, Any]
    floor_events_per_s: float
    floor_events: int
    ratio: float = field(init=False)

    def __post_init__(self) -> None:
        self.ratio = self.http["events_per_s"] / self.floor_events_per_s


EXPECTED_RATE = {"interactions": 40_000, "feedback": 60_000}


def bench_backend(backend: Backend, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    rows: list[Row] = []
    for i, mix in enumerate(("interactions", "feedback")):
        server = Server.create(workdir, backend.fresh(), pii=args.pii, **args.settings)
        server.workers = args.server_workers
        server.start()
        try:
            profile = None
            if args.profile:
                RESULTS.mkdir(parents=True, exist_ok=True)
                stamp = time.strftime("%Y%m%d-%H%M%S")
                profile = RESULTS / f"pyspy-{args.profile}-{backend.name}-{mix}-{stamp}.txt"
            http = run_load(
                server,
                LoadConfig(
                    url=server.url,
                    key=server.key,
                    mix=mix,
                    clients=args.clients,
                    warmup=args.warmup,
                    seconds=args.seconds,
                    seed=100 + i,
                    expected_rate=EXPECTED_RATE[mix],
                ),
                profile=profile,
                gil=args.profile == "gil",
            )
        finally:
            server.stop()
        if profile is not None:
            http["profile"] = str(profile.relative_to(ROOT))
            print(summarize_profile(profile), flush=True)
        factory = EventFactory(mix, seed=900 + i, pool=400)
        # As many events as the server stored, so that both databases end the same size.
        count = args.floor_events or max(20_000, http["stored_total"])
        events = [factory.event() for _ in range(count)]
        floor = backend.floor(backend.fresh(), events)
        row = Row(backend.name, mix, http, floor, len(events))
        rows.append(row)
        _print_row(row)
    # Overload: a small write queue and many more clients than the server can take.
    server = Server.create(
        workdir,
        backend.fresh(),
        pii=args.pii,
        **{**args.settings, "write_queue_events": str(args.overload_queue)},
    )
    server.workers = args.server_workers
    server.start()
    try:
        overload = run_load(
            server,
            LoadConfig(
                url=server.url,
                key=server.key,
                mix="interactions",
                clients=args.overload_clients,
                warmup=args.warmup,
                seconds=args.overload_seconds,
                seed=300,
                expected_rate=EXPECTED_RATE["interactions"],
            ),
        )
    finally:
        server.stop()
    overload["write_queue_events"] = args.overload_queue
    _print_overload(backend.name, overload)
    return {"rows": [asdict(r) for r in rows], "overload": overload}


def _print_row(row: Row) -> None:
    h = row.http
    print(
        f"{row.backend:<10} {row.mix:<12} {h['clients']:>3} {h['events_per_s']:>9,.0f} "
        f"{h['p50_ms']:>7.1f} {h['p99_ms']:>7.1f} {h['rss_peak_mb']:>7.0f} "
        f"{row.floor_events_per_s:>9,.0f} {row.ratio:>6.0%}  {h['bytes_per_event']:>5.0f} "
        f"{h['server_cpu_cores']:>5.2f} {h['loadgen_cpu_cores']:>5.2f}",
        flush=True,
    )


def _print_overload(backend: str, o: dict[str, Any]) -> None:
    print(
        f"{backend:<10} overload: {o['clients']} clients, queue {o['write_queue_events']} events"
        f": {o['events_per_s']:,.0f} stored events/s, {o['statuses'].get('429', 0):,} x 429, "
        f"{o['statuses'].get('200', 0):,} x 200, RSS {o['rss_start_mb']:.0f} MB at start -> "
        f"{o['rss_end_mb']:.0f} MB at end (peak {o['rss_peak_mb']:.0f} MB)\n"
        f"{'':<10} overload RSS each second (MB): "
        + " ".join(f"{v:.0f}" for v in o["rss_timeline_mb"]),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window per mix")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured start per mix")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients")
    parser.add_argument(
        "--floor-events",
        type=int,
        default=0,
        help="events written by each floor (default: as many as the HTTP run stored)",
    )
    parser.add_argument("--overload-clients", type=int, default=64)
    parser.add_argument("--overload-queue", type=int, default=1000)
    parser.add_argument("--overload-seconds", type=float, default=15.0)
    parser.add_argument(
        "--server-workers", type=int, default=1, help="`closedloop serve --workers` (default 1)"
    )
    parser.add_argument("--pg-admin-url", default=PG_ADMIN_URL)
    parser.add_argument(
        "--pii",
        choices=("default", "off"),
        default="default",
        help="the project's PII redaction: the default policy (every entity masked) or off",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SETTING=VALUE",
        help="a server setting, e.g. run_worker=false (repeatable)",
    )
    parser.add_argument(
        "--profile",
        choices=("cpu", "gil"),
        help="py-spy the server during each mix: every busy thread (cpu) or only the GIL "
        "holder (gil); raw stacks go to bench/results/",
    )
    args = parser.parse_args()
    args.settings = dict(item.split("=", 1) for item in args.set)
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    print(
        f"{'backend':<10} {'mix':<12} {'cl':>3} {'events/s':>9} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'RSS MB':>7} {'floor ev/s':>9} {'ratio':>6}  {'B/ev':>5} {'srvCPU':>5} {'genCPU':>5}",
        flush=True,
    )
    report: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        },
        "args": vars(args),
        "backends": {},
    }
    with tempfile.TemporaryDirectory(prefix="cl-bench-") as tmp:
        for name in backends:
            workdir = Path(tmp) / name
            workdir.mkdir()
            backend: Backend = (
                SqliteBackend(workdir) if name == "sqlite" else PostgresBackend(args.pg_admin_url)
            )
            try:
                report["backends"][name] = bench_backend(backend, args, workdir)
            finally:
                backend.cleanup()
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"ingest-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
