"""``closedloop simulate --quick``: the report, the plots and the figures, and bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from closedloop.cli import app


def _text(result: object) -> str:
    """Everything the command printed, stdout and stderr."""
    out = getattr(result, "stdout", "") or ""
    try:
        out += getattr(result, "stderr", "") or ""
    except ValueError:  # stderr not captured separately
        pass
    return out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("simulation")
    result = CliRunner().invoke(
        app, ["simulate", "--quick", "--arms", "static,hitl", "--out", str(out)]
    )
    assert result.exit_code == 0, _text(result)
    return out, _text(result)


def test_quick_run_writes_the_report_the_plots_and_the_figures(
    quick_run: tuple[Path, str],
) -> None:
    out, printed = quick_run
    for name in ("report.md", "accuracy.png", "retention.png", "results.json"):
        assert (out / name).stat().st_size > 0, name
        assert name in printed
    for plot in ("accuracy.png", "retention.png"):
        assert (out / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert "| static |" in report and "| human-in-the-loop |" in report
    assert "## Targets" in report and "## Parameters" in report
    assert "static" in printed and "human-in-the-loop" in printed


def test_static_decays_more_than_human_in_the_loop(quick_run: tuple[Path, str]) -> None:
    out, _ = quick_run
    figures = json.loads((out / "results.json").read_text())
    assert set(figures["arms"]) == {"static", "hitl"}
    static, hitl = figures["arms"]["static"], figures["arms"]["hitl"]
    assert static["decay_pct"] < hitl["decay_pct"] < 0
    assert static["final_retention"] < hitl["final_retention"]
    assert len(static["days"]) == figures["params"]["world"]["days"] == 60
    order = next(t for t in figures["targets"] if t["name"].startswith("static decays more"))
    assert order["verdict"] == "met"
    assert all(i["fixed"] is None for i in static["incidents"])
    assert [i["onset"] for i in hitl["incidents"]] == [15, 35]


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--arms", "static,bogus"], "--arms"),
        (["--arms", ","], "--arms"),
        (["--days", "0"], "--days"),
        (["--requests-per-day", "-5"], "--requests-per-day"),
    ],
)
def test_bad_options_exit_1_naming_the_option(args: list[str], option: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["simulate", "--quick", "--out", str(tmp_path), *args])
    assert result.exit_code == 1
    assert option in _text(result)
    assert not (tmp_path / "report.md").exists()
