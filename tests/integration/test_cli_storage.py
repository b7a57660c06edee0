"""The storage commands (tier, retention, embed, search, erase, projects retention/show), on
SQLite and PostgreSQL, each run as a separate process would: settings from the environment."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from closedloop.cli import app
from closedloop.runtime import Runtime
from closedloop.sdk.envelope import make_event
from closedloop.settings import Settings
from tests.integration.test_cli import _count, _text


@pytest.fixture
def shop(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Project ``shop`` with 2 old and 2 recent interactions (with feedback), enriched."""
    monkeypatch.setenv("CLOSEDLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLOSEDLOOP_DATABASE_URL", database_url)
    runner = CliRunner()
    assert runner.invoke(app, ["projects", "create", "shop"]).exit_code == 0
    now = dt.datetime.now(dt.UTC)
    events = []
    for n, (age, text) in enumerate(
        [(40, "refund my order"), (41, "cancel my card"), (0, "reset my password"), (0, "hi")]
    ):
        when = (now - dt.timedelta(days=age, minutes=n)).isoformat()
        i = make_event(
            "interaction",
            {"input": text, "output": "ok", "user_id": f"u{n % 2}", "session_id": f"s{n}"},
            id=f"i{n}",
        )
        f = make_event(
            "feedback",
            {"interaction_id": f"i{n}", "thumbs": -1, "comment": f"bad: {text}"},
            id=f"f{n}",
        )
        i["timestamp"] = f["timestamp"] = when
        events += [i, f]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    assert runner.invoke(app, ["import", str(path), "--project", "shop"]).exit_code == 0
    assert runner.invoke(app, ["enrich"]).exit_code == 0
    return database_url


def test_tier_moves_old_rows_to_the_lake_and_projects_show_counts_both_tiers(shop: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["tier"])
    assert result.exit_code == 0, result.output
    assert "4 rows in 4 files" in _text(result), "2 days x interactions and feedback"
    assert _count(shop, "interactions") == 2 and _count(shop, "feedback") == 2
    shown = runner.invoke(app, ["projects", "show", "shop", "--json"])
    assert shown.exit_code == 0, shown.output
    info = json.loads(shown.output)
    assert info["hot"]["interactions"] == 2
    assert info["lake"]["entities"]["interactions"]["rows"] == 2
    assert info["lake"]["entities"]["feedback"]["rows"] == 2
    again = runner.invoke(app, ["tier"])
    assert "0 rows in 0 files" in _text(again), "re-running moves nothing twice"


def test_projects_retention_changes_it_and_refuses_an_impossible_one(shop: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["projects", "retention", "shop", "--hot-days", "7"])
    assert result.exit_code == 0, result.output
    assert "7.0" in _text(result)
    bad = runner.invoke(app, ["projects", "retention", "shop", "--cold-days", "3"])
    assert bad.exit_code == 1
    assert "cold_days" in _text(bad) and "hot_days" in _text(bad)
    bad = runner.invoke(app, ["projects", "retention", "shop", "--erased-events", "ignore"])
    assert bad.exit_code == 1 and "erased_events" in _text(bad)
    kept = runner.invoke(app, ["projects", "retention", "shop", "--keep-cold"])
    assert kept.exit_code == 0 and "keep" in _text(kept)


def test_retention_drops_lake_files_past_cold_days(shop: str) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["tier"]).exit_code == 0
    args = ["projects", "retention", "shop", "--hot-days", "10", "--cold-days", "20"]
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(app, ["retention"])
    assert result.exit_code == 0, result.output
    info = json.loads(runner.invoke(app, ["projects", "show", "shop", "--json"]).output)
    assert info["lake"]["entities"] == {}, "the 40-day-old files are past 20 days"
    assert info["hot"]["interactions"] == 2, "recent rows are untouched"


def test_embed_then_search_finds_the_text_by_meaning(shop: str) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["embed"])
    assert result.exit_code == 0, result.output
    assert "embedded 8 texts" in _text(result), "4 inputs and 4 comments"
    result = runner.invoke(app, ["search", "password reset", "--project", "shop", "-k", "1"])
    assert result.exit_code == 0, result.output
    assert "i2" in _text(result)
    missing = runner.invoke(app, ["search", "x", "--project", "nope"])
    assert missing.exit_code == 1 and "no project" in _text(missing)


def test_erase_prints_a_receipt_and_leaves_other_users(shop: str) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["tier"]).exit_code == 0
    result = runner.invoke(app, ["erase", "--project", "shop", "--user", "u0", "--yes"])
    assert result.exit_code == 0, result.output
    out = _text(result)
    assert "interactions" in out and "lake" in out
    assert _count(shop, "interactions") == 1, "u1's recent interaction stays"
    info = json.loads(CliRunner().invoke(app, ["projects", "show", "shop", "--json"]).output)
    assert info["lake"]["entities"]["interactions"]["rows"] == 1, "u1's old interaction stays"


def test_query_sees_hot_and_cold_rows_as_one_table(shop: str) -> None:
    runner = CliRunner()
    sql = "SELECT count(*) AS n, count(DISTINCT user_id) AS users FROM interactions"
    before = runner.invoke(app, ["query", sql, "--project", "shop", "--format", "json"])
    assert before.exit_code == 0, before.output
    assert runner.invoke(app, ["tier"]).exit_code == 0
    after = runner.invoke(app, ["query", sql, "--project", "shop", "--format", "json"])
    assert after.exit_code == 0, after.output
    assert json.loads(after.output) == json.loads(before.output) == [{"n": 4, "users": 2}]
    table = runner.invoke(
        app, ["query", "SELECT id FROM feedback ORDER BY id", "--project", "shop"]
    )
    assert table.exit_code == 0 and all(f"f{n}" in _text(table) for n in range(4))
    bad = runner.invoke(app, ["query", "DELETE FROM interactions", "--project", "shop"])
    assert bad.exit_code == 1 and "only reads" in _text(bad)
    assert _count(shop, "interactions") == 2


@pytest.mark.parametrize("embed_in_worker", [True, False])
def test_the_in_process_worker_runs_every_storage_and_analysis_job(
    settings: Settings, embed_in_worker: bool
) -> None:
    rt = Runtime.build(
        settings.with_overrides(run_worker=True, embed_in_worker=embed_in_worker),
        load_plugins=False,
    )
    try:
        assert rt.worker is not None
        kinds = {"enrich", "tier", "retention", "analyze"}
        kinds |= {"embed"} if embed_in_worker else set()
        assert kinds <= set(rt.worker.handlers)
        assert ("embed" in rt.worker.handlers) is embed_in_worker
        assert kinds <= {r.kind for r in rt.worker.recurring}
        assert ("embed" in {r.kind for r in rt.worker.recurring}) is embed_in_worker
    finally:
        rt.engine.dispose()
