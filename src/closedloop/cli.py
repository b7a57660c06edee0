"""The ``closedloop`` command line (Typer + Rich)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from closedloop.errors import ClosedLoopError
from closedloop.settings import Settings

if TYPE_CHECKING:
    from closedloop.store.projects import Projects

__all__ = ["app", "main"]

app = typer.Typer(
    help="closedloop: capture AI interactions and feedback, and close the loop.",
    no_args_is_help=True,
    add_completion=False,
)
projects_app = typer.Typer(help="Projects and their API keys.", no_args_is_help=True)
db_app = typer.Typer(help="The hot store's schema.", no_args_is_help=True)
app.add_typer(projects_app, name="projects")
app.add_typer(db_app, name="db")

console = Console()
errors = Console(stderr=True)


def _settings(**overrides: object) -> Settings:
    changes = {k: v for k, v in overrides.items() if v is not None}
    base = Settings()  # read afresh: a command runs once
    return base.with_overrides(**changes) if changes else base


def _fail(problem: ClosedLoopError | str) -> typer.Exit:
    """Print ``problem`` (which says the fix) on stderr; return the exit to raise."""
    errors.print(f"[bold red]Error:[/] {problem}", highlight=False)
    return typer.Exit(code=1)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Address to bind (CLOSEDLOOP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (CLOSEDLOOP_PORT).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="HTTP worker processes.")] = 1,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Do not run the job worker in-process.")
    ] = False,
) -> None:
    """Run the HTTP API (and, in the embedded default, the job worker)."""
    import uvicorn

    settings = _settings(host=host, port=port, run_worker=False if no_worker else None)
    _logging(settings)
    console.print(
        f"closedloop serving on [bold]http://{settings.host}:{settings.port}[/] "
        f"(database {_redacted(settings.resolved_database_url())}, data {settings.data_dir})"
    )
    if workers == 1:
        from closedloop.ingest.app import create_app

        uvicorn.run(
            create_app(settings),
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level.lower(),
            access_log=settings.access_log,
            timeout_graceful_shutdown=30,
        )
        return
    os.environ["CLOSEDLOOP_RUN_WORKER"] = "false" if no_worker else str(settings.run_worker)
    uvicorn.run(
        "closedloop.ingest.app:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        timeout_graceful_shutdown=30,
    )


def _logging(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    if settings.log_level != "DEBUG":  # migration chatter at every start is noise
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command()
def worker() -> None:
    """Run the background job worker until interrupted."""
    from closedloop.runtime import Runtime

    settings = _settings(run_worker=True)
    _logging(settings)
    runtime = Runtime.build(settings)
    if settings.auto_migrate:
        from closedloop.store import migrate

        migrate.upgrade(runtime.engine)
    if runtime.worker is None:  # pragma: no cover - run_worker=True above
        raise _fail("the worker is disabled by configuration")
    console.print(f"closedloop worker {runtime.worker.name} started")
    try:
        runtime.worker.run()
    except KeyboardInterrupt:
        runtime.worker.stop()
    finally:
        runtime.engine.dispose()


@app.command()
def demo(
    port: Annotated[int, typer.Option(help="Port for the in-process server (0: any).")] = 0,
    interactions: Annotated[int, typer.Option(min=1, max=5000)] = 300,
    keep_serving: Annotated[
        bool, typer.Option("--keep-serving", help="Keep the server running afterwards.")
    ] = False,
) -> None:
    """Start a server on the embedded default, send a realistic sample through the HTTP API,
    and show what was stored."""
    from closedloop.demo import run_demo

    try:
        run_demo(_settings(), console, port=port, n=interactions, keep_serving=keep_serving)
    except ClosedLoopError as exc:
        raise _fail(exc) from exc


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Upgrade the database schema (Alembic) to the latest revision."""
    from closedloop.store import migrate
    from closedloop.store.db import create_engine

    settings = _settings()
    engine = create_engine(settings.resolved_database_url())
    try:
        migrate.upgrade(engine, revision)
    finally:
        engine.dispose()
    console.print(f"database {_redacted(settings.resolved_database_url())} is at {revision}")


@contextlib.contextmanager
def _projects() -> Iterator[Projects]:
    from closedloop.store import migrate
    from closedloop.store.db import create_engine
    from closedloop.store.projects import Projects

    settings = _settings()
    engine = create_engine(settings.resolved_database_url())
    try:
        if settings.auto_migrate:
            migrate.upgrade(engine)
        yield Projects(engine)
    finally:
        engine.dispose()


@projects_app.command("create")
def projects_create(
    name: Annotated[str, typer.Argument(help="Project name: lowercase letters, digits, - _.")],
    origin: Annotated[
        list[str] | None,
        typer.Option(help="Browser origin allowed to use the public key (repeatable)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Create a project and print its public and secret keys (shown once)."""
    try:
        with _projects() as projects:
            project, public, secret = projects.create(name, cors_origins=tuple(origin or ()))
    except ClosedLoopError as exc:
        raise _fail(exc) from exc
    if as_json:
        typer.echo(
            json.dumps({"project": project.name, "public_key": public, "secret_key": secret})
        )
        return
    console.print(f"project [bold]{project.name}[/] created; keys are shown only once:")
    console.print(f"  public key (browsers: feedback and signals only): {public}")
    console.print(f"  secret key (full access to the project):          {secret}")


@projects_app.command("list")
def projects_list() -> None:
    """List projects."""
    table = Table("project", "browser origins")
    with _projects() as projects:
        listed = projects.all()
    for project in listed:
        table.add_row(project.name, ", ".join(project.cors_origins) or "-")
    console.print(table)


@projects_app.command("keys")
def projects_keys(name: str) -> None:
    """List a project's keys (prefixes only)."""
    try:
        with _projects() as projects:
            keys = projects.keys(name)
    except ClosedLoopError as exc:
        raise _fail(exc) from exc
    table = Table("prefix", "kind", "state")
    for key in keys:
        table.add_row(key.lookup, key.kind, "revoked" if key.revoked else "active")
    console.print(table)


@projects_app.command("rotate")
def projects_rotate(
    name: str,
    kind: Annotated[str, typer.Option(help="public or secret")] = "secret",
) -> None:
    """Issue a new key of KIND and revoke the old one."""
    if kind not in ("public", "secret"):
        raise _fail("--kind must be public or secret")
    try:
        with _projects() as projects:
            key = projects.rotate(name, kind)  # type: ignore[arg-type]
    except ClosedLoopError as exc:
        raise _fail(exc) from exc
    console.print(f"new {kind} key for {name} (shown once): {key}")


@projects_app.command("revoke")
def projects_revoke(prefix: Annotated[str, typer.Argument(help="The key or its prefix.")]) -> None:
    """Revoke a key."""
    try:
        with _projects() as projects:
            projects.revoke(prefix)
    except ClosedLoopError as exc:
        raise _fail(exc) from exc
    console.print("key revoked")


@projects_app.command("origins")
def projects_origins(
    name: str,
    origins: Annotated[list[str], typer.Argument(help="Allowed origins; none clears them.")],
) -> None:
    """Set the browser origins allowed to use a project's public key."""
    try:
        with _projects() as projects:
            project = projects.set_origins(name, tuple(origins))
    except ClosedLoopError as exc:
        raise _fail(exc) from exc
    console.print(f"{project.name}: {', '.join(project.cors_origins) or 'no origins'}")


@projects_app.command("pii")
def projects_pii(
    name: str,
    enable: Annotated[
        bool | None, typer.Option("--enable/--disable", help="Redact PII at all.")
    ] = None,
    mode: Annotated[
        list[str] | None,
        typer.Option(help="ENTITY=MODE, e.g. email=hash (modes: mask, hash, drop); repeatable."),
    ] = None,
    default_mode: Annotated[
        str | None, typer.Option(help="Mode of the entity types --mode does not name.")
    ] = None,
    allow: Annotated[
        list[str] | None, typer.Option(help="A value never redacted; repeatable.")
    ] = None,
    ids: Annotated[
        str | None, typer.Option(help="keep: store user/session ids as sent; hash: keyed hashes.")
    ] = None,
    reset: Annotated[bool, typer.Option(help="Back to the default policy first.")] = False,
) -> None:
    """Show or change a project's PII policy (every entity type masked by default)."""
    import msgspec

    from closedloop.enrich.privacy import PiiPolicy

    try:
        with _projects() as projects:
            project = projects.get(name)
            current = msgspec.json.decode(projects.pii(project.id)[0])
            if reset:
                current = {}
            if enable is not None:
                current["enabled"] = enable
            for item in mode or ():
                entity, sep, value = item.partition("=")
                if not sep:
                    raise _fail(f"--mode {item!r} needs ENTITY=MODE, such as email=hash")
                current.setdefault("modes", {})[entity.strip()] = value.strip()
            if default_mode is not None:
                current["default_mode"] = default_mode
            if allow:
                current["allowlist"] = sorted({*current.get("allowlist", []), *allow})
            if ids is not None:
                current["ids"] = ids
            policy = PiiPolicy.from_json(msgspec.json.encode(current))
            projects.set_pii(project.id, msgspec.json.encode(policy).decode())
    except ClosedLoopError as exc:
        raise _fail(exc) from exc
    shown = policy.to_json()
    table = Table("setting", "value", title=f"PII policy of {name}")
    for key, value in shown.items():
        if key == "modes":
            value = ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
        elif isinstance(value, list):
            value = ", ".join(value) or "-"
        table.add_row(key, str(value))
    console.print(table)


@app.command()
def enrich() -> None:
    """Run the enrichment job until it has nothing left (the worker runs it every few
    seconds; this is for batch imports and scripts)."""
    from closedloop.runtime import Runtime

    runtime = Runtime.build(_settings(run_worker=False))
    runtime.start()
    try:
        stats = runtime.enricher.run()
    finally:
        runtime.stop()
    console.print(
        f"enriched {stats.interactions} interactions in {stats.sessions} sessions; joined "
        f"{stats.joined} feedback and signals ({stats.late_joined} late), {stats.orphaned} "
        "orphaned"
    )


@app.command("import")
def import_(
    path: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
    project: Annotated[str, typer.Option(help="Project to import into.")],
    batch_size: Annotated[int, typer.Option(min=1, max=1000)] = 500,
) -> None:
    """Import a JSONL file of events (one envelope per line); safe to re-run."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    from closedloop.ingest.importer import import_jsonl
    from closedloop.runtime import Runtime
    from closedloop.types import ProjectKey

    runtime = Runtime.build(_settings(run_worker=False))
    runtime.start()
    try:
        try:
            proj = runtime.projects.get(project)
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
        key = ProjectKey(project_id=proj.id, project_name=proj.name, kind="secret", key_id=0)
        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            task = bar.add_task(f"importing {path.name}", total=path.stat().st_size)
            report = import_jsonl(
                runtime.ingestor,
                key,
                path,
                batch_size=batch_size,
                progress=lambda n: bar.advance(task, n),
            )
    finally:
        runtime.stop()
    table = Table("lines", "stored", "duplicate", "rejected")
    table.add_row(
        *(str(v) for v in (report.lines, report.stored, report.duplicate, report.rejected))
    )
    console.print(table)
    for line, field, message in report.errors[:20]:
        console.print(f"  line {line}: {field or 'event'}: {message}")
    if report.rejected:
        raise typer.Exit(code=1)


def main() -> None:
    """Entry point of the ``closedloop`` command."""
    app()


# The storage, analysis and act commands register themselves on ``app`` and ``projects_app``.
from closedloop import cli_act as _cli_act  # noqa: E402,F401
from closedloop import cli_analyze as _cli_analyze  # noqa: E402,F401
from closedloop import cli_exports as _cli_exports  # noqa: E402,F401
from closedloop import cli_prompts as _cli_prompts  # noqa: E402,F401
from closedloop import cli_review as _cli_review  # noqa: E402,F401
from closedloop import cli_simulate as _cli_simulate  # noqa: E402,F401
from closedloop import cli_storage as _cli_storage  # noqa: E402,F401
from closedloop import cli_users as _cli_users  # noqa: E402,F401
from closedloop import cli_webhooks as _cli_webhooks  # noqa: E402,F401
