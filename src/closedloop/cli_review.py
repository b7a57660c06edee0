"""Commands of the review queue and the knowledge base: ``closedloop review ...`` and
``closedloop kb ...`` (registered on the ``closedloop`` command by :mod:`cli`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from closedloop.cli import _fail, app, console
from closedloop.cli_storage import _project_id, _runtime
from closedloop.errors import ClosedLoopError

__all__: list[str] = []

review_app = typer.Typer(help="The human review queue.", no_args_is_help=True)
kb_app = typer.Typer(
    help="The knowledge base and the documents flagged for re-indexing.", no_args_is_help=True
)
app.add_typer(review_app, name="review")
app.add_typer(kb_app, name="kb")

Project = Annotated[str, typer.Option(help="Project name.")]
Reviewer = Annotated[str, typer.Option(help="Who reviews (a name or an email).")]


def _show(task: dict[str, object]) -> None:
    console.print_json(json.dumps(task))


@review_app.command("list")
def review_list(
    project: Project,
    state: Annotated[str | None, typer.Option(help="open, done or skipped.")] = None,
    assignee: Annotated[str | None, typer.Option(help="Only this reviewer's tasks.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Most tasks shown.")] = 100,
) -> None:
    """Review tasks in queue order (highest priority, oldest first)."""
    from closedloop.act import review

    with _runtime() as runtime:
        try:
            found = review.tasks(
                runtime.engine,
                _project_id(runtime, project),
                state=state,
                assignee=assignee,
                limit=limit,
            )
        except ClosedLoopError as exc:
            raise _fail(f"--{getattr(exc, 'field', None) or 'state'}: {exc}") from exc
    table = Table("id", "priority", "state", "assignee", "interaction", "reason")
    for t in found:
        table.add_row(
            str(t.id), str(t.priority), t.state, t.assignee or "", t.interaction_id or "", t.reason
        )
    console.print(table)


@review_app.command("next")
def review_next(project: Project, reviewer: Reviewer) -> None:
    """Claim the next task and show it with its interaction."""
    from closedloop.act import review
    from closedloop.store import queries

    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        try:
            task = review.next_task(runtime.engine, pid, reviewer=reviewer)
        except ClosedLoopError as exc:
            raise _fail(f"--reviewer: {exc}") from exc
        if task is None:
            console.print("nothing to review")
            return
        out = task.to_json()
        if task.interaction_id is not None:
            with runtime.engine.connect() as conn:
                try:
                    out["interaction"] = queries.get_interaction(conn, pid, task.interaction_id)
                except ClosedLoopError:
                    out["interaction"] = None
    _show(out)


@review_app.command("answer")
def review_answer(
    task_id: Annotated[int, typer.Argument(help="The task's id.")],
    project: Project,
    reviewer: Reviewer,
    label: Annotated[str | None, typer.Option(help="A label (category).")] = None,
    rating: Annotated[float | None, typer.Option(help="A rating on --scale.")] = None,
    scale: Annotated[tuple[float, float], typer.Option(help="The rating's scale: MIN MAX.")] = (
        1.0,
        5.0,
    ),
    correction: Annotated[str | None, typer.Option(help="What the answer should be.")] = None,
    comment: Annotated[str | None, typer.Option(help="A note.")] = None,
) -> None:
    """Answer a task: it becomes reviewer feedback on its interaction."""
    from closedloop.act import review

    with _runtime() as runtime:
        try:
            task = review.answer(
                runtime,
                _project_id(runtime, project),
                task_id,
                reviewer=reviewer,
                label=label,
                rating=rating,
                rating_scale=scale,
                correction=correction,
                comment=comment,
            )
        except review.TaskClosed as exc:
            raise _fail(exc) from exc
        except ClosedLoopError as exc:
            field = getattr(exc, "field", None)
            raise _fail(f"--{field}: {exc}" if field else exc) from exc
    console.print(f"task {task.id} answered: feedback {task.feedback_id}")


@review_app.command("skip")
def review_skip(
    task_id: Annotated[int, typer.Argument(help="The task's id.")],
    project: Project,
    reviewer: Annotated[str | None, typer.Option(help="Who skips it.")] = None,
) -> None:
    """Skip a task: it leaves the queue unanswered."""
    from closedloop.act import review

    with _runtime() as runtime:
        try:
            review.skip(runtime.engine, _project_id(runtime, project), task_id, reviewer=reviewer)
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    console.print(f"task {task_id} skipped")


@review_app.command("add")
def review_add(
    interaction_id: Annotated[str, typer.Argument(help="The interaction to review.")],
    project: Project,
    priority: Annotated[int, typer.Option(help="Higher comes first.")] = 0,
    reason: Annotated[str, typer.Option(help="Why it needs a human.")] = "",
) -> None:
    """Queue a task on an interaction (one open task per interaction)."""
    from closedloop.act import review
    from closedloop.store import queries

    with _runtime() as runtime:
        pid = _project_id(runtime, project)
        try:
            with runtime.engine.connect() as conn:
                queries.get_interaction(conn, pid, interaction_id)
            task_id = review.create_task(
                runtime.engine, pid, interaction_id=interaction_id, priority=priority, reason=reason
            )
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    console.print(f"task {task_id} open on {interaction_id}")


@kb_app.command("add")
def kb_add(
    query: Annotated[str, typer.Argument(help="What users ask.")],
    answer: Annotated[str, typer.Argument(help="The answer to give.")],
    project: Project,
) -> None:
    """Add an entry by hand."""
    from closedloop.act import knowledge

    with _runtime() as runtime:
        try:
            entry_id = knowledge.add_entry(
                runtime.engine,
                runtime.embedder(),
                _project_id(runtime, project),
                query=query,
                answer=answer,
                source="manual",
            )
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    console.print(f"entry {entry_id} added")


@kb_app.command("recall")
def kb_recall(
    query: Annotated[str, typer.Argument(help="What to look up.")],
    project: Project,
    k: Annotated[int, typer.Option(min=1, max=50, help="How many entries.")] = 3,
) -> None:
    """The entries closest to a query, best first."""
    from closedloop.act import knowledge

    with _runtime() as runtime:
        try:
            found = knowledge.recall(
                runtime.engine, runtime.embedder(), _project_id(runtime, project), query, k=k
            )
        except ClosedLoopError as exc:
            raise _fail(exc) from exc
    table = Table("id", "score", "query", "answer", "source")
    for r in found:
        table.add_row(str(r.id), f"{r.score:.3f}", r.query, r.answer, r.source)
    console.print(table)


@kb_app.command("list")
def kb_list(
    project: Project,
    limit: Annotated[int, typer.Option(min=1, help="Most entries shown.")] = 100,
) -> None:
    """Active entries, newest first."""
    from closedloop.act import knowledge

    with _runtime() as runtime:
        found = knowledge.entries(runtime.engine, _project_id(runtime, project), limit=limit)
    table = Table("id", "source", "query", "answer", "created")
    for e in found:
        table.add_row(str(e.id), e.source, e.query, e.answer, e.created_at.isoformat())
    console.print(table)


@kb_app.command("flags")
def kb_flags(
    project: Project,
    state: Annotated[str | None, typer.Option(help="flagged, notified or reindexed.")] = None,
) -> None:
    """Documents flagged for re-indexing, most negatives first."""
    from closedloop.act import reindex

    with _runtime() as runtime:
        try:
            found = reindex.flags(runtime.engine, _project_id(runtime, project), state=state)
        except ClosedLoopError as exc:
            raise _fail(f"--state: {exc}") from exc
    table = Table("document", "negatives", "state", "examples", "last flagged")
    for f in found:
        examples = ", ".join(f["examples"])
        table.add_row(f["doc_id"], str(f["negatives"]), f["state"], examples, f["last_flagged_at"])
    console.print(table)
