"""The docs stay true: the checked-in schema, the limits, the commands."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import msgspec
import typer.main

from closedloop.cli import app
from closedloop.events import LIMITS

ROOT = Path(__file__).resolve().parents[2]


def _gen_docs_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_checked_in_json_schema_matches_the_contract() -> None:
    expected = _gen_docs_module().render_schema()
    actual = (ROOT / "docs" / "event.schema.json").read_text()
    assert actual == expected, "docs/event.schema.json is stale: run python scripts/gen_docs.py"


def test_every_limit_of_the_contract_is_documented_with_its_value() -> None:
    doc = (ROOT / "docs" / "contract.md").read_text()
    for name, value in msgspec.to_builtins(LIMITS).items():
        if name == "future_skew_seconds":
            assert "24 hours" in doc
            continue
        assert f"{value:,}" in doc or str(value) in doc, f"limit {name}={value} not in contract.md"


def test_every_command_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    group = typer.main.get_command(app)
    names = []
    for name, command in group.commands.items():  # type: ignore[attr-defined]
        subcommands = getattr(command, "commands", None)
        if subcommands:
            names.extend(f"{name} {sub}" for sub in subcommands)
        else:
            names.append(name)
    for name in names:
        top, _, sub = name.partition(" ")
        documented = f"closedloop {name}" in readme or (
            sub and f"closedloop {top} " in readme and sub in readme
        )
        assert documented, f"`closedloop {name}` is not documented in README.md"
