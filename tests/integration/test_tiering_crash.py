"""Tiering is crash-safe: a run that fails or is SIGKILLed at any step, then a rerun, leaves
every row exactly once across the hot store and the manifest's files, unchanged, with no
stray file in the lake (SQLite and PostgreSQL; a local lake and, for injected failures, S3).

Each test seeds a week of old rows once and moves the hot window one day per round, so every
round tiers fresh rows: round ``i`` crashes at step ``i``.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from closedloop.runtime import Runtime
from closedloop.store.lake import manifest
from closedloop.store.lake.files import Lake
from closedloop.store.lake.lock import lake_lock
from closedloop.store.lake.tiering import STEPS, InjectedFailure, tier
from tests.conftest import Tenant
from tests.integration.conftest import OLD, assert_exactly_once, hot_rows, seed_lake_rows

HOT_DAYS = 30.0
MIDNIGHT = OLD.replace(hour=0, minute=0)
# rows that stay hot however old: pending feedback, an interaction not enriched yet
UNSETTLED = {"acme-f-wait", "acme-i-late"}


def window_end(round_: int) -> dt.datetime:
    """``now`` of round ``round_``: its cutoff is the end of the seeded week's day ``round_``."""
    return MIDNIGHT + dt.timedelta(days=round_ + 1 + HOT_DAYS)


def assert_due_rows_moved(engine: sa.Engine, now: dt.datetime) -> None:
    cutoff = now - dt.timedelta(days=HOT_DAYS)
    left = {k[2] for k, row in hot_rows(engine).items() if row["ts"] < cutoff}
    assert left == UNSETTLED, f"due rows still hot: {sorted(left - UNSETTLED)[:5]}"


def cold_count(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return sum(f.rows for f in manifest.published(conn))


@pytest.mark.parametrize(
    ("backend", "lake"),
    [("sqlite", "local"), ("postgresql", "local"), ("sqlite", "s3")],
    indirect=["lake"],
)
def test_a_failure_injected_at_each_step_then_a_rerun_moves_every_row_once(
    runtime: Runtime, tenant: Tenant, lake: Lake
) -> None:
    # on S3 (slower) the steps whose storage operations differ: upload, copy+delete, publish
    steps = STEPS if lake.local else ("write", "move", "commit")
    seed_lake_rows(runtime, tenant, days=len(steps))
    before = hot_rows(runtime.engine)
    moved = 0
    for round_, step in enumerate(steps):
        now = window_end(round_)
        with pytest.raises(InjectedFailure):
            tier(runtime.engine, lake, now=now, hot_days_of=HOT_DAYS, fail_at=step)
        assert_exactly_once(runtime.engine, lake, before, strays=True)

        report = tier(runtime.engine, lake, now=now, hot_days_of=HOT_DAYS)
        assert not report.busy and report.conflicts == 0, step
        assert_exactly_once(runtime.engine, lake, before)
        assert_due_rows_moved(runtime.engine, now)
        assert cold_count(runtime.engine) > moved, f"{step}: round {round_} moved nothing"
        moved = cold_count(runtime.engine)


CHILD = """
import datetime as dt, pathlib, sys, time
from closedloop.store.db import create_engine
from closedloop.store.lake.files import Lake
from closedloop.store.lake.tiering import tier

database_url, lake_url, now, step, ready = sys.argv[1:]

def on_step(name):
    if name == step:
        pathlib.Path(ready).write_text(name)
        time.sleep(600)  # the parent SIGKILLs us here

tier(
    create_engine(database_url),
    Lake(lake_url),
    now=dt.datetime.fromisoformat(now),
    hot_days_of=%(hot_days)r,
    on_step=on_step,
)
sys.exit("the step was never reached")
"""


def kill_at(database_url: str, lake: Lake, now: dt.datetime, step: str, tmp: Path) -> None:
    """Run a tiering in a child process and SIGKILL it when it reaches ``step``."""
    ready = tmp / f"ready-{step}"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            CHILD % {"hot_days": HOT_DAYS},
            database_url,
            lake.url,
            now.isoformat(),
            step,
            str(ready),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not ready.exists():
            if child.poll() is not None:
                stderr = child.stderr.read().decode() if child.stderr else ""
                pytest.fail(f"the child ended before step {step}: {stderr[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"the child did not reach step {step} in 60 s")
            time.sleep(0.02)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if child.stderr:
            child.stderr.close()


@pytest.mark.slow
def test_a_sigkill_at_each_step_then_a_rerun_moves_every_row_once(
    runtime: Runtime, tenant: Tenant, database_url: str, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    # a partial file; a verified staged file; a transaction open in a dead process (a kill
    # after the commit is the state of the injected failure at "done")
    steps = ("write", "move", "commit")
    seed_lake_rows(runtime, tenant, days=len(steps))
    before = hot_rows(runtime.engine)
    moved = 0
    for round_, step in enumerate(steps):
        now = window_end(round_)
        kill_at(database_url, lake, now, step, tmp_path)
        assert_exactly_once(runtime.engine, lake, before, strays=True)
        if step in ("write", "verify"):
            assert lake.list("_staging"), f"{step}: the killed run left its staged file"

        report = tier(runtime.engine, lake, now=now, hot_days_of=HOT_DAYS, wait=True)
        assert report.recovered == 1, step
        assert_exactly_once(runtime.engine, lake, before)
        assert_due_rows_moved(runtime.engine, now)
        assert cold_count(runtime.engine) > moved, f"{step}: round {round_} moved nothing"
        moved = cold_count(runtime.engine)


BUSY_CHILD = """
import sys
from closedloop.store.db import create_engine
from closedloop.store.lake.files import Lake
from closedloop.store.lake.tiering import tier

print(tier(create_engine(sys.argv[1]), Lake(sys.argv[2])).busy)
"""


def test_a_run_that_finds_the_lake_locked_returns_at_once_doing_nothing(
    runtime: Runtime, tenant: Tenant, database_url: str, tmp_path: Path
) -> None:
    lake = Lake(str(tmp_path / "lake"))
    seed_lake_rows(runtime, tenant, days=1)
    held, release = threading.Event(), threading.Event()

    def holder() -> None:
        with lake_lock(runtime.engine):
            held.set()
            release.wait(30)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        assert tier(runtime.engine, lake).busy, "another thread of this process holds it"
        other = subprocess.run(
            [sys.executable, "-c", BUSY_CHILD, database_url, lake.url],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert other.stdout.strip() == "True", other.stderr[-2000:]
    finally:
        release.set()
        thread.join(10)
    assert lake.list() == []
    report = tier(runtime.engine, lake)
    assert not report.busy and report.files == 6
