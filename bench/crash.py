"""Crash durability bench: SIGKILL a loaded server N times and count lost or duplicated events.

Each round loads a real ``closedloop serve`` process with concurrent clients, kills it with
SIGKILL at a seeded random moment, restarts it on the same database, re-sends what was not
acknowledged (as the SDK does) and checks that every acknowledged event is stored exactly
once. The code is the e2e tests' (``tests/e2e/server.py``); this runs more rounds.

    python bench/crash.py                 # 50 rounds on SQLite (synchronous=FULL)
    python bench/crash.py 200 --seed 7
    python bench/crash.py 20 --backend postgresql --postgres-url postgresql+psycopg://...

The last line is the summary; the exit code is 1 when any event was lost or duplicated.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_POSTGRES = os.environ.get(
    "CLOSEDLOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rounds", nargs="?", type=int, default=50, help="rounds (default 50)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument(
        "--postgres-url",
        default=DEFAULT_POSTGRES,
        help="server where a scratch database is created and dropped (default "
        "CLOSEDLOOP_TEST_POSTGRES_URL or postgres@127.0.0.1:5432)",
    )
    parser.add_argument("--seed", type=int, default=20260101, help="seed of the kill moments")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--batch-size", type=int, default=50, help="events per batch")
    parser.add_argument(
        "--workdir", type=Path, help="keep the data and server.log here (default: a temp dir)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.rounds < 1:
        raise SystemExit("rounds must be at least 1")
    sys.path.insert(0, str(ROOT))
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url
    from tests.e2e.server import CrashRounds

    admin = None
    scratch = ""
    database_url = None
    if args.backend == "postgresql":
        admin = sa.create_engine(args.postgres_url, isolation_level="AUTOCOMMIT")
        scratch = f"cl_crash_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{scratch}"'))
        database_url = (
            make_url(args.postgres_url).set(database=scratch).render_as_string(hide_password=False)
        )
    temp = None
    if args.workdir is None:
        temp = tempfile.TemporaryDirectory(prefix="closedloop-crash-")
        workdir = Path(temp.name)
    else:
        workdir = args.workdir
    started = time.monotonic()
    failed = []
    try:
        with CrashRounds(
            workdir,
            database_url,
            seed=args.seed,
            clients=args.clients,
            batch_size=args.batch_size,
        ) as crash:
            for _ in range(args.rounds):
                report = crash.round()
                if not args.quiet or not report.ok:
                    print(report.summary(), flush=True)
                if not report.ok:
                    failed.append(report.round)
            graceful = crash.finish()
        reports = crash.reports
        last = reports[-1]
        print(
            f"crash bench: backend={args.backend} rounds={len(reports)} "
            f"acked={last.total_acked} lost={len(last.lost)} "
            f"duplicated={len(last.duplicated)} unacked={sum(r.unacked for r in reports)} "
            f"recovered={sum(r.recovered for r in reports)} "
            f"failed_rounds={failed or 0} graceful_stop={graceful} "
            f"seconds={time.monotonic() - started:.1f}"
        )
    finally:
        if temp is not None:
            temp.cleanup()
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{scratch}" WITH (FORCE)'))
            admin.dispose()
    return 1 if failed or not graceful else 0


if __name__ == "__main__":
    sys.exit(main())
