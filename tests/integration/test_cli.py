"""The command line, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from closedloop.cli import app
from closedloop.demo import DEMO_ADMIN
from closedloop.sdk.envelope import make_event
from closedloop.store.db import create_engine
from closedloop.store.users import Users


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("CLOSEDLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLOSEDLOOP_DATABASE_URL", database_url)
    return database_url


def _text(result: object) -> str:
    """Everything the command printed, stdout and stderr."""
    out = getattr(result, "stdout", "") or ""
    try:
        out += getattr(result, "stderr", "") or ""
    except ValueError:  # stderr not captured separately
        pass
    return out


def _count(url: str, table: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def test_projects_create_prints_both_keys_once_and_refuses_a_second_time(cli_env: str) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["projects", "create", "shop", "--json"])
    assert first.exit_code == 0, first.output
    keys = json.loads(first.output)
    assert keys["public_key"].startswith("cl_pk_") and keys["secret_key"].startswith("cl_sk_")
    again = runner.invoke(app, ["projects", "create", "shop"])
    assert again.exit_code == 1
    assert "exists already" in _text(again)


def test_an_invalid_project_name_is_refused_with_the_rule(cli_env: str) -> None:
    result = CliRunner().invoke(app, ["projects", "create", "Bad Name"])
    assert result.exit_code == 1
    assert "lowercase letters" in _text(result)


def test_import_is_resumable_and_stores_nothing_twice(cli_env: str, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["projects", "create", "shop"]).exit_code == 0
    path = tmp_path / "events.jsonl"
    lines = [
        json.dumps(make_event("interaction", {"input": f"q{i}", "output": "a"}, id=f"i-{i}"))
        for i in range(1200)
    ]
    # A line without an id gets a deterministic one, so it too is imported once.
    no_id = make_event("feedback", {"interaction_id": "i-1", "thumbs": 1})
    del no_id["id"]
    lines.append(json.dumps(no_id))
    path.write_text("\n".join(lines[:700]) + "\n")
    first = runner.invoke(app, ["import", str(path), "--project", "shop"])
    assert first.exit_code == 0, first.output
    assert _count(cli_env, "interactions") == 700
    path.write_text("\n".join(lines) + "\n")  # the file grew; import it all again
    second = runner.invoke(app, ["import", str(path), "--project", "shop"])
    assert second.exit_code == 0, second.output
    assert _count(cli_env, "interactions") == 1200
    assert _count(cli_env, "feedback") == 1
    third = runner.invoke(app, ["import", str(path), "--project", "shop"])
    assert third.exit_code == 0
    assert _count(cli_env, "interactions") == 1200
    assert _count(cli_env, "feedback") == 1
    assert "1201" in _text(third)  # every line answered duplicate


def test_import_reports_bad_lines_with_their_number_and_exits_nonzero(
    cli_env: str, tmp_path: Path
) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["projects", "create", "shop"]).exit_code == 0
    path = tmp_path / "events.jsonl"
    good = json.dumps(make_event("interaction", {"input": "q", "output": "a"}, id="i-1"))
    path.write_text(good + "\n{not json\n")
    result = runner.invoke(app, ["import", str(path), "--project", "shop"])
    assert result.exit_code == 1
    assert "line 2" in _text(result)
    assert _count(cli_env, "interactions") == 1


def test_import_into_an_unknown_project_says_how_to_list_them(cli_env: str, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("{}\n")
    result = CliRunner().invoke(app, ["import", str(path), "--project", "nope"])
    assert result.exit_code == 1
    assert "closedloop projects list" in _text(result)


def test_demo_sends_the_sample_through_http_and_everything_is_stored(
    cli_env: str, backend: str
) -> None:
    result = CliRunner().invoke(app, ["demo", "--interactions", "120"])
    assert result.exit_code == 0, result.output
    # the sample, then the users coming back after the rules fired (8 times as many)
    assert _count(cli_env, "interactions") == 120 + 960
    assert _count(cli_env, "feedback") + _count(cli_env, "signals") > 0
    text = _text(result)
    assert "100 answered duplicate" in text
    assert "rejected: 0" in text
    assert "enrichment: 0 interactions waiting" in text, "the worker enriched all"
    assert _count(cli_env, "sessions") > 0
    # the loop: the rule fired, its webhook arrived signed, its effect was measured
    assert "support-prompt-quality" in text and "signature verified" in text
    assert "did support-prompt-quality fix prompt=support@4?" in text
    assert _count(cli_env, "firings") >= 1 and _count(cli_env, "ab_tests") == 1
    # the dashboard: its link, and a demo admin whose printed password signs in
    password = _demo_password(text)
    assert "/ui/" in text and DEMO_ADMIN in text
    engine = create_engine(cli_env)
    try:
        assert Users(engine).authenticate(DEMO_ADMIN, password).role_in("demo") == "admin"
    finally:
        engine.dispose()
    # Re-running the demo adds a fresh sample and keeps the old one; the rule is cooling.
    again = CliRunner().invoke(app, ["demo", "--interactions", "120"])
    assert again.exit_code == 0, again.output
    assert _count(cli_env, "interactions") == 2 * (120 + 960)
    assert "held by cooldown" in _text(again)
    assert _demo_password(_text(again)) != password, "a fresh password on every run"


def _demo_password(text: str) -> str:
    found = re.search(r"with the password\s+(\S+)\s+\(made up", text)
    assert found, text
    return found.group(1)


def test_db_upgrade_is_idempotent(cli_env: str) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    assert _count(cli_env, "alembic_version") == 1


def test_projects_pii_shows_and_changes_the_policy_and_refuses_a_bad_one(cli_env: str) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["projects", "create", "shop"]).exit_code == 0
    shown = runner.invoke(app, ["projects", "pii", "shop"])
    assert shown.exit_code == 0, shown.output
    assert "default_mode" in _text(shown) and "mask" in _text(shown)
    changed = runner.invoke(
        app, ["projects", "pii", "shop", "--mode", "email=hash", "--allow", "help@shop.example"]
    )
    assert changed.exit_code == 0, changed.output
    assert "email=hash" in _text(changed) and "help@shop.example" in _text(changed)
    again = runner.invoke(app, ["projects", "pii", "shop", "--ids", "hash"])
    assert "email=hash" in _text(again), "a change keeps the rest of the policy"
    bad = runner.invoke(app, ["projects", "pii", "shop", "--mode", "email=shred"])
    assert bad.exit_code == 1
    assert "modes.email" in _text(bad) and "mask" in _text(bad)
    assert runner.invoke(app, ["projects", "pii", "nope"]).exit_code == 1


def test_enrich_runs_the_job_until_nothing_is_left(cli_env: str, tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["projects", "create", "shop"]).exit_code == 0
    path = tmp_path / "events.jsonl"
    events = [
        make_event("interaction", {"input": "hi", "output": "hello", "session_id": "s"}, id="i"),
        make_event("feedback", {"interaction_id": "i", "thumbs": 1}, id="f"),
    ]
    path.write_text("\n".join(json.dumps(e) for e in events) + "\n")
    assert runner.invoke(app, ["import", str(path), "--project", "shop"]).exit_code == 0
    result = runner.invoke(app, ["enrich"])
    assert result.exit_code == 0, result.output
    assert "enriched 1 interactions in 1 sessions; joined 1" in _text(result)
    assert "enriched 0 interactions" in _text(runner.invoke(app, ["enrich"]))
