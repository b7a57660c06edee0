"""The human review queue: tasks on interactions, claimed by reviewers, answered as feedback.

A task is ``open`` (``assignee`` set once a reviewer claims it), then ``done`` (answered) or
``skipped`` (left unanswered; it leaves the queue). An interaction has at most one open task.

A reviewer's answer becomes a ``feedback`` event with ``source="reviewer"`` on the task's
interaction, ingested through :meth:`closedloop.ingest.pipeline.Ingestor.ingest` - the one
ingest path - so it is redacted, stored and enriched like any other feedback. The task keeps
the feedback's id and, as its ``answer``, the fields of the stored (redacted) feedback.

:func:`next_task` is safe when reviewers ask at once: on PostgreSQL it takes the first free
row with ``FOR UPDATE SKIP LOCKED``; on SQLite one ``UPDATE ... RETURNING`` statement claims
it (SQLite runs one writer at a time).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import pydantic
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.act.actions import ActContext, ActionResult, Trigger
from closedloop.errors import ActionError, ConfigError, NotFound
from closedloop.events import encode
from closedloop.store import models
from closedloop.store.db import is_postgresql, utc, utcnow
from closedloop.types import ProjectKey

if TYPE_CHECKING:
    from closedloop.ingest.pipeline import Ingestor

__all__ = [
    "ReviewAction",
    "ReviewParams",
    "ReviewRuntime",
    "Task",
    "TaskClosed",
    "TaskState",
    "answer",
    "assign",
    "create_task",
    "get_task",
    "next_task",
    "skip",
    "tasks",
]

TaskState = Literal["open", "done", "skipped"]
_STATES = ("open", "done", "skipped")
_NAME = 128


class TaskClosed(ActionError):
    """The task is no longer open (answered or skipped): the HTTP API answers 409."""


class ReviewRuntime(Protocol):
    """What :func:`answer` needs of a :class:`~closedloop.runtime.Runtime`."""

    @property
    def engine(self) -> Engine: ...

    @property
    def ingestor(self) -> Ingestor: ...


@dataclass(frozen=True, kw_only=True)
class Task:
    """One review task."""

    id: int
    project_id: int
    interaction_id: str | None
    priority: int
    state: TaskState
    assignee: str | None
    reason: str
    answer: dict[str, Any] | None
    answered_by: str | None
    feedback_id: str | None
    firing_id: int | None
    created_at: dt.datetime
    updated_at: dt.datetime
    answered_at: dt.datetime | None

    def to_json(self) -> dict[str, Any]:
        """The task as the API answers it."""
        answered = self.answered_at.isoformat() if self.answered_at else None
        return {
            "id": self.id,
            "interaction_id": self.interaction_id,
            "priority": self.priority,
            "state": self.state,
            "assignee": self.assignee,
            "reason": self.reason,
            "answer": self.answer,
            "answered_by": self.answered_by,
            "feedback_id": self.feedback_id,
            "firing_id": self.firing_id,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "answered_at": answered,
        }


def _task(row: Any) -> Task:
    return Task(
        id=int(row.id),
        project_id=row.project_id,
        interaction_id=row.interaction_id,
        priority=row.priority,
        state=row.state,
        assignee=row.assignee,
        reason=row.reason,
        answer=json.loads(row.answer) if row.answer else None,
        answered_by=row.answered_by,
        feedback_id=row.feedback_id,
        firing_id=row.firing_id,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
        answered_at=utc(row.answered_at),
    )


def _name(field: str, value: str) -> str:
    """A reviewer or assignee name: 1-128 characters, no NUL."""
    value = value.strip()
    if not value or len(value) > _NAME or "\x00" in value:
        raise ConfigError(f"{field} must hold 1-{_NAME} characters (no NUL)", field=field)
    return value


def _lock_key(project_id: int, interaction_id: str) -> int:
    digest = hashlib.sha256(f"review:{project_id}:{interaction_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _open_task_id(conn: sa.Connection, project_id: int, interaction_id: str) -> int | None:
    t = models.review_tasks
    found = conn.execute(
        sa.select(t.c.id)
        .where(
            t.c.project_id == project_id,
            t.c.interaction_id == interaction_id,
            t.c.state == "open",
        )
        .order_by(t.c.id)
        .limit(1)
    ).scalar()
    return None if found is None else int(found)


def create_task(
    engine: Engine,
    project_id: int,
    *,
    interaction_id: str | None = None,
    priority: int = 0,
    reason: str = "",
    firing_id: int | None = None,
    assignee: str | None = None,
) -> int:
    """Queue a task; an interaction that already has an open task keeps it (its id is
    returned). Safe under concurrent calls: an advisory lock on PostgreSQL, one
    ``INSERT ... SELECT ... WHERE NOT EXISTS`` statement on SQLite."""
    if not -(2**31) <= priority < 2**31:
        raise ConfigError("priority must be a 32-bit integer", field="priority")
    if "\x00" in reason:
        raise ConfigError("reason contains a NUL character; remove it", field="reason")
    if assignee is not None:
        assignee = _name("assignee", assignee)
    t = models.review_tasks
    now = utcnow()
    values = {
        "project_id": project_id,
        "interaction_id": interaction_id,
        "firing_id": firing_id,
        "priority": priority,
        "assignee": assignee,
        "state": "open",
        "reason": reason,
        "created_at": now,
        "updated_at": now,
    }
    with engine.begin() as conn:
        if interaction_id is None:
            return int(conn.execute(t.insert().values(**values).returning(t.c.id)).scalar_one())
        if is_postgresql(engine):
            conn.execute(
                sa.select(sa.func.pg_advisory_xact_lock(_lock_key(project_id, interaction_id)))
            )
        names = list(values)
        fresh = sa.select(*(sa.literal(values[n], t.c[n].type) for n in names)).where(
            ~sa.exists().where(
                t.c.project_id == project_id,
                t.c.interaction_id == interaction_id,
                t.c.state == "open",
            )
        )
        conn.execute(t.insert().from_select(names, fresh))
        found = _open_task_id(conn, project_id, interaction_id)
    if found is None:  # pragma: no cover - the insert or an open task is always there
        raise ActionError("the review task could not be created; retry")
    return found


def get_task(engine: Engine, project_id: int, task_id: int) -> Task:
    """One task of the project (:class:`NotFound` otherwise)."""
    t = models.review_tasks
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(t).where(t.c.project_id == project_id, t.c.id == task_id)
        ).first()
    if row is None:
        raise NotFound(f"no review task {task_id} in this project")
    return _task(row)


def tasks(
    engine: Engine,
    project_id: int,
    *,
    state: str | None = None,
    assignee: str | None = None,
    limit: int = 100,
) -> list[Task]:
    """The project's tasks in queue order (highest priority, oldest first)."""
    if state is not None and state not in _STATES:
        raise ConfigError(f"state must be one of {', '.join(_STATES)}", field="state")
    t = models.review_tasks
    query = sa.select(t).where(t.c.project_id == project_id)
    if state is not None:
        query = query.where(t.c.state == state)
    if assignee is not None:
        query = query.where(t.c.assignee == _name("assignee", assignee))
    query = query.order_by(t.c.priority.desc(), t.c.created_at, t.c.id).limit(max(1, limit))
    with engine.connect() as conn:
        return [_task(r) for r in conn.execute(query)]


#: A claim nobody acted on for this long lapses: another reviewer may take the task (a
#: reviewer who opened the queue and walked away does not hold it for ever).
CLAIM_LAPSES = dt.timedelta(minutes=30)


def next_task(engine: Engine, project_id: int, *, reviewer: str) -> Task | None:
    """Claim the next task for ``reviewer``: the open one of highest priority, oldest first,
    that nobody else holds (one the reviewer already holds comes back; another's claim
    lapses after :data:`CLAIM_LAPSES`). ``None`` when the queue is empty."""
    reviewer = _name("reviewer", reviewer)
    t = models.review_tasks
    free = sa.and_(
        t.c.project_id == project_id,
        t.c.state == "open",
        sa.or_(
            t.c.assignee.is_(None),
            t.c.assignee == reviewer,
            t.c.updated_at < utcnow() - CLAIM_LAPSES,
        ),
    )
    first = (
        sa.select(t.c.id).where(free).order_by(t.c.priority.desc(), t.c.created_at, t.c.id).limit(1)
    )
    with engine.begin() as conn:
        if is_postgresql(engine):
            task_id = conn.execute(first.with_for_update(skip_locked=True)).scalar()
            if task_id is None:
                return None
            claim = t.update().where(t.c.id == task_id)
        else:
            claim = t.update().where(t.c.id == first.scalar_subquery(), free)
        row = conn.execute(
            claim.values(assignee=reviewer, updated_at=utcnow()).returning(*t.c)
        ).first()
    return None if row is None else _task(row)


def assign(engine: Engine, project_id: int, task_id: int, *, assignee: str | None) -> Task:
    """Give an open task to ``assignee`` (``None``: back to the queue)."""
    who = _name("assignee", assignee) if assignee is not None else None
    t = models.review_tasks
    with engine.begin() as conn:
        done = conn.execute(
            t.update()
            .where(t.c.project_id == project_id, t.c.id == task_id, t.c.state == "open")
            .values(assignee=who, updated_at=utcnow())
        ).rowcount
    if not done:
        _closed_or_missing(engine, project_id, task_id)
    return get_task(engine, project_id, task_id)


def skip(engine: Engine, project_id: int, task_id: int, *, reviewer: str | None = None) -> Task:
    """Close an open task without an answer (state ``skipped``)."""
    who = _name("reviewer", reviewer) if reviewer is not None else None
    t = models.review_tasks
    now = utcnow()
    with engine.begin() as conn:
        done = conn.execute(
            t.update()
            .where(t.c.project_id == project_id, t.c.id == task_id, t.c.state == "open")
            .values(state="skipped", answered_by=who, updated_at=now, answered_at=now)
        ).rowcount
    if not done:
        _closed_or_missing(engine, project_id, task_id)
    return get_task(engine, project_id, task_id)


def _closed_or_missing(engine: Engine, project_id: int, task_id: int) -> None:
    task = get_task(engine, project_id, task_id)  # NotFound when missing
    raise TaskClosed(f"review task {task_id} is {task.state}: only an open task can change")


def _project_key(conn: sa.Connection, project_id: int) -> ProjectKey:
    p = models.projects
    name = conn.execute(sa.select(p.c.name).where(p.c.id == project_id)).scalar()
    if name is None:
        raise NotFound(f"no project with id {project_id}")
    return ProjectKey(project_id=project_id, project_name=name, kind="secret", key_id=0)


def _feedback_body(
    interaction_id: str,
    reviewer: str,
    label: str | None,
    rating: tuple[float, float, float] | None,
    correction: str | None,
    comment: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "interaction_id": interaction_id,
        "source": "reviewer",
        "label": label,
        "correction": correction,
        "comment": comment,
    }
    if rating is not None:
        body.update(rating=rating[0], rating_min=rating[1], rating_max=rating[2])
    return {k: v for k, v in body.items() if v is not None}


def answer(
    runtime: ReviewRuntime,
    project_id: int,
    task_id: int,
    *,
    reviewer: str,
    label: str | None = None,
    rating: float | None = None,
    rating_scale: tuple[float, float] = (1.0, 5.0),
    correction: str | None = None,
    comment: str | None = None,
) -> Task:
    """Answer an open task: the answer is ingested as reviewer feedback on the task's
    interaction (redacted, stored, enriched like any feedback) and the task is ``done``.

    Raises :class:`ConfigError` (naming the field) for an empty or invalid answer,
    :class:`TaskClosed` when the task was already answered or skipped, :class:`NotFound`
    when it is not the project's.
    """
    reviewer = _name("reviewer", reviewer)
    if label is None and rating is None and correction is None:
        raise ConfigError("set at least one of label, rating or correction", field="label")
    scored = (rating, rating_scale[0], rating_scale[1]) if rating is not None else None
    engine = runtime.engine
    t = models.review_tasks
    task = get_task(engine, project_id, task_id)
    if task.state != "open":
        raise TaskClosed(f"review task {task_id} is {task.state}: it cannot be answered again")
    # Unguessable: any key that sends feedback (a browser's public key too) could take a
    # predictable id first, and the reviewer's answer would then be a silent duplicate.
    feedback_id = None
    if task.interaction_id is not None:
        feedback_id = f"review-{task_id}-{uuid.uuid4().hex}"
    now = utcnow()
    # Claimed first (one answer wins), ingested next, undone if the ingest refuses it.
    with engine.begin() as conn:
        claimed = conn.execute(
            t.update()
            .where(t.c.project_id == project_id, t.c.id == task_id, t.c.state == "open")
            .values(
                state="done",
                answered_by=reviewer,
                answered_at=now,
                updated_at=now,
                feedback_id=feedback_id,
            )
        ).rowcount
        key = _project_key(conn, project_id)
    if not claimed:
        _closed_or_missing(engine, project_id, task_id)
    try:
        stored = _ingest_answer(
            runtime, key, task, feedback_id, reviewer, label, scored, correction, comment
        )
    except BaseException:
        with engine.begin() as conn:
            conn.execute(
                t.update()
                .where(t.c.id == task_id, t.c.state == "done", t.c.answer.is_(None))
                .values(
                    state="open",
                    answered_by=None,
                    answered_at=None,
                    feedback_id=None,
                    updated_at=utcnow(),
                )
            )
        raise
    with engine.begin() as conn:
        conn.execute(t.update().where(t.c.id == task_id).values(answer=json.dumps(stored)))
    return get_task(engine, project_id, task_id)


def _ingest_answer(
    runtime: ReviewRuntime,
    key: ProjectKey,
    task: Task,
    feedback_id: str | None,
    reviewer: str,
    label: str | None,
    rating: tuple[float, float, float] | None,
    correction: str | None,
    comment: str | None,
) -> dict[str, Any]:
    """Ingest the answer; the stored (redacted) fields of the feedback, kept on the task."""
    if task.interaction_id is None or feedback_id is None:
        # no interaction to attach feedback to: kept on the task only (nothing user-sent)
        return _feedback_body("", reviewer, label, rating, correction, comment)
    body = _feedback_body(task.interaction_id, reviewer, label, rating, correction, comment)
    event = {"id": feedback_id, "type": "feedback", "timestamp": utcnow().isoformat()}
    result = runtime.ingestor.ingest(key, [encode({**event, "body": body})])
    outcome = result.results[0]
    if outcome.status in ("rejected", "dropped"):
        field = (outcome.field or "body").removeprefix("body.")
        raise ConfigError(f"{field}: {outcome.message}", field=field)
    if outcome.status != "stored":  # a duplicate is someone else's row, not this answer
        raise ActionError(
            f"the reviewer feedback id {feedback_id} was already taken; answer the task again"
        )
    f = models.feedback
    with runtime.engine.connect() as conn:
        row = conn.execute(
            sa.select(
                f.c.label, f.c.rating, f.c.rating_min, f.c.rating_max, f.c.correction, f.c.comment
            ).where(
                f.c.project_id == key.project_id,
                f.c.id == feedback_id,
                f.c.source == "reviewer",
            )
        ).first()
    if row is None:  # pragma: no cover - stored means the reviewer's row is there
        raise ActionError("the reviewer feedback was not stored; answer the task again")
    return {k: v for k, v in row._mapping.items() if v is not None}


# -- the action --------------------------------------------------------------------------------


class ReviewParams(pydantic.BaseModel):
    """``review:`` parameters of a rule."""

    model_config = pydantic.ConfigDict(extra="forbid")

    priority: int = pydantic.Field(default=0, ge=-(2**31), lt=2**31)
    max_tasks: int = pydantic.Field(default=20, ge=1, le=1000)
    reason: str | None = pydantic.Field(default=None, max_length=2000)


class ReviewAction:
    """Queue one review task per interaction of the trigger (up to ``max_tasks``); an
    interaction with an open task is not queued twice."""

    name: ClassVar[str] = "review"
    Params: ClassVar[type[pydantic.BaseModel]] = ReviewParams

    def __init__(self, params: ReviewParams, context: ActContext) -> None:
        self.params = params
        self.context = context

    @classmethod
    def _unit_test_params(cls) -> Sequence[dict[str, Any]]:
        return [{}, {"priority": 5, "max_tasks": 2, "reason": "check"}]

    def _reason(self, trigger: Trigger) -> str:
        if self.params.reason:
            return self.params.reason
        return f"rule {trigger.rule}: {trigger.kind} on {trigger.segment}"

    def run(self, trigger: Trigger, *, dry_run: bool = False) -> ActionResult:
        """Create the tasks (in a dry run: count those it would create)."""
        ids = list(dict.fromkeys(trigger.interaction_ids))[: self.params.max_tasks]
        engine = self.context.engine
        if dry_run:
            with engine.connect() as conn:
                fresh = [i for i in ids if _open_task_id(conn, trigger.project_id, i) is None]
            return ActionResult(
                action=self.name,
                ok=True,
                summary=f"would queue {len(fresh)} review tasks",
                details={"would_create": len(fresh), "interaction_ids": fresh},
                dry_run=True,
            )
        with engine.connect() as conn:
            before = {i: _open_task_id(conn, trigger.project_id, i) for i in ids}
        created: list[int] = []
        existing: list[int] = []
        for interaction_id in ids:
            task_id = create_task(
                engine,
                trigger.project_id,
                interaction_id=interaction_id,
                priority=self.params.priority,
                reason=self._reason(trigger),
                firing_id=trigger.firing_id,
            )
            (existing if before[interaction_id] == task_id else created).append(task_id)
        return ActionResult(
            action=self.name,
            ok=True,
            summary=f"queued {len(created)} review tasks ({len(existing)} already open)",
            details={"created": created, "existing": existing},
        )
