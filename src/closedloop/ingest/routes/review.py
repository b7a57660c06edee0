"""The human review queue (secret key): list, queue, claim, answer and skip tasks.

An answer becomes reviewer feedback on the task's interaction, through the one ingest path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, overload

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from closedloop.act import review
from closedloop.errors import ActionError, ConfigError, NotFound
from closedloop.events import LIMITS
from closedloop.ingest.deps import get_runtime, require_secret_key
from closedloop.ingest.problems import problem
from closedloop.store import queries
from closedloop.types import ProjectKey

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["review"])

Key = Annotated[ProjectKey, Depends(require_secret_key)]
TaskId = Annotated[int, Path(ge=1, le=2**62)]
Name = Annotated[str, Field(min_length=1, max_length=128)]
Id = Annotated[str, Field(min_length=1, max_length=LIMITS.id_length)]
Text = Annotated[str, Field(max_length=LIMITS.text_length)]
State = Literal["open", "done", "skipped"]
_CONFLICT: dict[int | str, dict[str, Any]] = {
    409: {
        "description": "The task was already answered or skipped (or, rarely, the answer "
        "could not be recorded: answer again)."
    }
}


class NewTask(BaseModel):
    """A task to queue on one interaction."""

    model_config = ConfigDict(extra="forbid")

    interaction_id: Id
    priority: int = Field(default=0, ge=-(2**31), lt=2**31)
    reason: Annotated[str, Field(max_length=2000)] = ""


class Reviewer(BaseModel):
    """Who asks."""

    model_config = ConfigDict(extra="forbid")

    reviewer: Name


class Rating(BaseModel):
    """A rating on its scale (default 1-5)."""

    model_config = ConfigDict(extra="forbid")

    value: float = Field(ge=-1e12, le=1e12)
    scale: tuple[float, float] = (1.0, 5.0)


class Answer(BaseModel):
    """A reviewer's answer: at least one of label, rating or correction."""

    model_config = ConfigDict(extra="forbid")

    reviewer: Name
    label: Annotated[str, Field(min_length=1, max_length=LIMITS.name_length)] | None = None
    rating: Rating | None = None
    correction: Text | None = None
    comment: Text | None = None


def _conflict(exc: ActionError, field: str) -> Response:
    """An :class:`ActionError` (the app maps none) as a 409 problem naming ``field``."""
    return problem(409, "Conflict", str(exc), field=field)


def _no_nul(**values: str | None) -> None:
    for field, value in values.items():
        if value is not None and "\x00" in value:
            raise ConfigError(f"{field} contains a NUL character; remove it", field=field)


@router.get("/review/tasks", summary="Review tasks in queue order")
def list_tasks(
    request: Request,
    key: Key,
    state: Annotated[State | None, Query(description="Only this state.")] = None,
    assignee: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    _no_nul(assignee=assignee)
    found = review.tasks(
        get_runtime(request).engine, key.project_id, state=state, assignee=assignee, limit=limit
    )
    return {"tasks": [t.to_json() for t in found]}


@router.post(
    "/review/tasks",
    status_code=201,
    summary="Queue a review task on an interaction",
    description="An interaction with an open task keeps it: its id is answered.",
    responses={404: {"description": "No such interaction in this project."}},
)
def create_task(request: Request, key: Key, body: NewTask) -> Any:
    _no_nul(interaction_id=body.interaction_id, reason=body.reason)
    engine = get_runtime(request).engine
    with engine.connect() as conn:
        queries.get_interaction(conn, key.project_id, body.interaction_id)  # 404 if not ours
    try:
        task_id = review.create_task(
            engine,
            key.project_id,
            interaction_id=body.interaction_id,
            priority=body.priority,
            reason=body.reason,
        )
    except ActionError as exc:
        return _conflict(exc, "interaction_id")
    return review.get_task(engine, key.project_id, task_id).to_json()


@overload
def _who(key: ProjectKey, named: str) -> str: ...
@overload
def _who(key: ProjectKey, named: None) -> str | None: ...
def _who(key: ProjectKey, named: str | None) -> str | None:
    """Who answers: a signed-in dashboard user is themself, whatever the body names (a key
    stands for a service that names its reviewers)."""
    return key.user or named


@router.post(
    "/review/next",
    summary="Claim the next task",
    description="The open task of highest priority, oldest first, that no other reviewer "
    "holds, claimed for `reviewer`, with its interaction (input, output, feedback so far). "
    "204 when the queue is empty.",
    responses={204: {"description": "Nothing to review."}},
)
def next_task(request: Request, key: Key, body: Reviewer) -> Any:
    _no_nul(reviewer=body.reviewer)
    engine = get_runtime(request).engine
    task = review.next_task(engine, key.project_id, reviewer=_who(key, body.reviewer))
    if task is None:
        return Response(status_code=204)
    out = task.to_json()
    out["interaction"] = None
    if task.interaction_id is not None:
        with engine.connect() as conn:
            try:
                out["interaction"] = queries.get_interaction(
                    conn, key.project_id, task.interaction_id
                )
            except NotFound:  # moved to the lake, or erased
                pass
    return out


@router.post(
    "/review/tasks/{task_id}/answer",
    summary="Answer a task (becomes reviewer feedback)",
    description="The answer is ingested as feedback with `source: reviewer` on the task's "
    "interaction (redacted, stored and enriched like any feedback); the task is `done` and "
    "keeps the feedback's id.",
    responses=_CONFLICT,
)
async def answer_task(request: Request, key: Key, task_id: TaskId, body: Answer) -> Any:
    _no_nul(
        reviewer=body.reviewer, label=body.label, correction=body.correction, comment=body.comment
    )
    runtime = get_runtime(request)
    rating = body.rating

    def run() -> review.Task:
        return review.answer(
            runtime,
            key.project_id,
            task_id,
            reviewer=_who(key, body.reviewer),
            label=body.label,
            rating=rating.value if rating is not None else None,
            rating_scale=rating.scale if rating is not None else (1.0, 5.0),
            correction=body.correction,
            comment=body.comment,
        )

    try:
        task = await run_in_threadpool(run)
    except ActionError as exc:  # TaskClosed, or the answer could not be recorded
        return _conflict(exc, "task_id")
    return task.to_json()


@router.post(
    "/review/tasks/{task_id}/skip",
    summary="Skip a task (it leaves the queue unanswered)",
    responses=_CONFLICT,
)
def skip_task(request: Request, key: Key, task_id: TaskId, body: Reviewer | None = None) -> Any:
    named = body.reviewer if body is not None else None
    _no_nul(reviewer=named)
    reviewer = _who(key, named)
    try:
        task = review.skip(get_runtime(request).engine, key.project_id, task_id, reviewer=reviewer)
    except ActionError as exc:  # TaskClosed
        return _conflict(exc, "task_id")
    return task.to_json()
