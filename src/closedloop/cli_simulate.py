"""``closedloop simulate``: static vs human-in-the-loop vs closed loop over simulated months
(registered on the ``closedloop`` command by :mod:`cli`)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Column, Table

from closedloop.cli import _fail, app, console
from closedloop.errors import ConfigError

if TYPE_CHECKING:
    from closedloop.simulate.measure import ArmMeasures

__all__: list[str] = []

OPTIONS = ("days", "requests-per-day", "seed", "arms", "out", "embedder")
"""The options a :class:`ConfigError` of the run may name."""


@app.command()
def simulate(
    quick: Annotated[
        bool, typer.Option("--quick", help="A small world: 60 days, 300 requests a day.")
    ] = False,
    days: Annotated[
        int | None, typer.Option(help="Days simulated (default 180, 60 with --quick).")
    ] = None,
    requests_per_day: Annotated[
        int | None,
        typer.Option(help="Requests a day (default 2000, 300 with --quick); users scale with it."),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of every draw (default 0).")] = None,
    arms: Annotated[
        str, typer.Option(help="Arms to run, comma-separated: static, hitl, closed_loop.")
    ] = "static,hitl,closed_loop",
    out: Annotated[
        Path, typer.Option(help="Folder for report.md, the plots and results.json.")
    ] = Path("simulation"),
    embedder: Annotated[
        str,
        typer.Option(
            help="Embedder of the assistants and the pipeline: lexical (the default: the same "
            "figures on every machine), model or auto (the packaged sentence model)."
        ),
    ] = "lexical",
    sensitivity: Annotated[
        bool,
        typer.Option(
            "--sensitivity",
            help="Also rerun the arms over drift x feedback factors (0.5-1.5 x 0.5-2): "
            "15 more runs; try it with --quick.",
        ),
    ] = False,
) -> None:
    """Run the comparison over the same simulated world and write the report and plots."""
    from closedloop.simulate.run import parse_arms, simulate, world_params

    try:
        chosen = parse_arms(arms)
        params = world_params(quick=quick, days=days, requests_per_day=requests_per_day, seed=seed)
        report = simulate(
            params,
            arms=chosen,
            out=out,
            quick=quick,
            console=console,
            sensitivity=sensitivity,
            embedder_choice=embedder,
        )
    except ConfigError as exc:
        raise _fail(f"--{exc.field}: {exc}" if exc.field in OPTIONS else exc) from exc
    table = Table(
        Column("approach", no_wrap=True),
        "accuracy decay",
        "retention of the AI feature",
        "incident detection",
        "incident fix",
        title=f"{report.params.days} simulated days, seed {report.params.seed}",
    )
    for line in _rows(report.measures.values()):
        table.add_row(*line)
    console.print(table)
    for key, why in report.skipped.items():
        console.print(f"[yellow]{key}[/]: {why}")
    console.print(f"took {report.seconds:.0f} s; wrote:")
    for path in report.files.values():
        console.print(f"  {path}")


def _rows(measures: Iterable[ArmMeasures]) -> list[list[str]]:
    """The table's cells, from the Markdown rows of :func:`table_rows`."""
    from closedloop.simulate.measure import table_rows

    lines = table_rows(list(measures)).splitlines()[2:]
    return [[c.strip() for c in line.strip("|").split("|")] for line in lines]
