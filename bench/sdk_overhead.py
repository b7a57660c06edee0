"""SDK overhead benchmark: what ``log_interaction`` and ``feedback`` cost the caller's thread.

Usage::

    python bench/sdk_overhead.py [--calls N] [--warmup N] [--seconds S] [--skip-langfuse]

Every measurement runs in a fresh subprocess (so no SDK's background threads disturb
another's), against a local sink in yet another process (uvicorn + a bare ASGI app that answers
200/202 at once and counts what it got):

1. **Latency in the caller's thread**, ``time.perf_counter_ns`` around each call, ``--calls``
   calls after ``--warmup`` calls, in a tight loop (a burst), garbage collector on:

   * the *floor*, the least any SDK must do: build the same envelope dict (same body as the
     client builds, a fresh ``uuid4`` id, an ISO timestamp) and ``queue.SimpleQueue.put`` it;
   * closedloop ``Client.log_interaction`` (~1.5 KB of text: chat messages, output, model,
     prompt, metadata) and ``Client.feedback(thumbs=-1, comment=...)``;
   * Langfuse (``pip install langfuse``, 5.x): a generation observation (start, update, end)
     with the same fields, and ``create_score`` on it, exporting OTLP/HTTP and scores to the
     sink.

   Between the two phases each SDK flushes, so the score phase starts with an empty queue.
   Delivery is counted too: closedloop from ``stats()``, Langfuse from what the sink received.
2. **Server down**: both SDKs pointed at a closed port; ``--calls`` interactions: max call
   latency, RSS before and after, closedloop's ``stats()`` and how long ``flush(timeout=2)`` and
   ``close(timeout=2)`` take; Langfuse's ``flush()`` is waited for at most 20 s (reported as
   "blocked > 20 s"). Then process exit with 1,000 pending feedback events / scores and no
   explicit flush (what the ``atexit`` hook costs), bounded by a 30 s subprocess timeout.
3. **Throughput**: one SDK process sending interactions to a real ``closedloop serve``
   (``tests/e2e/server.py``'s ``LiveServer``, SQLite) for ``--seconds``: events/s the server
   acknowledged (``stats()["stored"]``), with the producer holding back when the queue is over
   half full (so it measures the sender, not the drop path), and the same with a producer that
   never holds back (what a burst drops).

Results are printed and written as JSON to ``bench/results/`` (gitignored). See
docs/benchmarks.md for figures.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import gzip
import json
import multiprocessing as mp
import os
import platform
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOWN_FLUSH_LIMIT = 20.0  # seconds we wait for Langfuse's flush with the server down
EXIT_LIMIT = 30.0  # seconds we wait for a process to exit with pending events
CHILD_LIMIT = 600.0

# --------------------------------------------------------------------------------------------
# The payload: ~1.5 KB of text
# --------------------------------------------------------------------------------------------

SYSTEM = (
    "You are the support assistant of Northwind Bank. Answer in two to four friendly, precise "
    "sentences, using only the retrieved documents. Never ask for a card number or a PIN, and "
    "point the customer to the app's Help section when an agent has to look at the account."
)
USER = (
    "Hi, I ordered a new debit card two weeks ago because my old one was damaged at an ATM, "
    "and it still has not arrived. The app says it was dispatched on the 3rd. I am travelling "
    "next Friday and need a card that works abroad. Can you tell me what I should do now and "
    "whether I can get a virtual card in the meantime?"
)
OUTPUT = (
    "Sorry to hear your replacement card has not arrived yet. Cards dispatched on the 3rd "
    "usually arrive within 7 to 10 working days, so yours may still be on its way; if it has "
    "not arrived by tomorrow, open the app, go to Help > Cards > Card not received and order a "
    "new one, which cancels the one in the post. In the meantime you can create a virtual card "
    "under Cards > Add virtual card: it works at once for online payments and in Apple Pay or "
    "Google Pay, including abroad. Before you travel, check that payments abroad are switched "
    "on under Cards > Settings > Security, and keep the app's notifications on so you see any "
    "declined payment at once. An agent can also check the tracking for you in the chat."
)
MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER}]
MODEL = "gpt-4o-mini-2024-07-18"
PROVIDER = "openai"
PROMPT, PROMPT_VERSION = "support-answer", "7"
METADATA = {"route": "/chat", "region": "eu-west-1", "retrieved_docs": 2, "ab_bucket": "b"}
COMMENT = "The answer ignored that I travel on Friday; I needed the expedited option."
TEXT_BYTES = len(SYSTEM) + len(USER) + len(OUTPUT)


def floor_interaction_body() -> dict[str, Any]:
    """The body ``log_interaction`` builds for the payload (same copies, same fields)."""
    return {
        "input": [dict(m) for m in MESSAGES],
        "output": OUTPUT,
        "model": {"name": MODEL, "provider": PROVIDER},
        "prompt": {"name": PROMPT, "version": PROMPT_VERSION},
        "tokens": {"input": 212, "output": 168, "total": 380},
        "metadata": dict(METADATA),
    }


# --------------------------------------------------------------------------------------------
# The sink: answers at once, counts events
# --------------------------------------------------------------------------------------------


def _sink_app() -> Callable[..., Any]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    counts = {"requests": 0, "closedloop_events": 0, "otlp_spans": 0, "scores": 0, "bytes": 0}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        headers = dict(scope["headers"])
        if headers.get(b"content-encoding") == b"gzip":
            body = gzip.decompress(body)
        path = scope["path"]
        status, ctype, answer = 200, b"application/json", b"{}"
        if scope["method"] == "GET" and path == "/_stats":
            answer = json.dumps(counts).encode()
        elif path == "/_reset":
            for key in counts:
                counts[key] = 0
        elif path == "/v1/events":
            n = body.count(b'"type":"')
            counts["closedloop_events"] += n
            answer = b'{"results":[' + b",".join([b'{"status":"stored"}'] * n) + b"]}"
        elif path.endswith("/otel/v1/traces"):
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            counts["otlp_spans"] += sum(
                len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans
            )
            ctype, answer = b"application/x-protobuf", b""
        elif path.endswith("/scores"):
            data = json.loads(body)
            counts["scores"] += len(data) if isinstance(data, list) else 1
            status, answer = 202, b'{"message":"Accepted"}'
        if path != "/_stats":
            counts["requests"] += 1
            counts["bytes"] += len(body)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", b"%d" % len(answer))],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    return app


def _run_sink(port: int) -> None:
    import uvicorn

    uvicorn.run(_sink_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def sink() -> Iterator[str]:
    port = free_port()
    proc = mp.get_context("spawn").Process(target=_run_sink, args=(port,), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the sink did not start") from None
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.join(5)


def sink_stats(url: str, reset: bool = False) -> dict[str, int]:
    import httpx

    if reset:
        httpx.post(f"{url}/_reset", timeout=5)
    return dict(httpx.get(f"{url}/_stats", timeout=5).json())


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------


def timed(call: Callable[[int], object], n: int) -> list[int]:
    """``n`` calls of ``call(i)``, each timed in ns."""
    clock = time.perf_counter_ns
    out = [0] * n
    for i in range(n):
        t0 = clock()
        call(i)
        out[i] = clock() - t0
    return out


def summary(ns: list[int]) -> dict[str, float]:
    s = sorted(ns)
    n = len(s)

    def q(p: float) -> float:
        return s[min(n - 1, int(p * n))] / 1000

    return {
        "calls": n,
        "mean_us": sum(s) / n / 1000,
        "p50_us": q(0.50),
        "p99_us": q(0.99),
        "p999_us": q(0.999),
        "max_us": s[-1] / 1000,
        "over_1ms": sum(1 for x in s if x > 1_000_000),
    }


def rss_mb() -> float:
    import psutil

    return float(psutil.Process().memory_info().rss / 2**20)


def bounded(fn: Callable[[], object], limit: float) -> float | None:
    """Seconds ``fn()`` took in a daemon thread, or ``None`` if it ran longer than ``limit``."""
    done = threading.Event()

    def run() -> None:
        try:
            fn()
        finally:
            done.set()

    t0 = time.perf_counter()
    threading.Thread(target=run, daemon=True).start()
    return time.perf_counter() - t0 if done.wait(limit) else None


# --------------------------------------------------------------------------------------------
# The children (one per SDK and scenario)
# --------------------------------------------------------------------------------------------


def _closedloop(url: str, **kwargs: Any) -> Any:
    from closedloop.sdk.client import Client

    return Client("cl_sk_bench", url, **kwargs)


def _langfuse(url: str) -> Any:
    from langfuse import Langfuse

    return Langfuse(public_key="pk-lf-bench", secret_key="sk-lf-bench", base_url=url)


def child_floor(args: argparse.Namespace) -> dict[str, Any]:
    q: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
    ids = [str(uuid.uuid4()) for _ in range(1000)]

    def interaction(i: int) -> None:
        q.put(
            {
                "id": str(uuid.uuid4()),
                "type": "interaction",
                "timestamp": dt.datetime.now(dt.UTC).isoformat(),
                "body": floor_interaction_body(),
            }
        )

    def score(i: int) -> None:
        q.put(
            {
                "id": str(uuid.uuid4()),
                "type": "feedback",
                "timestamp": dt.datetime.now(dt.UTC).isoformat(),
                "body": {"interaction_id": ids[i % 1000], "thumbs": -1, "comment": COMMENT},
            }
        )

    out = {}
    for name, call in (("interaction", interaction), ("score", score)):
        timed(call, args.warmup)
        out[name] = summary(timed(call, args.calls))
        while not q.empty():
            q.get_nowait()
    return out


def child_closedloop(args: argparse.Namespace) -> dict[str, Any]:
    client = _closedloop(args.url)
    ids: list[str] = []

    def interaction(i: int) -> None:
        iid = client.log_interaction(
            MESSAGES,
            OUTPUT,
            model=MODEL,
            provider=PROVIDER,
            prompt=PROMPT,
            prompt_version=PROMPT_VERSION,
            input_tokens=212,
            output_tokens=168,
            total_tokens=380,
            metadata=METADATA,
        )
        if i < 1000:
            ids.append(iid)

    def score(i: int) -> None:
        client.feedback(ids[i % 1000], thumbs=-1, comment=COMMENT)

    out: dict[str, Any] = {}
    sink_stats(args.url, reset=True)
    for name, call in (("interaction", interaction), ("score", score)):
        timed(call, args.warmup)
        client.flush(timeout=120)
        before = client.stats()
        t0 = time.perf_counter()
        out[name] = summary(timed(call, args.calls))
        loop = time.perf_counter() - t0
        t0 = time.perf_counter()
        flushed = client.flush(timeout=120)
        out[name]["loop_s"] = loop
        out[name]["flush_s"] = time.perf_counter() - t0
        after = client.stats()
        out[name]["stats"] = after
        out[name]["flush"] = flushed.__dict__
        out[name]["delivered"] = after["stored"] - before["stored"]
        out[name]["dropped"] = after["dropped"] - before["dropped"]
        out[name]["batches"] = after["batches"] - before["batches"]
    out["sink"] = sink_stats(args.url)
    from closedloop.sdk import client as client_module

    out["event_bytes"] = len(client_module._encoder.encode(floor_interaction_body()))
    client.close(timeout=5)
    return out


def child_langfuse(args: argparse.Namespace) -> dict[str, Any]:
    lf = _langfuse(args.url)
    refs: list[tuple[str, str]] = []

    def generation(i: int) -> None:
        gen = lf.start_observation(
            name="chat",
            as_type="generation",
            input=MESSAGES,
            model=MODEL,
            metadata={**METADATA, "prompt": PROMPT, "prompt_version": PROMPT_VERSION},
            version=PROMPT_VERSION,
        )
        gen.update(output=OUTPUT, usage_details={"input": 212, "output": 168, "total": 380})
        gen.end()
        if i < 1000:
            refs.append((gen.trace_id, gen.id))

    def score(i: int) -> None:
        trace_id, obs_id = refs[i % 1000]
        lf.create_score(
            name="thumbs", value=-1, trace_id=trace_id, observation_id=obs_id, comment=COMMENT
        )

    out: dict[str, Any] = {}
    for name, call in (("interaction", generation), ("score", score)):
        timed(call, args.warmup)
        bounded(lf.flush, 120)
        before = sink_stats(args.url)
        t0 = time.perf_counter()
        out[name] = summary(timed(call, args.calls))
        out[name]["loop_s"] = time.perf_counter() - t0
        took = bounded(lf.flush, 120)
        after = sink_stats(args.url)
        out[name]["flush_s"] = took
        key = "otlp_spans" if name == "interaction" else "scores"
        out[name]["delivered"] = after[key] - before[key]
        out[name]["dropped"] = args.calls - out[name]["delivered"]
    out["sink"] = sink_stats(args.url)
    return out


def child_down(args: argparse.Namespace) -> dict[str, Any]:
    """``--calls`` interactions with the server unreachable."""
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    rss0 = rss_mb()
    out: dict[str, Any] = {"sdk": args.sdk}
    if args.sdk == "closedloop":
        client = _closedloop(url)

        def call(i: int) -> None:
            client.log_interaction(
                MESSAGES,
                OUTPUT,
                model=MODEL,
                provider=PROVIDER,
                prompt=PROMPT,
                prompt_version=PROMPT_VERSION,
                metadata=METADATA,
            )

    else:
        lf = _langfuse(url)

        def call(i: int) -> None:
            gen = lf.start_observation(
                name="chat", as_type="generation", input=MESSAGES, model=MODEL, metadata=METADATA
            )
            gen.update(output=OUTPUT)
            gen.end()
            lf.create_score(name="thumbs", value=-1, trace_id=gen.trace_id, comment=COMMENT)

    t0 = time.perf_counter()
    times: list[int] = []
    out["rss_mb_every_fifth"] = []
    for _ in range(5):
        times += timed(call, args.calls // 5)
        out["rss_mb_every_fifth"].append(round(rss_mb(), 1))
    out["latency"] = summary(times)
    out["loop_s"] = time.perf_counter() - t0
    out["rss_before_mb"] = rss0
    out["rss_after_mb"] = rss_mb()
    if args.sdk == "closedloop":
        t0 = time.perf_counter()
        out["flush_result"] = client.flush(timeout=2).__dict__
        out["flush_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        out["close_result"] = client.close(timeout=2).__dict__
        out["close_s"] = time.perf_counter() - t0
        out["stats"] = client.stats()
    else:
        out["flush_s"] = bounded(lf.flush, DOWN_FLUSH_LIMIT)  # None: blocked > limit
    out["rss_end_mb"] = rss_mb()
    return out


def child_exit(args: argparse.Namespace) -> None:
    """1,000 scores/feedback with the server down, then a normal exit (the atexit hook)."""
    url = f"http://127.0.0.1:{free_port()}"
    if args.sdk == "closedloop":
        client = _closedloop(url)
        for _ in range(1000):
            client.feedback(str(uuid.uuid4()), thumbs=-1, comment=COMMENT)
    else:
        lf = _langfuse(url)
        for _ in range(1000):
            lf.create_score(name="thumbs", value=-1, trace_id=uuid.uuid4().hex, comment=COMMENT)
    print("DONE", flush=True)


def child_throughput(args: argparse.Namespace) -> dict[str, Any]:
    from closedloop.sdk.client import Client

    client = Client(args.key, args.url)
    limit = client._worker.params.max_queue_events // 2
    held = args.mode == "paced"

    def log(i: int) -> None:
        client.log_interaction(
            MESSAGES,
            OUTPUT,
            model=MODEL,
            provider=PROVIDER,
            prompt=PROMPT,
            prompt_version=PROMPT_VERSION,
            metadata=METADATA,
        )

    for i in range(2000):  # warm-up, then drain
        log(i)
    client.flush(timeout=60)
    s0 = client.stats()
    t0 = time.perf_counter()
    end = t0 + args.seconds
    i = 0
    while time.perf_counter() < end:
        log(i)
        i += 1
        if held and i % 50 == 0:
            while len(client._worker._queue) > limit and time.perf_counter() < end:
                time.sleep(0.001)
    elapsed = time.perf_counter() - t0
    s1 = client.stats()
    flush = client.flush(timeout=60)
    s2 = client.stats()
    client.close(timeout=5)
    return {
        "mode": args.mode,
        "seconds": elapsed,
        "calls": i,
        "calls_per_s": i / elapsed,
        "stored_in_window": s1["stored"] - s0["stored"],
        "stored_per_s": (s1["stored"] - s0["stored"]) / elapsed,
        "dropped": s2["dropped"] - s0["dropped"],
        "dropped_by_reason": s2["dropped_by_reason"],
        "failed": s2["failed"] - s0["failed"],
        "stored_total": s2["stored"] - s0["stored"],
        "batches": s2["batches"] - s0["batches"],
        "flush": flush.__dict__,
    }


CHILDREN: dict[str, Callable[[argparse.Namespace], Any]] = {
    "floor": child_floor,
    "closedloop": child_closedloop,
    "langfuse": child_langfuse,
    "down": child_down,
    "exit": child_exit,
    "throughput": child_throughput,
}


# --------------------------------------------------------------------------------------------
# The parent
# --------------------------------------------------------------------------------------------


def run_child(case: str, *extra: str, timeout: float = CHILD_LIMIT) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", case, *extra]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        return {"error": f"timed out after {timeout} s", "stderr": str(exc.stderr)[-2000:]}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": f"exit {proc.returncode}", "stderr": proc.stderr[-3000:]}
    result: dict[str, Any] = json.loads(lines[-1])
    result["wall_s"] = time.perf_counter() - t0
    result["stderr_lines"] = len(proc.stderr.splitlines())
    result["stderr_head"] = proc.stderr.splitlines()[:8]
    return result


def run_exit(sdk: str) -> dict[str, Any]:
    """Seconds between the child's last statement and its exit."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "exit", "--sdk", sdk]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    t0 = time.perf_counter()
    if not line.startswith("DONE"):
        proc.kill()
        return {"error": "the child did not finish its calls"}
    try:
        code = proc.wait(EXIT_LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return {"exit_s": None, "note": f"blocked > {EXIT_LIMIT:.0f} s (killed)"}
    return {"exit_s": time.perf_counter() - t0, "code": code}


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def latency_table(res: dict[str, Any]) -> str:
    rows = []
    head = "| call | SDK | p50 us | p99 us | max us | p99 / floor | p99 vs Langfuse | delivered |"
    rows += [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for call, label in (("interaction", "interaction"), ("score", "score / feedback")):
        floor = res["floor"].get(call, {})
        lf = res.get("langfuse", {}).get(call, {})
        for sdk in ("floor", "closedloop", "langfuse"):
            r = res.get(sdk, {}).get(call)
            if not r:
                continue
            vs_floor = r["p99_us"] / floor["p99_us"] if floor else None
            vs_lf = lf["p99_us"] / r["p99_us"] if lf and sdk != "langfuse" else None
            rows.append(
                f"| {label} | {sdk} | {fmt(r['p50_us'])} | {fmt(r['p99_us'])} | "
                f"{fmt(r['max_us'])} | {vs_floor:.2f}x | "
                + (f"{vs_lf:.1f}x lower |" if vs_lf else "- |")
                + (f" {r['delivered'] / r['calls']:.1%} |" if "delivered" in r else " - |")
            )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--warmup", type=int, default=5_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skip-langfuse", action="store_true")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--sdk", default="closedloop", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="paced", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        result = CHILDREN[args.child](args)
        if result is not None:
            print(json.dumps(result), flush=True)
            sys.stdout.flush()
            os._exit(0)  # do not let an SDK's exit hook hold the measurement back
        return

    common = ["--calls", str(args.calls), "--warmup", str(args.warmup)]
    res: dict[str, Any] = {
        "argv": sys.argv[1:],
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "text_bytes": TEXT_BYTES,
    }
    t_start = time.perf_counter()
    with sink() as url:
        for sdk in ("floor", "closedloop", "langfuse"):
            if sdk == "langfuse" and args.skip_langfuse:
                continue
            print(f"latency: {sdk} ...", flush=True)
            res[sdk] = run_child(sdk, *common, "--url", url)
            if "error" in res[sdk]:
                print(res[sdk], file=sys.stderr)
    print("\n" + latency_table(res) + "\n", flush=True)

    res["down"] = {}
    for sdk in ("closedloop", "langfuse"):
        if sdk == "langfuse" and args.skip_langfuse:
            continue
        print(f"server down: {sdk} ...", flush=True)
        res["down"][sdk] = run_child("down", "--sdk", sdk, *common, timeout=CHILD_LIMIT)
        res["down"][sdk]["exit"] = run_exit(sdk)
        d = res["down"][sdk]
        if "error" in d:
            print(d, file=sys.stderr)
            continue
        print(
            f"  max call {fmt(d['latency']['max_us'])} us, p99 {fmt(d['latency']['p99_us'])} us,"
            f" RSS {d['rss_before_mb']:.0f} -> {d['rss_after_mb']:.0f} MB, flush "
            + (f"{d['flush_s']:.2f} s" if d["flush_s"] is not None else "blocked > 20 s")
            + (f", close {d['close_s']:.2f} s" if "close_s" in d else "")
            + f", exit with 1,000 pending: {d['exit']}"
        )
        if "stats" in d:
            print(
                f"  stats: dropped {d['stats']['dropped_by_reason']}, "
                f"failed {d['stats']['failed_by_reason']}"
            )

    sys.path.insert(0, str(ROOT))
    from tests.e2e.server import LiveServer

    res["throughput"] = {}
    with tempfile.TemporaryDirectory(prefix="sdk-bench-") as tmp:
        server = LiveServer(Path(tmp))
        keys = server.create_project("bench")
        server.start()
        try:
            for mode in ("paced", "burst"):
                print(f"throughput ({mode}) ...", flush=True)
                r = run_child(
                    "throughput",
                    "--url",
                    server.url,
                    "--key",
                    keys.secret_key,
                    "--seconds",
                    str(args.seconds),
                    "--mode",
                    mode,
                )
                res["throughput"][mode] = r
                if "error" in r:
                    print(r, file=sys.stderr)
                    continue
                print(
                    f"  {r['stored_per_s']:,.0f} events/s stored, {r['calls_per_s']:,.0f} "
                    f"calls/s, dropped {r['dropped']:,} {r['dropped_by_reason']}"
                )
        finally:
            server.stop()
    res["total_s"] = time.perf_counter() - t_start
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"sdk_overhead-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(res, indent=2))
    print(f"\n{latency_table(res)}\n\nwrote {path} in {res['total_s']:.0f} s")


if __name__ == "__main__":
    gc.collect()
    main()
