"""``closedloop webhooks``: endpoints, deliveries, retries and a send now (registered on the
``closedloop`` command by :mod:`cli`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from closedloop.cli import _fail, app, console
from closedloop.cli_storage import _project_id, _runtime
from closedloop.errors import ClosedLoopError

__all__ = ["webhooks_app"]

webhooks_app = typer.Typer(
    help="Signed webhooks: endpoints and the delivery outbox.", no_args_is_help=True
)
app.add_typer(webhooks_app, name="webhooks")

Project = Annotated[str, typer.Option(help="Project name.")]
STATES = ("pending", "sending", "delivered", "failed", "dead")


@webhooks_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="Endpoint name (a-z, 0-9, _ . -).")],
    url: Annotated[str, typer.Argument(help="http(s) URL the deliveries are posted to.")],
    project: Project,
    fmt: Annotated[str, typer.Option("--format", help="standard or slack.")] = "standard",
    allow_private: Annotated[
        bool,
        typer.Option(help="May reach a non-public address listed in CLOSEDLOOP_WEBHOOK_ALLOW."),
    ] = False,
) -> None:
    """Create an endpoint; its signing secret is shown once."""
    from closedloop.act.webhooks import Endpoints, SsrfGuard

    if fmt not in ("standard", "slack"):
        raise _fail("--format must be standard or slack")
    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        try:
            guard = SsrfGuard(runtime.settings.webhook_allow)
            endpoint = Endpoints(runtime.engine, guard).create(
                pid, name, url, format=fmt, allow_private=allow_private
            )
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    console.print(f"endpoint [bold]{endpoint.name}[/] -> {endpoint.url} ({endpoint.format})")
    console.print(f"signing secret (shown only once): {endpoint.secret}", soft_wrap=True)


@webhooks_app.command("list")
def list_(project: Project) -> None:
    """The project's endpoints (without secrets)."""
    from closedloop.act.webhooks import Endpoints, SsrfGuard

    with _runtime() as runtime:
        found = Endpoints(runtime.engine, SsrfGuard()).list(_project_id(runtime, project))
    table = Table("name", "url", "format", "allow_private", "created")
    for e in found:
        table.add_row(e.name, e.url, e.format, str(e.allow_private), e.created_at.isoformat())
    console.print(table)


@webhooks_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="Endpoint name.")],
    project: Project,
) -> None:
    """Remove an endpoint (its undelivered deliveries end dead)."""
    from closedloop.act.webhooks import Endpoints, SsrfGuard

    with _runtime() as runtime:
        try:
            Endpoints(runtime.engine, SsrfGuard()).delete(_project_id(runtime, project), name)
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    console.print(f"endpoint {name} removed")


@webhooks_app.command("deliveries")
def deliveries_(
    project: Project,
    state: Annotated[
        str | None, typer.Option(help="pending, sending, delivered, failed or dead.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most deliveries shown.")] = 50,
) -> None:
    """Deliveries, newest first."""
    from closedloop.act.webhooks import deliveries

    if state is not None and state not in STATES:
        raise _fail(f"--state must be one of {', '.join(STATES)}")
    with _runtime() as runtime:
        found = deliveries(runtime.engine, _project_id(runtime, project), state, limit)
    table = Table("id", "endpoint", "type", "state", "attempts", "status", "error")
    for d in found:
        table.add_row(
            str(d["id"]), str(d["endpoint"]), d["event_type"], d["state"], str(d["attempts"]),
            str(d["last_status"] or ""), (d["last_error"] or "")[:80],
        )  # fmt: skip
    console.print(table)


@webhooks_app.command("retry")
def retry_(
    delivery_id: Annotated[int, typer.Argument(help="The delivery's id.", min=1)],
    project: Project,
) -> None:
    """Send a failed or dead delivery again (at the next `deliver` or worker poll)."""
    from closedloop.act.webhooks import retry

    with _runtime() as runtime:
        try:
            retry(runtime.engine, _project_id(runtime, project), delivery_id)
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    console.print(f"delivery {delivery_id} is pending again")


@webhooks_app.command("deliver")
def deliver(
    limit: Annotated[int, typer.Option(min=1, help="Most deliveries attempted.")] = 50,
) -> None:
    """Attempt the due deliveries now (the worker does it every
    CLOSEDLOOP_WEBHOOK_INTERVAL_SECONDS)."""
    from closedloop.act.webhooks import WebhookSender

    with _runtime() as runtime:
        try:
            attempted = WebhookSender(runtime.engine, runtime.settings).run(limit)
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    console.print(f"{attempted} deliveries attempted")
