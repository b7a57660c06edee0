"""Commands of the storage tiers: tiering, retention, queries over both tiers, semantic
search, embeddings and erasure (registered on the ``closedloop`` command by :mod:`cli`)."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from closedloop.cli import _fail, _settings, app, console, projects_app
from closedloop.errors import ClosedLoopError

if TYPE_CHECKING:
    from closedloop.runtime import Runtime

__all__: list[str] = []


@contextlib.contextmanager
def _runtime() -> Iterator[Runtime]:
    """A runtime without the worker (a command does its one job)."""
    from closedloop.runtime import Runtime

    runtime = Runtime.build(_settings(run_worker=False))
    runtime.start()
    try:
        yield runtime
    finally:
        runtime.stop()


def _project_id(runtime: Runtime, name: str) -> int:
    try:
        return runtime.projects.get(name).id
    except ClosedLoopError as exc:
        raise _fail(exc) from exc


@app.command()
def tier() -> None:
    """Move rows older than each project's hot window to the lake (verified, re-runnable;
    the server's worker does it every CLOSEDLOOP_TIER_INTERVAL_SECONDS)."""
    from closedloop.runtime import tierer

    with _runtime() as runtime:
        report = tierer(
            runtime.engine,
            runtime.lake,
            runtime.projects,
            runtime.settings,
            time_budget_seconds=float("inf"),
        ).run()
        url = runtime.lake.uri("")
    console.print(f"lake: {url}", soft_wrap=True)
    table = Table("entity", "rows moved")
    for entity, rows in sorted(report.by_entity.items()):
        table.add_row(entity, str(rows))
    console.print(table)
    console.print(
        f"{report.rows} rows in {report.files} files; {report.recovered} stray files of an "
        f"interrupted run deleted; {report.conflicts} chunks changed meanwhile (retried next run)"
    )


@app.command()
def retention() -> None:
    """Apply every project's retention once: lake files, sessions and vectors past their days
    (the worker does it every CLOSEDLOOP_RETENTION_INTERVAL_SECONDS)."""
    from closedloop.store.enforce import enforce_retention

    with _runtime() as runtime:
        report = enforce_retention(runtime.engine, runtime.lake, indexes=runtime.indexes)
        names = {p.id: p.name for p in runtime.projects.all()}
    table = Table("project", "lake rows", "sessions", "vectors", title="deleted by retention")
    for pid, name in sorted(names.items(), key=lambda kv: kv[1]):
        table.add_row(
            name,
            str(report.lake_rows.get(pid, 0)),
            str(report.sessions.get(pid, 0)),
            str(report.vectors.get(pid, 0)),
        )
    console.print(table)


@app.command()
def embed() -> None:
    """Embed every stored input, correction and comment that has no vector yet (the worker
    does it every CLOSEDLOOP_EMBED_INTERVAL_SECONDS)."""
    with _runtime() as runtime:
        embedder = runtime.embedder()
        stats = runtime.embedding_job().run()
    console.print(
        f"embedded {stats.stored} texts with {embedder.name} ({embedder.kind}); "
        f"{stats.skipped} rows had no text"
    )


@app.command("query")
def query_(
    sql: Annotated[
        str, typer.Argument(help="One SELECT over interactions, feedback, signals, sessions.")
    ],
    project: Annotated[str, typer.Option(help="Project name.")],
    since: Annotated[dt.datetime | None, typer.Option(help="From this UTC time.")] = None,
    until: Annotated[dt.datetime | None, typer.Option(help="Before this UTC time.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table",
    limit: Annotated[int, typer.Option(min=1, help="Most rows printed as a table.")] = 1000,
) -> None:
    """SQL over a project's rows in the hot store and the lake together (DuckDB)."""
    from closedloop.store.olap import query

    if fmt not in ("table", "csv", "json"):
        raise _fail("--format must be table, csv or json")
    from closedloop.store.db import utc

    try:
        df = query(sql, project=project, settings=_settings(), since=utc(since), until=utc(until))
    except ClosedLoopError as exc:
        raise _fail(exc) from exc
    if fmt == "csv":
        typer.echo(df.to_csv(index=False), nl=False)
        return
    if fmt == "json":
        typer.echo(df.to_json(orient="records", date_format="iso", date_unit="us"))
        return
    table = Table(*map(str, df.columns))
    for row in df.head(limit).itertuples(index=False):
        table.add_row(*("" if v is None or v != v else str(v) for v in row))
    console.print(table)
    if len(df) > limit:
        console.print(f"{len(df) - limit} more rows: use --format csv or a LIMIT")


@app.command()
def search(
    q: Annotated[str, typer.Argument(help="What to look for, in plain words.")],
    project: Annotated[str, typer.Option(help="Project to search.")],
    kind: Annotated[
        list[str] | None, typer.Option(help="input, correction or comment; repeatable.")
    ] = None,
    k: Annotated[int, typer.Option("-k", min=1, max=100, help="How many hits.")] = 10,
    since: Annotated[dt.datetime | None, typer.Option(help="From this time (UTC).")] = None,
    until: Annotated[dt.datetime | None, typer.Option(help="Before this time (UTC).")] = None,
) -> None:
    """Semantic search over a project's inputs, corrections and comments."""
    from closedloop.store.db import utc
    from closedloop.store.vectors.search import search as run_search

    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        embedder = runtime.embedder()
        try:
            hits = run_search(
                runtime.engine,
                runtime.indexes,
                embedder,
                pid,
                q,
                k=k,
                kinds=kind or None,
                since=utc(since),
                until=utc(until),
            )
        except (ClosedLoopError, ValueError) as exc:
            raise _fail(str(exc)) from exc
    table = Table(
        "score", "kind", "interaction", "text", title=f"{embedder.name} ({embedder.kind})"
    )
    for hit in hits:
        table.add_row(f"{hit.score:.3f}", hit.kind, hit.interaction_id, (hit.text or "")[:100])
    console.print(table)


@app.command()
def erase(
    project: Annotated[str, typer.Option(help="The user's project.")],
    user: Annotated[str, typer.Option(help="The user id, as the app sends it.")],
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase one end user from every tier (hot rows, vectors, lake, exports) and keep their
    later events out; prints the receipt."""
    if not yes:
        typer.confirm(f"Erase every trace of user {user!r} in {project}?", abort=True)
    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        try:
            receipt = runtime.erase_user(pid, user)
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    table = Table("where", "what", "removed", title=f"erased {user!r} from {project}")
    for name, count in receipt.hot.items():
        table.add_row("hot store", name, str(count))
    for item in receipt.lake:
        table.add_row("lake", item["path"], str(item["removed_rows"]))
    for item in receipt.exports:
        table.add_row("exports", item["url"], "file deleted")
    if receipt.indexes_dropped:
        table.add_row("vector index", "dropped", "rebuilt on next search")
    console.print(table)


@projects_app.command("retention")
def projects_retention(
    name: str,
    hot_days: Annotated[
        float | None, typer.Option(help="Days in the hot store before the lake.")
    ] = None,
    cold_days: Annotated[float | None, typer.Option(help="Days in the lake.")] = None,
    vector_days: Annotated[float | None, typer.Option(help="Days of vectors.")] = None,
    keep_cold: Annotated[
        bool, typer.Option("--keep-cold", help="Keep lake files forever.")
    ] = False,
    keep_vectors: Annotated[
        bool, typer.Option("--keep-vectors", help="Keep vectors forever.")
    ] = False,
    erased_events: Annotated[
        str | None, typer.Option(help="refuse or drop events of an erased user.")
    ] = None,
    reset: Annotated[bool, typer.Option(help="Back to the default retention first.")] = False,
) -> None:
    """Show or change a project's retention."""
    import msgspec

    from closedloop.cli import _projects
    from closedloop.store.retention import Retention

    try:
        with _projects() as projects:
            pid = projects.get(name).id
            current = {} if reset else msgspec.json.decode(projects.retention(pid) or "{}")
            changes = {
                "hot_days": hot_days,
                "cold_days": cold_days,
                "vector_days": vector_days,
                "erased_events": erased_events,
            }
            current.update({k: v for k, v in changes.items() if v is not None})
            if keep_cold:
                current["cold_days"] = None
            if keep_vectors:
                current["vector_days"] = None
            policy = Retention.from_json(msgspec.json.encode(current))
            projects.set_retention(pid, policy.encode())
    except ClosedLoopError as exc:
        raise _fail(exc) from exc
    _print_settings(f"retention of {name}", policy.to_json())


def _print_settings(title: str, values: dict[str, object]) -> None:
    table = Table("setting", "value", title=title)
    for key, value in values.items():
        table.add_row(key, "keep" if value is None else str(value))
    console.print(table)


@projects_app.command("show")
def projects_show(
    name: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a project: its origins, retention, hot rows, lake and vectors."""
    import sqlalchemy as sa

    from closedloop.store import models

    with _runtime() as runtime:
        pid = _project_id(runtime, name)
        project = runtime.projects.get(name)
        summary = runtime.lake_summary(pid)
        counts: dict[str, int] = {}
        with runtime.engine.connect() as conn:
            for table in (
                models.interactions,
                models.feedback,
                models.signals,
                models.sessions,
                models.vectors,
            ):
                counts[table.name] = int(
                    conn.execute(
                        sa.select(sa.func.count()).where(table.c.project_id == pid)
                    ).scalar_one()
                )
    shown = {
        "project": name,
        "origins": list(project.cors_origins),
        "hot": counts,
        "lake": summary,
    }
    if as_json:
        typer.echo(json.dumps(shown, default=str))
        return
    _print_settings(f"retention of {name}", summary["retention"])  # type: ignore[arg-type]
    hot = Table("table", "rows", title="hot store")
    for table_name, count in counts.items():
        hot.add_row(table_name, str(count))
    console.print(hot)
    lake = Table("entity", "files", "rows", "bytes", "days", title=f"lake {summary['url']}")
    for entity, info in summary["entities"].items():  # type: ignore[attr-defined]
        lake.add_row(
            entity,
            str(info["files"]),
            str(info["rows"]),
            str(info["bytes"]),
            f"{info['first_day']} .. {info['last_day']}",
        )
    console.print(lake)
