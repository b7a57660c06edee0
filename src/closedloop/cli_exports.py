"""``closedloop export``: dataset exports from the command line (registered on the
``closedloop`` command by :mod:`cli`). Run by the operator, it may write to any path."""

from __future__ import annotations

import datetime as dt
from typing import Annotated

import pydantic
import typer
from rich.table import Table

from closedloop.cli import _fail, app, console
from closedloop.cli_storage import _project_id, _runtime
from closedloop.errors import ClosedLoopError, ConfigError

__all__: list[str] = []

_KINDS = ("finetune", "dpo", "parquet")
# the option that sets each field of the export, for error messages
_OPTIONS = {
    "url": "--out",
    "validation_share": "--validation-share",
    "kind": "KIND",
    "issue_id": "--issue",
    "since": "--since",
    "until": "--until",
    "source": "--source",
}


@app.command("export")
def export(
    kind: Annotated[str, typer.Argument(help="finetune, dpo or parquet.")],
    project: Annotated[
        str | None, typer.Option(help="Project name (needed when there are several).")
    ] = None,
    since: Annotated[dt.datetime | None, typer.Option(help="From this UTC time.")] = None,
    until: Annotated[dt.datetime | None, typer.Option(help="Before this UTC time.")] = None,
    model: Annotated[str | None, typer.Option(help="Model NAME or NAME@VERSION.")] = None,
    prompt: Annotated[str | None, typer.Option(help="Prompt NAME or NAME@VERSION.")] = None,
    issue: Annotated[int | None, typer.Option(help="Only this issue's interactions.")] = None,
    source: Annotated[
        str, typer.Option(help="Whose feedback counts: user, reviewer, evaluator or any.")
    ] = "any",
    tag: Annotated[list[str] | None, typer.Option(help="Only with this tag; repeatable.")] = None,
    validation_share: Annotated[
        float, typer.Option(help="Share of rows in the validation split, in [0, 1].")
    ] = 0.1,
    include_positive: Annotated[
        bool, typer.Option(help="finetune: also well-rated answers without a correction.")
    ] = False,
    dedupe: Annotated[bool, typer.Option(help="Drop duplicate (prompt, target) pairs.")] = True,
    system: Annotated[str | None, typer.Option(help="System message for inputs with none.")] = None,
    out: Annotated[
        str | None,
        typer.Option(help="Folder or fsspec URL (s3://...); default <export_dir>/<project>/..."),
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Count the rows, write nothing.")] = False,
) -> None:
    """Export a dataset: chat fine-tuning JSONL (finetune), TRL preference pairs (dpo) or one
    Parquet row per interaction (parquet), split into train and validation. Texts are exported
    as stored, that is redacted."""
    from closedloop.act.datasets import ExportFilters, export_dataset

    if kind not in _KINDS:
        raise _fail(f"KIND must be one of {', '.join(_KINDS)}, not {kind!r}")
    if not 0.0 <= validation_share <= 1.0:
        raise _fail("--validation-share must lie in [0, 1]")
    model_name, _, model_version = (model or "").partition("@")
    prompt_name, _, prompt_version = (prompt or "").partition("@")
    try:
        filters = ExportFilters.model_validate(
            {
                "since": since,
                "until": until,
                "model": model_name or None,
                "model_version": model_version or None,
                "prompt": prompt_name or None,
                "prompt_version": prompt_version or None,
                "source": source,
                "issue_id": issue,
                "tags": tag or [],
            }
        )
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "since"
        raise _fail(f"{_OPTIONS.get(name, '--' + name)}: {first['msg']}") from None
    with _runtime() as runtime:
        if project is None:
            names = [p.name for p in runtime.projects.all()]
            if len(names) != 1:
                raise _fail(f"--project: name the project, one of {', '.join(names) or '(none)'}")
            project = names[0]
        pid = _project_id(runtime, project)
        settings = runtime.settings
        try:
            result = export_dataset(
                runtime.analytics(),
                pid,
                kind=kind,  # type: ignore[arg-type]  # checked above
                url=out,
                filters=filters,
                export_dir=settings.resolved_export_dir(),
                validation_share=validation_share,
                dedupe=dedupe,
                include_positive=include_positive,
                system=system,
                storage_options=settings.lake_options if out and "://" in out else None,
                dry_run=dry_run,
            )
        except ConfigError as exc:
            option = _OPTIONS.get(exc.field or "", exc.field or "")
            raise _fail(f"{option}: {exc}" if option else str(exc)) from exc
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    table = Table("split", "rows", "file")
    for split, rows in result.rows.items():
        table.add_row(split, str(rows), result.files.get(split, "-"))
    console.print(table)
    console.print(f"{result.total} {kind} rows from {result.users} users", highlight=False)
    if result.skipped:
        reasons = ", ".join(f"{n} {why}" for why, n in result.skipped.items())
        console.print(f"skipped: {reasons}", highlight=False)
    if dry_run:
        console.print("dry run: nothing written")
    elif not result.written:
        console.print("no rows to export: nothing written")
