"""The review queue, worked by keyboard: the signed-in reviewer is handed the next task (claimed
safely by :func:`closedloop.act.review.next_task`) and answers it with a label, a rating, a
correction and a comment, or skips it. An answer becomes reviewer feedback through the one
ingest path (:func:`closedloop.act.review.answer`), exactly as the API's answer does."""

from __future__ import annotations

import json
from collections import Counter
from typing import Annotated, Any
from urllib.parse import quote

import sqlalchemy as sa
from fastapi import APIRouter, Depends, Form, Path, Request
from starlette.responses import RedirectResponse, Response

from closedloop.act import review
from closedloop.errors import ActionError, ConfigError, NotFound
from closedloop.events import LIMITS
from closedloop.ingest.deps import get_runtime
from closedloop.store import models, queries
from closedloop.store.db import utc
from closedloop.store.users import Role
from closedloop.ui.render import render
from closedloop.ui.session import Viewer, acting, reviewer_page

__all__ = ["router"]

router = APIRouter()

TaskId = Annotated[int, Path(ge=1, le=2**62)]
Reviewing = Annotated[Viewer, Depends(acting(Role.REVIEWER))]
#: The fixed messages a ``?done=`` code maps to (free text is never reflected).
DONE = {
    "answered": (
        "ok",
        "Answered: the answer is stored as reviewer feedback. Here is the next task.",
    ),
    "skipped": ("ok", "Skipped: the task left the queue unanswered. Here is the next task."),
    "empty": ("error", "Give a label, a rating or a correction before answering (or skip)."),
}
#: Quick labels always offered (the keys g and b pick the first two).
QUICK = ("good", "bad")
_RECENT_LABELS = 8


def _queue(v: Viewer) -> str:
    return f"/ui/p/{quote(v.project, safe='')}/review"


def _counts(conn: sa.Connection, project_id: int) -> dict[str, int]:
    t = models.review_tasks
    rows = conn.execute(
        sa.select(t.c.state, sa.func.count())
        .where(t.c.project_id == project_id)
        .group_by(t.c.state)
    )
    counts = {"open": 0, "done": 0, "skipped": 0}
    counts.update({str(state): int(n) for state, n in rows})
    return counts


def _labels(conn: sa.Connection, project_id: int) -> list[str]:
    """The quick labels, then the labels most used in the latest labelled feedback."""
    f = models.feedback
    recent = conn.execute(
        sa.select(f.c.label)
        .where(f.c.project_id == project_id, f.c.label.is_not(None))
        .order_by(f.c.ts.desc())
        .limit(300)
    ).scalars()
    seen = [label for label, _ in Counter(recent).most_common(_RECENT_LABELS)]
    return list(dict.fromkeys([*QUICK, *seen]))[: _RECENT_LABELS + len(QUICK)]


def _recent(conn: sa.Connection, project_id: int) -> list[dict[str, Any]]:
    """The latest answered or skipped tasks, newest first."""
    t = models.review_tasks
    rows = conn.execute(
        sa.select(t)
        .where(t.c.project_id == project_id, t.c.state.in_(("done", "skipped")))
        .order_by(t.c.answered_at.desc(), t.c.id.desc())
        .limit(15)
    )
    return [
        {
            "id": int(row.id),
            "interaction_id": row.interaction_id,
            "state": row.state,
            "by": row.answered_by,
            "answer": json.loads(row.answer) if row.answer else {},
            "when": utc(row.answered_at),
        }
        for row in rows
    ]


def _messages(interaction: dict[str, Any] | None) -> list[dict[str, str]]:
    """The interaction's input as chat turns (a plain string is one user turn)."""
    if interaction is None:
        return []
    raw = interaction.get("input")
    if isinstance(raw, list):
        return [
            {"role": str(m.get("role", "user")), "content": str(m.get("content") or "")}
            for m in raw
            if isinstance(m, dict)
        ]
    return [{"role": "user", "content": "" if raw is None else str(raw)}]


@router.get("/p/{project}/review")
def queue_page(
    request: Request, v: Annotated[Viewer, Depends(reviewer_page)], done: str = ""
) -> Response:
    """The queue's counts, the task claimed for the viewer, and the latest answers."""
    runtime = get_runtime(request)
    task = review.next_task(runtime.engine, v.project_id, reviewer=v.email)
    interaction: dict[str, Any] | None = None
    with runtime.engine.connect() as conn:
        if task is not None and task.interaction_id is not None:
            try:
                interaction = queries.get_interaction(conn, v.project_id, task.interaction_id)
            except NotFound:  # moved to the lake, or erased
                interaction = None
        counts = _counts(conn, v.project_id)
        labels = _labels(conn, v.project_id)
        recent = _recent(conn, v.project_id)
    return render(
        request,
        "review.html",
        v,
        active="review",
        title="Review queue",
        task=task,
        interaction=interaction,
        messages=_messages(interaction),
        counts=counts,
        labels=labels,
        recent=recent,
        notice=DONE.get(done),
        queue=_queue(v),
    )


def _closed(request: Request, v: Viewer, exc: ActionError) -> Response:
    return render(
        request,
        "error.html",
        v,
        status=409,
        active="review",
        title="This task is closed",
        detail=f"{exc}. Someone answered or skipped it already; go back to the queue for "
        "the next task.",
        signed_in=True,
    )


def _optional(value: str) -> str | None:
    value = value.strip()
    return value or None


@router.post("/p/{project}/review/{task_id}/answer")
def answer_task(
    request: Request,
    v: Reviewing,
    task_id: TaskId,
    label: Annotated[str, Form(max_length=LIMITS.name_length)] = "",
    rating: Annotated[str, Form(max_length=8)] = "",
    correction: Annotated[str, Form(max_length=LIMITS.text_length)] = "",
    original: Annotated[str, Form(max_length=LIMITS.text_length)] = "",
    comment: Annotated[str, Form(max_length=LIMITS.text_length)] = "",
) -> Response:
    """Answer a task; the correction counts only when it differs from the output shown."""
    values = {"label": label, "correction": correction, "comment": comment}
    for field, value in values.items():
        if "\x00" in value:
            raise ConfigError(f"{field} contains a NUL character; remove it", field=field)
    score: float | None = None
    if rating.strip():
        if rating.strip() not in {"1", "2", "3", "4", "5"}:
            raise ConfigError("rating: a whole number from 1 to 5", field="rating")
        score = float(rating)
    fixed = correction if correction.strip() and correction.strip() != original.strip() else None
    runtime = get_runtime(request)
    review.get_task(runtime.engine, v.project_id, task_id)  # 404 when not this project's
    if _optional(label) is None and score is None and fixed is None:
        return RedirectResponse(f"{_queue(v)}?done=empty", status_code=303)
    try:
        review.answer(
            runtime,
            v.project_id,
            task_id,
            reviewer=v.email,
            label=_optional(label),
            rating=score,
            correction=fixed,
            comment=_optional(comment),
        )
    except ActionError as exc:  # TaskClosed, or the answer could not be recorded
        return _closed(request, v, exc)
    return RedirectResponse(f"{_queue(v)}?done=answered", status_code=303)


@router.post("/p/{project}/review/{task_id}/skip")
def skip_task(request: Request, v: Reviewing, task_id: TaskId) -> Response:
    """Skip a task: it leaves the queue unanswered."""
    try:
        review.skip(get_runtime(request).engine, v.project_id, task_id, reviewer=v.email)
    except ActionError as exc:  # TaskClosed
        return _closed(request, v, exc)
    return RedirectResponse(f"{_queue(v)}?done=skipped", status_code=303)
