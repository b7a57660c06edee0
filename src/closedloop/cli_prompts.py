"""``closedloop prompts``: the prompt registry and its A/B tests (registered on the
``closedloop`` command by :mod:`cli`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from closedloop.cli import _fail, app, console
from closedloop.cli_storage import _project_id, _runtime
from closedloop.errors import ClosedLoopError

__all__: list[str] = []

prompts_app = typer.Typer(help="Prompt versions, labels and A/B tests.", no_args_is_help=True)
app.add_typer(prompts_app, name="prompts")

Project = Annotated[str, typer.Option(help="Project name.")]
Json = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _print_test(test: dict[str, Any]) -> None:
    evidence = test.get("evidence") or {}
    arms = evidence.get("arms", {})
    counts = ", ".join(f"{a} n={v['n']} mean={v['mean']}" for a, v in arms.items()) or "no data"
    console.print(
        f"test {test['id']}: v{test['control_version']} vs v{test['candidate_version']} "
        f"on {test['share']:.0%}, {test['state']}; {counts}; "
        f"p={evidence.get('p_value', 1.0):.3g}, decision {evidence.get('decision', 'continue')}",
        highlight=False,
    )


@prompts_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The prompt's name.")],
    project: Project,
    template: Annotated[str | None, typer.Option(help="The template text.")] = None,
    template_file: Annotated[
        Path | None, typer.Option(help="A file holding the template.", exists=True, dir_okay=False)
    ] = None,
    label: Annotated[str | None, typer.Option(help="Also point this label at it.")] = None,
) -> None:
    """Store a new version of NAME (the first version becomes production)."""
    from closedloop.act.prompts import create_version

    if (template is None) == (template_file is None):
        raise _fail("give exactly one of --template or --template-file")
    text = template if template is not None else Path(str(template_file)).read_text("utf-8")
    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        try:
            version = create_version(runtime.engine, pid, name, text, label=label)
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    console.print(f"{name} v{version.version} stored")


@prompts_app.command("list")
def list_(project: Project, as_json: Json = False) -> None:
    """Every prompt with its labels and latest version."""
    from closedloop.act.prompts import names

    with _runtime() as runtime:
        found = names(runtime.engine, _project_id(runtime, project))
    if as_json:
        typer.echo(json.dumps(found))
        return
    table = Table("name", "latest", "labels")
    for row in found:
        labels = ", ".join(f"{k}=v{v}" for k, v in sorted(row["labels"].items()))
        table.add_row(row["name"], str(row["latest_version"]), labels)
    console.print(table)


@prompts_app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="The prompt's name.")],
    project: Project,
    as_json: Json = False,
) -> None:
    """NAME's versions, labels and A/B tests with their evidence."""
    from closedloop.act.ab import list_tests
    from closedloop.act.prompts import labels, versions

    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        try:
            found = versions(runtime.engine, pid, name)
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
        tags = labels(runtime.engine, pid, name)
        tests = list_tests(runtime.engine, pid, name)
    if not found:
        raise _fail(f"no prompt {name!r} in project {project!r}; see `closedloop prompts list`")
    if as_json:
        out = {"labels": tags, "versions": [v.to_json() for v in found], "tests": tests}
        typer.echo(json.dumps(out))
        return
    table = Table("version", "source", "parent", "examples", "labels", "created")
    for v in found:
        at = ", ".join(k for k, n in sorted(tags.items()) if n == v.version)
        created = v.created_at.isoformat(timespec="seconds") if v.created_at else ""
        table.add_row(
            str(v.version), v.source, str(v.parent_version or ""), str(len(v.examples)), at, created
        )
    console.print(table)
    for test in tests:
        _print_test(test)


@prompts_app.command("label")
def label(
    name: Annotated[str, typer.Argument(help="The prompt's name.")],
    label: Annotated[str, typer.Argument(help="production, candidate, or your own.")],
    version: Annotated[int, typer.Argument(help="The version it points at.", min=1)],
    project: Project,
) -> None:
    """Point LABEL of NAME at VERSION."""
    from closedloop.act.prompts import set_label

    with _runtime() as runtime:
        try:
            set_label(runtime.engine, _project_id(runtime, project), name, label, version)
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    console.print(f"{name}: {label} -> v{version}")


@prompts_app.command("candidate")
def candidate(
    name: Annotated[str, typer.Argument(help="The prompt's name.")],
    project: Project,
    issue: Annotated[int | None, typer.Option(help="Learn from this issue's corrections.")] = None,
    share: Annotated[float, typer.Option(help="Traffic share of the candidate.")] = 0.2,
    max_examples: Annotated[int, typer.Option(help="Examples at most.", min=1)] = 8,
) -> None:
    """Build a candidate of NAME from corrections and start its A/B test."""
    from closedloop.act.ab import start_test
    from closedloop.act.candidates import build_candidate

    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        if not 0 < share <= runtime.settings.ab_max_share:
            raise _fail(f"--share must be above 0 and at most {runtime.settings.ab_max_share}")
        try:
            built = build_candidate(
                runtime.engine, pid, name, issue_id=issue, max_examples=max_examples
            )
            test = start_test(
                runtime.engine, pid, name, built.version, share=share, settings=runtime.settings
            )
        except ClosedLoopError as exc:
            message = str(exc).replace("issue_id", "--issue")
            raise _fail(message) from exc
    console.print(f"{name} v{built.version} with {len(built.examples)} examples")
    _print_test(test)


def _end(name: str, project: str, verb: str) -> None:
    from closedloop.act import ab

    with _runtime() as runtime:
        try:
            act = ab.promote if verb == "promote" else ab.rollback
            test = act(runtime.engine, _project_id(runtime, project), name)
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    _print_test(test)


@prompts_app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="The prompt's name.")], project: Project
) -> None:
    """Make the running test's candidate of NAME production now."""
    _end(name, project, "promote")


@prompts_app.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="The prompt's name.")], project: Project
) -> None:
    """End NAME's running test and keep production."""
    _end(name, project, "rollback")


@prompts_app.command("evaluate")
def evaluate(
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
) -> None:
    """Evaluate every running A/B test now (the worker does it every
    CLOSEDLOOP_AB_INTERVAL_SECONDS)."""
    from closedloop.act.ab import ABEvaluator

    with _runtime() as runtime:
        pid = _project_id(runtime, project) if project else None
        stats = ABEvaluator(runtime.engine, runtime.settings).run(pid)
    console.print(
        f"{stats.tests} tests evaluated: {stats.promoted} promoted, {stats.rolled_back} rolled "
        f"back, {stats.stopped} stopped as inconclusive"
    )
