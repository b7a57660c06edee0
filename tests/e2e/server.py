"""A real ``closedloop serve`` process for end-to-end tests and ``bench/crash.py``.

Not a test module. :class:`LiveServer` creates a project with the CLI, starts
``python -m closedloop serve`` on a free port with its own data directory and database, waits
for ``/readyz``, and stops it with SIGTERM (graceful) or SIGKILL (a crash). The server's output
goes to ``server.log`` in its work directory.

:class:`Sender` is a client thread that behaves like the SDK: a batch counts as acknowledged
only per event, from a 200/207 answer; a batch without an answer is kept to be sent again.
:class:`CrashRounds` kills a loaded server at a random moment, restarts it, re-sends what
was not acknowledged and checks the database.
"""

from __future__ import annotations

import collections
import contextlib
import gzip
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from closedloop.sdk.envelope import make_event, new_id
from closedloop.store import models
from closedloop.store.db import create_engine

__all__ = [
    "CrashReport",
    "CrashRounds",
    "LiveServer",
    "ProjectKeys",
    "Sender",
    "free_port",
    "interaction_batch",
    "stored_ids",
]

Batch = list[dict[str, Any]]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class ProjectKeys:
    """What ``closedloop projects create NAME --json`` prints."""

    project: str
    public_key: str
    secret_key: str

    def headers(self, kind: str = "secret") -> dict[str, str]:
        key = self.secret_key if kind == "secret" else self.public_key
        return {"authorization": f"Bearer {key}"}


class LiveServer:
    """One ``closedloop serve`` process at a time, on one database, restartable.

    Parameters
    ----------
    workdir
        Working directory of the processes; holds ``data/`` and ``server.log``.
    database_url
        The hot store; default the SQLite file in ``workdir/data``.
    env
        Extra environment variables (``CLOSEDLOOP_WRITE_QUEUE_EVENTS`` and the like).
    """

    def __init__(
        self,
        workdir: Path,
        database_url: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = self.workdir / "data"
        self.database_url = database_url or f"sqlite:///{self.data_dir / 'closedloop.db'}"
        self.log_path = self.workdir / "server.log"
        self.extra_env = dict(env or {})
        self.python = python
        self.port: int | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.projects: dict[str, ProjectKeys] = {}
        self.starts = 0

    # -- environment and CLI -------------------------------------------------------------

    def environ(self) -> dict[str, str]:
        """The processes' environment: no inherited ``CLOSEDLOOP_*`` variable leaks in."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLOSEDLOOP_")}
        env.update(
            CLOSEDLOOP_DATA_DIR=str(self.data_dir),
            CLOSEDLOOP_DATABASE_URL=self.database_url,
            CLOSEDLOOP_LOG_LEVEL="INFO",  # uvicorn's access log and shutdown messages
            # the lexical embedder: loading the sentence model costs each server ~10 s of CPU
            CLOSEDLOOP_EMBEDDER="lexical",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        return env

    def _note(self, text: str) -> None:
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(text if text.endswith("\n") else text + "\n")

    def cli(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``python -m closedloop ARGS`` in the server's environment."""
        result = subprocess.run(
            [self.python, "-m", "closedloop", *args],
            cwd=self.workdir,
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        self._note(
            f"--- closedloop {' '.join(args)} (exit {result.returncode})\n"
            f"{result.stdout}{result.stderr}"
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"closedloop {' '.join(args)} failed ({result.returncode}): {result.stderr}"
            )
        return result

    def create_project(self, name: str = "acme") -> ProjectKeys:
        """Create a project with the CLI (the server may be stopped) and return its keys."""
        out = self.cli("projects", "create", name, "--json").stdout
        keys = ProjectKeys(**json.loads(out.strip().splitlines()[-1]))
        self.projects[name] = keys
        return keys

    # -- process life --------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("the server has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 30.0) -> None:
        """Start ``serve`` on a free port and wait until ``/readyz`` answers 200."""
        if self.running:
            raise RuntimeError("the server is already running")
        for _ in range(3):  # the free port may be taken between the probe and the bind
            self.port = free_port()
            self.starts += 1
            self._note(f"--- start #{self.starts} on port {self.port}")
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    [self.python, "-m", "closedloop", "serve", "--host", "127.0.0.1"]
                    + ["--port", str(self.port)],
                    cwd=self.workdir,
                    env=self.environ(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_ready(timeout):
                return
            if "address already in use" not in self.log_tail().lower():
                break
        raise RuntimeError(f"the server did not become ready:\n{self.log_tail()}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.url, timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    self.process.wait()
                    return False
                try:
                    if client.get("/readyz").status_code == 200:
                        return True
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        self.kill()
        return False

    def stop(self, timeout: float = 45.0) -> int:
        """SIGTERM, then wait for the graceful shutdown; returns the exit code."""
        return self._end(signal.SIGTERM, timeout)

    def kill(self) -> int:
        """SIGKILL: a crash, nothing is drained. Returns the exit code."""
        return self._end(signal.SIGKILL, 30.0)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` without waiting."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def wait(self, timeout: float = 45.0) -> int:
        """Wait for the process to exit; SIGKILL it (and raise) after ``timeout``."""
        assert self.process is not None
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(
                f"the server did not exit within {timeout} s:\n{self.log_tail()}"
            ) from None
        self._note(f"--- exited with {code}")
        return code

    def _end(self, sig: signal.Signals, timeout: float) -> int:
        if self.process is None:
            raise RuntimeError("the server has not been started")
        self.send_signal(sig)
        return self.wait(timeout)

    def close(self) -> None:
        """Kill the process if it still runs (teardown)."""
        if self.running:
            self.kill()

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def stopped_gracefully(self, code: int) -> bool:
        """Whether the last run ended by a completed graceful shutdown: uvicorn re-raises the
        SIGTERM it caught once the lifespan shutdown (which drains the write queue) is done."""
        if code not in (0, -signal.SIGTERM):
            return False
        last_run = self.log_path.read_text(encoding="utf-8", errors="replace").rpartition(
            f"--- start #{self.starts} "
        )[2]
        return "Application shutdown complete" in last_run

    def log_tail(self, lines: int = 60) -> str:
        """The end of the server log, for failure messages."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- observations --------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """``/metrics`` samples summed over labels, by sample name."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        out: dict[str, float] = collections.defaultdict(float)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                out[sample.name] += sample.value
        return dict(out)


@contextlib.contextmanager
def backend_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, prefix: str
) -> Iterator[tuple[LiveServer, ProjectKeys]]:
    """A started server with project ``acme`` on the backend of ``request.param`` (a fresh
    PostgreSQL database, or SQLite in a new folder), stopped at exit."""
    url = None
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres").new_url()
    with LiveServer(tmp_path_factory.mktemp(f"{prefix}-{request.param}"), url) as server:
        keys = server.create_project("acme")
        server.start()
        yield server, keys


def interaction_batch(n: int, *, tag: str = "e2e") -> Batch:
    """``n`` interaction envelopes with fresh UUIDv7 ids."""
    return [
        make_event(
            "interaction",
            {
                "input": f"question {i}",
                "output": "answer",
                "session_id": f"s-{i % 7}",
                "model": {"name": "gpt-test", "version": "1"},
                "latency_ms": float(i),
                "tags": [tag],
            },
            id=new_id(),
        )
        for i in range(n)
    ]


class Sender(threading.Thread):
    """A client thread posting batches of interactions, like the SDK.

    An event is acknowledged only by its ``stored``/``duplicate`` result in a 200/207 answer.
    429 and 503 answers put the batch back to be sent again after a short pause. A transport
    error (the server went away) files the batch, and every batch not yet sent, as unacknowledged
    and ends the thread, as does ``stop``.

    Parameters
    ----------
    batches
        Batches to send; ``None`` generates new batches of ``batch_size`` events.
    max_batches
        With generated batches, how many to make (``None``: until stopped).
    deadline
        Monotonic time after which the thread gives up (what is left is unacknowledged).
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str],
        *,
        batches: Iterable[Batch] | None = None,
        batch_size: int = 50,
        max_batches: int | None = None,
        stop: threading.Event | None = None,
        deadline: float | None = None,
        retry_pause: tuple[float, float] = (0.005, 0.05),
        gzip_body: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.headers = dict(headers)
        self.pending: collections.deque[Batch] = collections.deque(batches or ())
        self.generate = batches is None
        self.batch_size = batch_size
        self.max_batches = max_batches
        self.stop_event = stop or threading.Event()
        self.deadline = deadline
        self.retry_pause = retry_pause
        self.gzip_body = gzip_body
        self.rng = random.Random(seed)
        self.made = 0
        self.sent_ids: set[str] = set()
        self.acked: dict[str, str] = {}
        self.unacked: list[Batch] = []
        self.refused: collections.Counter[int] = collections.Counter()
        self.retry_after: list[str | None] = []
        self.failures: list[str] = []
        self.answered_at: list[float] = []  # monotonic time of each 200/207 answer
        self.transport_errors = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test, not as a thread warning
            self.error = exc

    def _next(self) -> Batch | None:
        if self.pending:
            return self.pending.popleft()
        if self.generate and (self.max_batches is None or self.made < self.max_batches):
            self.made += 1
            return interaction_batch(self.batch_size)
        return None

    def _post(self, client: httpx.Client, batch: Batch) -> httpx.Response:
        body = json.dumps({"events": batch}).encode()
        headers = {"content-type": "application/json"}
        if self.gzip_body:
            body = gzip.compress(body)
            headers["content-encoding"] = "gzip"
        return client.post("/v1/events", content=body, headers=headers)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=30.0) as client:
            while not self.stop_event.is_set():
                if self.deadline is not None and time.monotonic() > self.deadline:
                    self.failures.append("gave up at the deadline")
                    break
                batch = self._next()
                if batch is None:
                    break
                self.sent_ids.update(e["id"] for e in batch)
                try:
                    response = self._post(client, batch)
                except httpx.TransportError:
                    self.transport_errors += 1
                    self.unacked.append(batch)
                    break
                if response.status_code in (200, 207):
                    self.answered_at.append(time.monotonic())
                    self._record(batch, response.json()["results"])
                elif response.status_code in (429, 503):
                    self.refused[response.status_code] += 1
                    self.retry_after.append(response.headers.get("retry-after"))
                    self.pending.appendleft(batch)
                    time.sleep(self.rng.uniform(*self.retry_pause))
                else:
                    self.failures.append(f"{response.status_code}: {response.text[:500]}")
                    self.unacked.append(batch)
                    break
        self.unacked.extend(self.pending)
        self.pending.clear()

    def _record(self, batch: Batch, results: list[dict[str, Any]]) -> None:
        if [r["id"] for r in results] != [e["id"] for e in batch]:
            self.failures.append("the results do not follow the batch's order")
            return
        retry = []
        for event, result in zip(batch, results, strict=True):
            if result["status"] in ("stored", "duplicate"):
                self.acked[event["id"]] = result["status"]
            else:
                self.failures.append(f"{event['id']} {result}")
                retry.append(event)
        if retry:
            self.unacked.append(retry)


def stored_ids(database_url: str) -> tuple[collections.Counter[str], collections.Counter[str]]:
    """Interaction ids in ``interactions`` and in the id ledger ``event_ids``, with counts."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            rows = collections.Counter(
                conn.execute(sa.select(models.interactions.c.id)).scalars().all()
            )
            ledger = collections.Counter(
                conn.execute(
                    sa.select(models.event_ids.c.event_id).where(
                        models.event_ids.c.type == "interaction"
                    )
                )
                .scalars()
                .all()
            )
    finally:
        engine.dispose()
    return rows, ledger


@dataclass
class CrashReport:
    """What one crash round saw; the store checks are over every round so far."""

    round: int
    killed_after: float
    sent: int = 0  # events sent this round (first sends)
    acked_before_kill: int = 0
    resent: int = 0  # unacknowledged events sent again after the restart
    recovered: int = 0  # re-sent events answered "duplicate": committed, answer lost
    acked: int = 0  # events acknowledged this round, before or after the restart
    total_acked: int = 0  # over every round so far
    unacked: int = 0  # sent but never acknowledged, even after the restart (should be 0)
    lost: list[str] = field(default_factory=list)  # acknowledged, not in the store
    duplicated: list[str] = field(default_factory=list)  # more than one row
    unledgered: list[str] = field(default_factory=list)  # a row without ledger entry or back
    unknown: list[str] = field(default_factory=list)  # stored but never sent
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (
            self.unacked
            or self.lost
            or self.duplicated
            or self.unledgered
            or self.unknown
            or self.failures
        )

    def summary(self) -> str:
        return (
            f"round={self.round} killed_after={self.killed_after:.2f}s sent={self.sent} "
            f"acked_before_kill={self.acked_before_kill} resent={self.resent} "
            f"recovered={self.recovered} acked={self.acked} total_acked={self.total_acked} "
            f"unacked={self.unacked} lost={len(self.lost)} duplicated={len(self.duplicated)} "
            f"unledgered={len(self.unledgered)} unknown={len(self.unknown)} "
            f"failures={self.failures[:3]}"
        )


class CrashRounds:
    """Crash rounds on one database: load, SIGKILL, restart, re-send, check the store.

    Each round starts several :class:`Sender` threads on the running server, kills the server
    with SIGKILL a seeded random delay after the first answer, restarts it on the same
    database, re-sends every batch that was not acknowledged (as the SDK re-sends its spool)
    and then checks, over every round so far, that each acknowledged event has exactly one row
    in ``interactions`` and one in ``event_ids``, and that nothing else is stored. The restart
    of one round is the start of the next.

    Use as a context manager: entering creates a project with the CLI and starts the server.
    """

    def __init__(
        self,
        workdir: Path,
        database_url: str | None = None,
        *,
        seed: int = 0,
        clients: int = 4,
        batch_size: int = 50,
        kill_window: tuple[float, float] = (0.0, 1.0),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.server = LiveServer(workdir, database_url, env=env)
        self.rng = random.Random(seed)
        self.clients = clients
        self.batch_size = batch_size
        self.kill_window = kill_window
        self.keys: ProjectKeys | None = None
        self.sent: set[str] = set()
        self.acked: dict[str, str] = {}
        self.reports: list[CrashReport] = []

    def __enter__(self) -> CrashRounds:
        try:
            self.keys = self.server.create_project("crash")
            self.server.start()
        except BaseException:
            self.server.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.close()

    def finish(self) -> bool:
        """Stop the server with SIGTERM; whether it shut down gracefully."""
        return self.server.stopped_gracefully(self.server.stop())

    def round(self) -> CrashReport:
        """Run one round; see the class docstring."""
        assert self.keys is not None, "enter the context first"
        server = self.server
        report = CrashReport(
            round=len(self.reports) + 1, killed_after=self.rng.uniform(*self.kill_window)
        )
        stop = threading.Event()
        senders = [
            Sender(
                server.url,
                self.keys.headers(),
                batch_size=self.batch_size,
                stop=stop,
                seed=self.rng.randrange(2**32),
            )
            for _ in range(self.clients)
        ]
        for sender in senders:
            sender.start()
        loaded = time.monotonic() + 30  # the kill delay counts from the first answer
        while not any(s.answered_at for s in senders) and time.monotonic() < loaded:
            time.sleep(0.005)
        time.sleep(report.killed_after)
        server.kill()
        stop.set()
        sent: set[str] = set()
        acked: dict[str, str] = {}
        unacked: list[Batch] = []
        for sender in senders:
            sender.join(60)
            if sender.is_alive() or sender.error is not None:
                report.failures.append(f"a client did not end cleanly: {sender.error!r}")
            report.failures.extend(sender.failures)
            sent |= sender.sent_ids
            acked.update(sender.acked)
            unacked.extend(sender.unacked)
        report.acked_before_kill = len(acked)

        server.start()  # same database, new process: what was committed must be there
        resender = Sender(
            server.url, self.keys.headers(), batches=unacked, deadline=time.monotonic() + 60
        )
        resender.run()  # in this thread: the SDK re-sending its spool after the restart
        if resender.error is not None:
            report.failures.append(f"re-sending failed: {resender.error!r}")
        report.failures.extend(resender.failures)
        report.resent = sum(len(b) for b in unacked)
        report.recovered = sum(1 for s in resender.acked.values() if s == "duplicate")
        acked.update(resender.acked)

        self.sent |= sent
        self.acked.update(acked)
        report.sent = len(sent)
        report.acked = len(acked)
        report.total_acked = len(self.acked)
        report.unacked = len(sent - acked.keys())
        rows, ledger = stored_ids(server.database_url)
        report.lost = sorted(i for i in self.acked if rows[i] != 1 or ledger[i] != 1)
        report.duplicated = sorted(
            i for i in rows.keys() | ledger.keys() if rows[i] > 1 or ledger[i] > 1
        )
        report.unledgered = sorted(set(rows) ^ set(ledger))
        report.unknown = sorted(set(rows) - self.sent)
        self.reports.append(report)
        return report
