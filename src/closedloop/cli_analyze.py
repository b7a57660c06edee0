"""Commands of the analysis stage: metrics per segment, drift alarms, issues, topics, and a run
of the analysis job (registered on the ``closedloop`` command by :mod:`cli`)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from closedloop.cli import _fail, app, console
from closedloop.cli_storage import _project_id, _runtime
from closedloop.errors import ClosedLoopError

__all__: list[str] = []


@app.command()
def analyze(
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
) -> None:
    """Bring embeddings, topics, issues and drift up to date now (the worker does it every
    CLOSEDLOOP_ANALYZE_INTERVAL_SECONDS)."""
    with _runtime() as runtime:
        pid = _project_id(runtime, project) if project else None
        embedded = runtime.embedding_job().run()
        stats = runtime.analyzer().run(pid)
    if stats.skipped:
        console.print("another analysis run holds the lock (a worker): nothing done; try again")
        return
    console.print(
        f"{embedded.stored} texts embedded; {stats.projects} projects: {stats.members} "
        f"interactions clustered, {stats.topics_opened} topics and {stats.issues_opened} "
        f"issues opened, {stats.observations} feedback observations, {stats.alarms} new alarms"
    )


@app.command("metrics")
def metrics_(
    project: Annotated[str, typer.Option(help="Project name.")],
    by: Annotated[
        str, typer.Option(help="all, model, prompt, topic, tag or cohort:KEY (a metadata key).")
    ] = "all",
    since: Annotated[dt.datetime | None, typer.Option(help="From this UTC time.")] = None,
    until: Annotated[dt.datetime | None, typer.Option(help="Before this UTC time.")] = None,
    bucket: Annotated[str | None, typer.Option(help="hour, day or week.")] = None,
    measure: Annotated[list[str] | None, typer.Option(help="Only these; repeatable.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
) -> None:
    """Quality per segment with 95 % intervals (Wilson for rates, t for means)."""
    from closedloop.analyze.metrics import metrics
    from closedloop.analyze.read import frame_json
    from closedloop.analyze.tracker import topic_table
    from closedloop.store.db import utc

    if fmt not in ("table", "csv", "json"):
        raise _fail("--format must be table, csv or json")
    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        try:
            frame = metrics(
                runtime.analytics(),
                pid,
                by=by,
                since=utc(since),
                until=utc(until),
                bucket=bucket,
                measures=measure,
                topics=topic_table(runtime.engine, pid) if by == "topic" else None,
            )
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    if fmt == "csv":
        typer.echo(frame.to_csv(index=False), nl=False)
        return
    if fmt == "json":
        typer.echo(json.dumps(frame_json(frame)))
        return
    title = f"{project} by {by}" + (f" per {bucket}" if bucket else "")
    bucketed = bucket is not None
    table = Table(*(["bucket"] if bucketed else []), "segment", "measure", "value", "95 % interval",
                  "n", title=title)  # fmt: skip
    for row in frame.itertuples(index=False):
        interval = "" if row.low != row.low else f"[{row.low:.3g}, {row.high:.3g}]"
        value = "-" if row.value != row.value else f"{row.value:.4g}"
        cells = [str(row.segment), row.measure, value, interval, str(row.n)]
        table.add_row(*([str(row.bucket)] if bucketed else []), *cells)
    console.print(table)
    if frame.empty:
        console.print("no interactions in this window")


def _estimate(e: dict[str, Any]) -> str:
    if e.get("value") is None:
        return f"n={e.get('n')}"
    low, high = e.get("low"), e.get("high")
    span = f" [{low:.3g}, {high:.3g}]" if low is not None and high is not None else ""
    return f"{e['value']:.3g}{span} (n={e.get('n')})"


@app.command()
def drift(
    project: Annotated[str, typer.Option(help="Project name.")],
    kind: Annotated[str | None, typer.Option(help="quality, input, topic_mix or emerging.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most alarms shown.")] = 50,
) -> None:
    """Drift alarms, most recent first: what changed, where, and since when."""
    from closedloop.analyze.read import alarms

    if kind is not None and kind not in ("quality", "input", "topic_mix", "emerging"):
        raise _fail("--kind must be quality, input, topic_mix or emerging")
    with _runtime() as runtime:
        found = alarms(runtime.engine, _project_id(runtime, project), kind=kind, limit=limit)
    table = Table("detected", "kind", "segment", "measure", "since", "before", "after")
    for a in found:
        before, after = a["before"], a["after"]
        if a["kind"] in ("input", "topic_mix"):
            before = f"p={a['details'].get('p_value', float('nan')):.3g}"
            after = ", ".join(
                f"{s['topic']}: {s['before']:.0%}->{s['after']:.0%}"
                for s in a["details"].get("shifts", [])[:2]
            )
        else:
            before, after = _estimate(before), _estimate(after)
        table.add_row(
            a["detected_at"][:19], a["kind"], a["segment"], a["measure"], a["since"][:19],
            before, after,
        )  # fmt: skip
    console.print(table)
    if not found:
        console.print("no drift alarms")


def _clusters(project: str, kind: str, state: str | None, limit: int) -> None:
    from closedloop.analyze.read import clusters

    with _runtime() as runtime:
        found = clusters(
            runtime.engine, _project_id(runtime, project), kind, state=state, limit=limit
        )
    if kind == "issue":
        table = Table("rank", "id", "issue", "state", "size", "impact", "why", "example")
    else:
        table = Table("rank", "id", "topic", "size", "example")
    for c in found:
        example = next((e["input"] for e in c["examples"] if e["input"]), "")[:60]
        if kind == "issue":
            stats = c["stats"]
            table.add_row(
                str(c["rank"]), str(c["id"]), c["name"], c["state"], str(c["size"]),
                f"{stats.get('impact', 0):.1f}",
                f"{stats.get('recent', 0)} x {stats.get('severity', 0):.2f} x "
                f"{stats.get('growth', 0):.2f}",
                example,
            )  # fmt: skip
        else:
            table.add_row(str(c["rank"]), str(c["id"]), c["name"], str(c["size"]), example)
    console.print(table)
    if not found:
        console.print(f"no {kind}s yet (`closedloop analyze` brings them up to date)")


@app.command()
def issues(
    project: Annotated[str, typer.Option(help="Project name.")],
    state: Annotated[str | None, typer.Option(help="open, growing or resolved.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most issues shown.")] = 20,
) -> None:
    """Issues (negative feedback clustered), ranked by impact = recent x severity x growth."""
    if state is not None and state not in ("open", "growing", "resolved"):
        raise _fail("--state must be open, growing or resolved")
    _clusters(project, "issue", state, limit)


@app.command()
def topics(
    project: Annotated[str, typer.Option(help="Project name.")],
    limit: Annotated[int, typer.Option(min=1, help="Most topics shown.")] = 20,
) -> None:
    """Topics of the inputs, largest first."""
    _clusters(project, "topic", None, limit)
