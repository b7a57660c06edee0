"""Dashboard benchmark: what a page costs over the JSON answer of the same data.

Usage::

    .venv/bin/python bench/dashboard.py              # N = 20,000 interactions
    .venv/bin/python bench/dashboard.py --quick      # N = 3,000 (< 1 min)
    .venv/bin/python bench/dashboard.py --postgres postgresql://postgres@127.0.0.1:5432/postgres

A fresh store (SQLite in a temporary folder, or a database created on ``--postgres`` and
dropped at the end) gets N interactions of the demo's sample (``build_sample_events``: CLINC150
and Banking77 utterances with thumbs, ratings, corrections, edits and copies, over the last
two hours) through ``runtime.ingestor.ingest``; enrichment and the analysis then run (lexical
embedder). One admin signs in through the form. Each page is fetched in-process through the
ASGI app (``httpx.ASGITransport``), beside the JSON route that reads the same data with a
secret key, alternating, ``--repeats`` times each: the ratio is the page's median over the
API's median (above 1: the page costs more). The page adds the session lookup, the extra
figures it shows (the previous window, segment charts, alarms, issues) and the template.

Prints one markdown table, then the command that reruns it.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BATCH = 500
PASSWORD = "correct horse battery"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def database_url(args: argparse.Namespace) -> str:
    """SQLite in the work folder, or a fresh database on ``--postgres`` (dropped at exit)."""
    if not args.postgres:
        return f"sqlite:///{Path(args.work) / 'dashboard.db'}"
    import psycopg

    dsn = args.postgres.replace("postgresql+psycopg://", "postgresql://")
    name = f"cl_bench_ui_{os.getpid()}"
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    atexit.register(drop)
    return f"{dsn.rsplit('/', 1)[0].replace('postgresql://', 'postgresql+psycopg://')}/{name}"


def seed(args: argparse.Namespace) -> tuple[Any, str]:
    """A started runtime holding the sample, enriched and analysed; the project's secret key."""
    from closedloop.demo import build_sample_events
    from closedloop.runtime import Runtime
    from closedloop.settings import Settings
    from closedloop.store.users import Role, Users

    settings = Settings(
        data_dir=Path(args.work) / "data",
        database_url=database_url(args),
        run_worker=False,
        embedder="lexical",
        _env_file=None,  # type: ignore[call-arg]
    )
    runtime = Runtime.build(settings, load_plugins=False)
    runtime.start()
    project, _, secret = runtime.projects.create("bench")
    key = runtime.verify(secret)
    events = build_sample_events(args.n)
    log(f"ingesting {len(events):,} events of {args.n:,} interactions")
    for start in range(0, len(events), BATCH):
        raws = [json.dumps(e).encode() for e in events[start : start + BATCH]]
        runtime.ingestor.ingest(key, raws)
    runtime.enricher.run()  # passes until nothing is left
    log("analysing")
    runtime.embedding_job().run()
    runtime.analyzer().run(project.id)
    users = Users(runtime.engine)
    users.create("admin@bench.example", PASSWORD)
    users.grant("admin@bench.example", project.id, Role.ADMIN)
    return runtime, secret


async def measure(args: argparse.Namespace, runtime: Any, secret: str) -> list[tuple[str, ...]]:
    import httpx

    from closedloop.ingest.app import create_app

    app = create_app(runtime=runtime)
    app.state.runtime = runtime
    transport = httpx.ASGITransport(app=app)
    bearer = {"authorization": f"Bearer {secret}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as ui:
        form = await ui.get("/ui/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token, "the sign-in form has a CSRF token"
        signed = await ui.post(
            "/ui/login",
            data={"email": "admin@bench.example", "password": PASSWORD, "csrf_token": token[1]},
        )
        assert signed.status_code == 303, signed.text
        issues = (await ui.get("/v1/issues", headers=bearer)).json()["issues"]
        issue = issues[0]["id"] if issues else 1
        first = (await ui.get("/v1/interactions?limit=1", headers=bearer)).json()["data"][0]
        pairs = [
            ("overview, 24 h by model", "/ui/p/bench/?window=24h&by=model",
             "/v1/metrics?by=model&bucket=hour&since=-24h"),
            ("interactions, newest 50", "/ui/p/bench/interactions",
             "/v1/interactions?limit=50"),
            ("interactions, thumbs down", "/ui/p/bench/interactions?feedback=down",
             "/v1/interactions?limit=50&feedback_kind=thumbs"),
            ("interaction detail", f"/ui/p/bench/interactions/{first['id']}",
             f"/v1/interactions/{first['id']}"),
            ("issues", "/ui/p/bench/issues", "/v1/issues"),
            ("issue detail", f"/ui/p/bench/issues/{issue}", f"/v1/issues/{issue}"),
            ("prompts", "/ui/p/bench/prompts", "/v1/prompts"),
            ("review queue", "/ui/p/bench/review", "/v1/review/tasks"),
            ("rules & actions", "/ui/p/bench/rules", "/v1/firings"),
        ]  # fmt: skip
        rows: list[tuple[str, ...]] = []
        for name, page, api in pairs:
            api_url = api.replace("since=-24h", f"since={_hours_ago(24)}")
            page_times: list[float] = []
            api_times: list[float] = []
            for _ in range(args.repeats):
                for url, headers, times in ((page, {}, page_times), (api_url, bearer, api_times)):
                    t0 = time.perf_counter()
                    r = await ui.get(url, headers=headers)
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 200, (url, r.status_code, r.text[:300])
            p, a = statistics.median(page_times), statistics.median(api_times)
            rows.append((name, f"{p * 1000:.1f}", f"{a * 1000:.1f}", f"{p / a:.1f}×"))
            log(f"{name}: page {p * 1000:.1f} ms, API {a * 1000:.1f} ms")
    return rows


def _hours_ago(hours: int) -> str:
    import datetime as dt

    at = dt.datetime.now(dt.UTC) - dt.timedelta(hours=hours)
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20_000, help="interactions (default 20,000)")
    parser.add_argument("--quick", action="store_true", help="N = 3,000")
    parser.add_argument("--repeats", type=int, default=15, help="fetches of each (default 15)")
    parser.add_argument("--postgres", help="a PostgreSQL URL whose role may create databases")
    args = parser.parse_args()
    if args.quick:
        args.n, args.repeats = 3_000, 7
    args.work = tempfile.mkdtemp(prefix="cl-bench-ui-")
    atexit.register(shutil.rmtree, args.work, ignore_errors=True)
    os.environ.setdefault("CLOSEDLOOP_EMBEDDER", "lexical")
    runtime, secret = seed(args)
    try:
        rows = asyncio.run(measure(args, runtime, secret))
    finally:
        runtime.stop()
    store = "PostgreSQL" if args.postgres else "SQLite"
    print(f"\n### Dashboard pages against the JSON API ({store}, N = {args.n:,} interactions)\n")
    print("| page | page (ms, median) | API (ms, median) | page / API |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    command = ["bench/dashboard.py", *sys.argv[1:]]
    print(f"\n`.venv/bin/python {shlex.join(command)}`")


if __name__ == "__main__":
    main()
