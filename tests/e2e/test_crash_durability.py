"""Crash durability: a server under load is SIGKILLed at a random moment and restarted; every
event it acknowledged is in the store exactly once (the ingest promise).

Rounds run one after another on one database (see :class:`CrashRounds`). Their number comes
from ``CLOSEDLOOP_CRASH_ROUNDS`` (SQLite, default 10) and ``CLOSEDLOOP_CRASH_PG_ROUNDS``
(PostgreSQL, default 3); the kill moments from ``CLOSEDLOOP_CRASH_SEED``. ``bench/crash.py``
runs many more rounds with the same code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.e2e.server import CrashRounds

ROUNDS = int(os.environ.get("CLOSEDLOOP_CRASH_ROUNDS", "10"))
PG_ROUNDS = int(os.environ.get("CLOSEDLOOP_CRASH_PG_ROUNDS", "3"))
SEED = int(os.environ.get("CLOSEDLOOP_CRASH_SEED", "20260101"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "rounds"),
    [("sqlite", ROUNDS), pytest.param("postgresql", PG_ROUNDS, marks=pytest.mark.postgresql)],
)
def test_every_acknowledged_event_survives_sigkill_exactly_once(
    database_url: str, rounds: int, tmp_path: Path
) -> None:
    with CrashRounds(
        tmp_path / "crash", database_url, seed=SEED, clients=4, batch_size=50
    ) as crash:
        for _ in range(rounds):
            report = crash.round()
            print(report.summary())
            assert report.ok, f"{report.summary()}\n{crash.server.log_tail()}"
        assert crash.finish(), crash.server.log_tail()
    reports = crash.reports
    assert len(reports) == rounds
    assert sum(r.acked_before_kill for r in reports) > 0
    assert sum(r.resent for r in reports) > 0, "no kill found a request in flight"
