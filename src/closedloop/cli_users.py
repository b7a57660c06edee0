"""Dashboard accounts: ``closedloop users ...`` (registered on the ``closedloop`` command by
:mod:`cli`). ``users create`` bootstraps the first admin of a project."""

from __future__ import annotations

import secrets
import sys
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from closedloop.cli import _fail, app, console
from closedloop.cli_storage import _project_id, _runtime
from closedloop.errors import ClosedLoopError

__all__: list[str] = []

users_app = typer.Typer(
    help="Dashboard accounts and their role (admin, reviewer, viewer) in each project.",
    no_args_is_help=True,
)
app.add_typer(users_app, name="users")

Email = Annotated[str, typer.Argument(help="The account's email address.")]
Project = Annotated[str, typer.Option(help="Project name.")]
PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from stdin's first line.")
]
Generate = Annotated[
    bool, typer.Option("--generate", help="Make up a strong password and print it once.")
]
RoleOption = Annotated[
    str, typer.Option(help="admin (everything), reviewer (reads, review queue) or viewer (reads).")
]


def _password(stdin: bool, generate: bool) -> tuple[str, bool]:
    """The new password: generated, read from stdin, or asked for twice on the terminal."""
    if generate:
        return secrets.token_urlsafe(15), True
    if stdin:
        return sys.stdin.readline().rstrip("\r\n"), False
    if not sys.stdin.isatty():
        raise _fail("no terminal to ask for the password; pass --password-stdin or --generate")
    entered: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return entered, False


@users_app.command("create")
def users_create(
    email: Email,
    project: Project,
    role: RoleOption = "admin",
    password_stdin: PasswordStdin = False,
    generate: Generate = False,
) -> None:
    """Create an account with a role in PROJECT (the first admin of a project starts here)."""
    from closedloop.store.users import Role, Users

    password, shown = _password(password_stdin, generate)
    with _runtime() as runtime:
        project_id = _project_id(runtime, project)
        try:
            parsed = Role.parse(role)
            store = Users(runtime.engine)
            user = store.create(email, password)
            store.grant(user.email, project_id, parsed)
        except ClosedLoopError as exc:
            field = getattr(exc, "field", None)
            text = escape(str(exc))
            raise _fail(f"--{field}: {text}" if field in ("role", "password") else text) from exc
    console.print(f"created [bold]{escape(user.email)}[/] ({parsed.value} of {escape(project)})")
    if shown:
        console.print(f"password (shown once): [bold]{password}[/]", highlight=False)
    console.print("sign in at http://HOST:PORT/ui/ once `closedloop serve` runs")


@users_app.command("list")
def users_list() -> None:
    """Every account with its roles."""
    from closedloop.store.users import Users

    with _runtime() as runtime:
        found = Users(runtime.engine).all()
    table = Table("email", "roles", "state")
    for u in found:
        roles = ", ".join(f"{m.project}: {m.role.value}" for m in u.memberships)
        table.add_row(escape(u.email), roles or "—", "disabled" if u.disabled else "active")
    console.print(table)


@users_app.command("grant")
def users_grant(email: Email, project: Project, role: RoleOption) -> None:
    """Give an existing account a role in PROJECT (replacing its role there)."""
    from closedloop.store.users import Role, Users

    with _runtime() as runtime:
        project_id = _project_id(runtime, project)
        try:
            parsed = Role.parse(role)
            Users(runtime.engine).grant(email, project_id, parsed)
        except ClosedLoopError as exc:
            raise _fail(escape(str(exc))) from exc
    console.print(f"{escape(email)} is now {parsed.value} of {escape(project)}")


@users_app.command("revoke")
def users_revoke(email: Email, project: Project) -> None:
    """Remove an account's role in PROJECT."""
    from closedloop.store.users import Users

    with _runtime() as runtime:
        project_id = _project_id(runtime, project)
        try:
            Users(runtime.engine).revoke(email, project_id)
        except ClosedLoopError as exc:
            raise _fail(escape(str(exc))) from exc
    console.print(f"{escape(email)} has no role in {escape(project)} any more")


@users_app.command("password")
def users_password(
    email: Email,
    password_stdin: PasswordStdin = False,
    generate: Generate = False,
) -> None:
    """Set a new password (every session of the account ends)."""
    from closedloop.store.users import Users

    password, shown = _password(password_stdin, generate)
    with _runtime() as runtime:
        try:
            Users(runtime.engine).set_password(email, password)
        except ClosedLoopError as exc:
            raise _fail(escape(str(exc))) from exc
    console.print(f"the password of {escape(email)} is changed; its sessions have ended")
    if shown:
        console.print(f"password (shown once): [bold]{password}[/]", highlight=False)


@users_app.command("disable")
def users_disable(
    email: Email,
    enable: Annotated[bool, typer.Option("--enable", help="Enable the account again.")] = False,
) -> None:
    """Disable an account (its sessions end at once), or enable it again with --enable."""
    from closedloop.store.users import Users

    with _runtime() as runtime:
        try:
            Users(runtime.engine).set_disabled(email, not enable)
        except ClosedLoopError as exc:
            raise _fail(escape(str(exc))) from exc
    console.print(f"{escape(email)} is {'enabled' if enable else 'disabled'}")
