"""``closedloop users ...`` on SQLite and PostgreSQL: creating the first admin, listing,
generated passwords, roles, password changes and disabling."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from closedloop.cli import app
from closedloop.errors import AuthError
from closedloop.store.db import create_engine
from closedloop.store.users import Users

PASSWORD = "correct horse battery"


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh data dir and database with the project ``acme``."""
    monkeypatch.setenv("CLOSEDLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLOSEDLOOP_DATABASE_URL", database_url)
    made = CliRunner().invoke(app, ["projects", "create", "acme"])
    assert made.exit_code == 0, made.output
    return database_url


def _text(result: Result) -> str:
    """Everything the command printed, stdout and stderr."""
    out = result.stdout or ""
    try:
        out += result.stderr or ""
    except ValueError:  # stderr not captured separately
        pass
    return out


def _run(*args: str, stdin: str | None = None) -> Result:
    return CliRunner().invoke(app, ["users", *args], input=stdin)


def _authenticates(url: str, email: str, password: str) -> bool:
    engine = create_engine(url)
    try:
        Users(engine).authenticate(email, password)
        return True
    except AuthError:
        return False
    finally:
        engine.dispose()


def test_create_with_a_password_on_stdin_then_list_shows_the_role(cli_env: str) -> None:
    made = _run(
        "create", "Ann@Example.com", "--project", "acme", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert made.exit_code == 0, _text(made)
    assert "created ann@example.com (admin of acme)" in _text(made)
    assert PASSWORD not in _text(made)
    viewer = _run(
        "create",
        "vic@example.com",
        "--project",
        "acme",
        "--role",
        "viewer",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    assert viewer.exit_code == 0, _text(viewer)
    listed = _run("list")
    assert listed.exit_code == 0, _text(listed)
    lines = _text(listed).splitlines()
    assert any("ann@example.com" in ln and "acme: admin" in ln and "active" in ln for ln in lines)
    assert any("vic@example.com" in ln and "acme: viewer" in ln for ln in lines)
    assert _authenticates(cli_env, "ann@example.com", PASSWORD)


def test_generate_prints_a_password_that_signs_in(cli_env: str) -> None:
    made = _run("create", "ann@example.com", "--project", "acme", "--generate")
    assert made.exit_code == 0, _text(made)
    found = re.search(r"password \(shown once\): (\S+)", _text(made))
    assert found, _text(made)
    assert len(found.group(1)) >= 10
    assert _authenticates(cli_env, "ann@example.com", found.group(1))


def test_create_refuses_a_duplicate_an_unknown_project_and_a_bad_role(cli_env: str) -> None:
    first = _run("create", "ann@example.com", "--project", "acme", "--generate")
    assert first.exit_code == 0, _text(first)
    again = _run("create", "ANN@example.com", "--project", "acme", "--generate")
    assert again.exit_code == 1
    assert "exists already" in _text(again) and "users grant" in _text(again)
    nowhere = _run("create", "bob@example.com", "--project", "nowhere", "--generate")
    assert nowhere.exit_code == 1 and "nowhere" in _text(nowhere)
    role = _run("create", "bob@example.com", "--project", "acme", "--role", "owner", "--generate")
    assert role.exit_code == 1
    assert "--role" in _text(role) and "viewer, reviewer, admin" in _text(role)
    short = _run(
        "create", "bob@example.com", "--project", "acme", "--password-stdin", stdin="short\n"
    )
    assert short.exit_code == 1 and "--password" in _text(short) and "at least" in _text(short)
    listed = _text(_run("list"))
    assert "bob@example.com" not in listed  # no account was left behind by a refusal


def test_grant_names_the_role_choices_and_replaces_the_role(cli_env: str) -> None:
    assert _run("create", "ann@example.com", "--project", "acme", "--generate").exit_code == 0
    bad = _run("grant", "ann@example.com", "--project", "acme", "--role", "owner")
    assert bad.exit_code == 1
    assert "owner" in _text(bad) and "viewer, reviewer, admin" in _text(bad)
    ok = _run("grant", "ann@example.com", "--project", "acme", "--role", "Reviewer")
    assert ok.exit_code == 0, _text(ok)
    assert "is now reviewer of acme" in _text(ok)
    assert "acme: reviewer" in _text(_run("list"))
    unknown = _run("grant", "nobody@example.com", "--project", "acme", "--role", "viewer")
    assert unknown.exit_code == 1 and "nobody@example.com" in _text(unknown)
    revoked = _run("revoke", "ann@example.com", "--project", "acme")
    assert revoked.exit_code == 0, _text(revoked)
    assert "acme:" not in _text(_run("list"))


def test_password_and_disable(cli_env: str) -> None:
    made = _run(
        "create", "ann@example.com", "--project", "acme", "--password-stdin", stdin=PASSWORD + "\n"
    )
    assert made.exit_code == 0, _text(made)
    changed = _run(
        "password", "ann@example.com", "--password-stdin", stdin="a brand new passphrase\n"
    )
    assert changed.exit_code == 0, _text(changed)
    assert "sessions have ended" in _text(changed)
    assert not _authenticates(cli_env, "ann@example.com", PASSWORD)
    assert _authenticates(cli_env, "ann@example.com", "a brand new passphrase")
    generated = _run("password", "ann@example.com", "--generate")
    found = re.search(r"password \(shown once\): (\S+)", _text(generated))
    assert generated.exit_code == 0 and found, _text(generated)
    assert _authenticates(cli_env, "ann@example.com", found.group(1))
    new = found.group(1)

    off = _run("disable", "ann@example.com")
    assert off.exit_code == 0 and "disabled" in _text(off)
    assert "disabled" in _text(_run("list"))
    assert not _authenticates(cli_env, "ann@example.com", new)
    on = _run("disable", "ann@example.com", "--enable")
    assert on.exit_code == 0 and "enabled" in _text(on)
    assert _authenticates(cli_env, "ann@example.com", new)
    missing = _run("password", "nobody@example.com", "--generate")
    assert missing.exit_code == 1 and "nobody@example.com" in _text(missing)


def test_an_address_with_brackets_is_printed_as_written(cli_env: str) -> None:
    made = _run("create", "[/]a[b]@example.com", "--project", "acme", "--generate")
    assert made.exit_code == 0, _text(made)
    assert "created [/]a[b]@example.com (admin of acme)" in _text(made)
    assert "[/]a[b]@example.com" in _text(_run("list"))
    again = _run("create", "[/]a[b]@example.com", "--project", "acme", "--generate")
    assert again.exit_code == 1 and "[/]a[b]@example.com" in _text(again)
