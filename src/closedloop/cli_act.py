"""Commands of the act stage's rules: check, apply, list and test rules, run them now, and
report each firing's effect (registered on the ``closedloop`` command by :mod:`cli`)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from closedloop.cli import _fail, app, console
from closedloop.cli_storage import _project_id, _runtime
from closedloop.errors import ClosedLoopError

__all__: list[str] = []

rules_app = typer.Typer(help="Rules: conditions on metrics, drift, issues or feedback → actions.")
actions_app = typer.Typer(help="What rules did, and whether it helped.")
app.add_typer(rules_app, name="rules")
app.add_typer(actions_app, name="actions")

Project = Annotated[str, typer.Option(help="The project (default: default).")]
RulesFile = Annotated[Path, typer.Argument(help="A YAML file holding `rules:`.")]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _fail(f"cannot read the rules file {str(path)!r}: {exc.strerror}") from exc


def _parse(text: str, path: Path, kinds: dict[str, Any]) -> Any:
    from closedloop.act.rules import RuleError, parse_rules

    try:
        return parse_rules(text, kinds=kinds)
    except RuleError as exc:
        for line, field, message in exc.problems:
            where = f"{path}:{line}" if line else str(path)
            console.print(f"[red]{where}[/]: {field}: {message}", highlight=False)
        raise typer.Exit(code=1) from exc


@rules_app.command("check")
def rules_check(path: RulesFile) -> None:
    """Validate a rules file: every problem with its line (exit 1 if any)."""
    from closedloop.act.actions import action_kinds

    specs = _parse(_read(path), path, action_kinds())
    console.print(f"{path}: {len(specs)} rules valid: {', '.join(s.name for s in specs)}")


@rules_app.command("apply")
def rules_apply(path: RulesFile, project: Project = "default") -> None:
    """Make the project's file-declared rules exactly those of the file."""
    from closedloop.act.rules import apply_rules

    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        specs = _parse(_read(path), path, runtime.action_kinds())
        done = apply_rules(runtime.engine, pid, specs)
    console.print(
        f"applied {len(done['applied'])} rules"
        + (f"; deleted {', '.join(done['deleted'])}" if done["deleted"] else "")
    )


@rules_app.command("list")
def rules_list(project: Project = "default") -> None:
    """The project's rules."""
    from closedloop.act.rules import list_rules

    with _runtime() as runtime:
        rules = list_rules(runtime.engine, _project_id(runtime, project))
    table = Table("name", "when", "actions", "cooldown", "mode", "source")
    for r in rules:
        spec = r.spec
        when = spec.condition.model_dump(exclude={"kind"}, exclude_defaults=True)
        table.add_row(
            spec.name,
            f"{spec.condition.kind}: {json.dumps(when, default=str)}",
            ", ".join(a.type for a in spec.actions),
            "default" if spec.cooldown_seconds is None else f"{spec.cooldown_seconds:g}s",
            "off" if not spec.enabled else "dry run" if spec.dry_run else "live",
            r.source,
        )
    console.print(table)


@rules_app.command("test")
def rules_test(
    path: Annotated[
        Path | None, typer.Argument(help="A rules file to try (default: the stored rules).")
    ] = None,
    project: Project = "default",
    name: Annotated[str | None, typer.Option(help="Only this rule.")] = None,
) -> None:
    """What each rule would fire on the stored data now, and what its actions would do (dry
    runs: nothing is changed or sent)."""
    from closedloop.act.rules import StoredRule, list_rules

    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        if path is not None:
            now = dt.datetime.now(dt.UTC)
            specs = _parse(_read(path), path, runtime.action_kinds())
            rules = [
                StoredRule(
                    id=0,
                    project_id=pid,
                    spec=s,
                    source="file",
                    state={},
                    created_at=now,
                    updated_at=now,
                )
                for s in specs
            ]
        else:
            rules = list_rules(runtime.engine, pid)
        rules = [r for r in rules if name is None or r.spec.name == name]
        if not rules:
            raise _fail(
                f"no rule{' ' + repr(name) if name else 's'} to test; pass a file or --name"
            )
        engine = runtime.rule_engine()
        try:
            evaluations = [engine.evaluate(r) for r in rules]
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    for ev in evaluations:
        console.print(f"[bold]{ev.rule}[/]: {len(ev.triggers)} triggers")
        for t in ev.triggers[:20]:
            trig = t["trigger"]
            held = f" [yellow](held: {t['held']})[/]" if t["held"] else ""
            console.print(f"  {trig['kind']} on {trig['segment']}{held}", highlight=False)
            for a in t["actions"]:
                console.print(f"    would {a['action']}: {a['summary']}", highlight=False)
        if len(ev.triggers) > 20:
            console.print(f"  ... and {len(ev.triggers) - 20} more")


@rules_app.command("run")
def rules_run(
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
) -> None:
    """Evaluate the rules now and run what fires (the worker does it every
    CLOSEDLOOP_ACT_INTERVAL_SECONDS)."""
    with _runtime() as runtime:
        pid = _project_id(runtime, project) if project else None
        try:
            stats = runtime.rule_engine().run(pid)
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    if stats.skipped:
        console.print("another run holds the lock (a worker): nothing done; try again")
        return
    console.print(
        f"{stats.rules} rules: {stats.fired} fired ({stats.cooled} held by cooldown); "
        f"{stats.actions_ok} actions ok, {stats.actions_failed} failed"
    )


@actions_app.command("list")
def actions_list(
    project: Project = "default",
    rule: Annotated[str | None, typer.Option(help="Only this rule's firings.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
) -> None:
    """Recent firings and what their actions did."""
    from closedloop.act.rules import firings

    with _runtime() as runtime:
        rows = firings(runtime.engine, _project_id(runtime, project), rule, limit)
    table = Table("id", "fired at", "rule", "segment", "actions")
    for f in rows:
        acts = "; ".join(
            ("✓ " if a["ok"] else "✗ ") + f"{a['action']}: {a['summary']}" for a in f["actions"]
        )
        mode = " (dry run)" if f["dry_run"] else ""
        table.add_row(str(f["id"]), f["fired_at"][:19], f["rule"] + mode, f["segment"], acts)
    console.print(table)


def _fmt(est: dict[str, Any] | None) -> str:
    if not est or est.get("value") is None:
        return "—"
    low, high = est.get("low"), est.get("high")
    ci = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{est['value']:.3f}{ci} n={est.get('n', 0)}"


@actions_app.command("report")
def actions_report(
    project: Project = "default",
    rule: Annotated[str | None, typer.Option(help="Only this rule's firings.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 20,
    output: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Did each firing fix what triggered it? Before and after with 95 % intervals, against a
    control (which one is named)."""
    from closedloop.act.effect import effect_report, rule_summaries

    if output not in ("table", "json"):
        raise _fail("--format is table or json")
    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        rows = effect_report(runtime.engine, runtime.analytics(), pid, rule=rule, limit=limit)
    summaries = rule_summaries(rows)
    if output == "json":
        console.print_json(json.dumps({"firings": rows, "rules": summaries}, default=str))
        return
    table = Table("firing", "rule", "segment", "measure", "before", "after", "effect", "control")
    for r in rows:
        eff = "—" if r["effect"] is None else f"{r['effect']:+.3f}"
        if r["low"] is not None:
            eff += f" [{r['low']:+.3f}, {r['high']:+.3f}]"
        table.add_row(
            str(r["firing_id"]),
            r["rule"],
            r["segment"],
            r["measure"],
            _fmt(r["before"]["segment"]),
            _fmt(r["after"]["segment"]),
            f"{eff}\n{r['verdict']}",
            r["method"],
        )
    console.print(table)
    for s in summaries:
        ci = "" if s["low"] is None else f" [{s['low']:+.3f}, {s['high']:+.3f}]"
        console.print(
            f"{s['rule']}: {s['treated']} treated firings changed {s['treated_change']:+.3f}, "
            f"{s['held_out']} held out {s['held_out_change']:+.3f}: effect "
            f"{s['effect']:+.3f}{ci} ({s['verdict']}; control: the rule's hold-out)",
            highlight=False,
        )
