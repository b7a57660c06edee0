"""The human review queue: priority order, safe claims, answers as reviewer feedback through
the one ingest path (redacted, joined), 409 on a second answer, tenancy, and the action."""

from __future__ import annotations

import datetime as dt
import json
import threading

import httpx
import pytest
import sqlalchemy as sa

from closedloop import make_event
from closedloop.act import review
from closedloop.act.actions import Trigger
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utcnow
from tests.conftest import Tenant


def _ingest(runtime: Runtime, tenant: Tenant, events: list[dict[str, object]]) -> None:
    raws = [json.dumps(e).encode() for e in events]
    result = runtime.ingestor.ingest(runtime.verify(tenant.secret_key), raws)
    assert all(r.status == "stored" for r in result.results), result


def _interactions(runtime: Runtime, tenant: Tenant, n: int) -> list[str]:
    ids = [f"i-{k}" for k in range(n)]
    _ingest(
        runtime,
        tenant,
        [
            make_event("interaction", {"input": f"question {k}", "output": f"answer {k}"}, id=i)
            for k, i in enumerate(ids)
        ],
    )
    return ids


def test_next_hands_out_tasks_by_priority_and_claims_each(runtime: Runtime, tenant: Tenant) -> None:
    ids = _interactions(runtime, tenant, 3)
    low = review.create_task(runtime.engine, tenant.project_id, interaction_id=ids[0], priority=1)
    high = review.create_task(runtime.engine, tenant.project_id, interaction_id=ids[1], priority=9)
    mid = review.create_task(runtime.engine, tenant.project_id, interaction_id=ids[2], priority=5)

    got = [
        review.next_task(runtime.engine, tenant.project_id, reviewer=name)
        for name in ("ann", "bob", "cy", "dee")
    ]
    assert [t.id if t else None for t in got] == [high, mid, low, None]
    assert [t.assignee for t in got if t] == ["ann", "bob", "cy"]
    # a reviewer who asks again gets back the task they hold, never another's
    again = review.next_task(runtime.engine, tenant.project_id, reviewer="bob")
    assert again is not None and again.id == mid


def test_a_claim_nobody_acted_on_lapses_and_another_reviewer_takes_the_task(
    runtime: Runtime, tenant: Tenant
) -> None:
    (interaction,) = _interactions(runtime, tenant, 1)
    task = review.create_task(runtime.engine, tenant.project_id, interaction_id=interaction)
    held = review.next_task(runtime.engine, tenant.project_id, reviewer="ann")
    assert held is not None and held.id == task
    assert review.next_task(runtime.engine, tenant.project_id, reviewer="bob") is None
    t = models.review_tasks
    with runtime.engine.begin() as conn:  # ann opened the queue and walked away
        then = utcnow() - review.CLAIM_LAPSES - dt.timedelta(minutes=1)
        conn.execute(t.update().where(t.c.id == task).values(updated_at=then))
    taken = review.next_task(runtime.engine, tenant.project_id, reviewer="bob")
    assert taken is not None and taken.id == task and taken.assignee == "bob"
    assert review.next_task(runtime.engine, tenant.project_id, reviewer="ann") is None


def test_reviewers_asking_at_once_never_get_the_same_task(runtime: Runtime, tenant: Tenant) -> None:
    ids = _interactions(runtime, tenant, 8)
    for k, i in enumerate(ids):
        review.create_task(runtime.engine, tenant.project_id, interaction_id=i, priority=k % 3)
    claimed: list[int | None] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def claim(name: str) -> None:
        start.wait()
        task = review.next_task(runtime.engine, tenant.project_id, reviewer=name)
        with lock:
            claimed.append(task.id if task else None)

    threads = [threading.Thread(target=claim, args=(f"r{n}",)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert None not in claimed
    assert len(set(claimed)) == 8


def test_a_second_open_task_on_an_interaction_is_not_created(
    runtime: Runtime, tenant: Tenant
) -> None:
    (i,) = _interactions(runtime, tenant, 1)
    first = review.create_task(runtime.engine, tenant.project_id, interaction_id=i)
    assert review.create_task(runtime.engine, tenant.project_id, interaction_id=i) == first
    assert len(review.tasks(runtime.engine, tenant.project_id)) == 1


async def test_an_answer_becomes_redacted_reviewer_feedback_joined_to_its_interaction(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient
) -> None:
    (i,) = _interactions(runtime, tenant, 1)
    r = await client.post(
        "/v1/review/tasks",
        json={"interaction_id": i, "priority": 3, "reason": "low rating"},
        headers=tenant.headers(),
    )
    assert r.status_code == 201, r.text
    task_id = r.json()["id"]
    r = await client.post("/v1/review/next", json={"reviewer": "ann"}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert r.json()["id"] == task_id and r.json()["interaction"]["input"] == "question 0"

    fix = "Write to jane.doe@example.org to reset the password."
    r = await client.post(
        f"/v1/review/tasks/{task_id}/answer",
        json={"reviewer": "ann", "correction": fix, "rating": {"value": 2, "scale": [1, 5]}},
        headers=tenant.headers(),
    )
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["state"] == "done" and task["answered_by"] == "ann"
    assert task["feedback_id"]
    assert "jane.doe@example.org" not in json.dumps(task)

    runtime.enricher.run()
    r = await client.get("/v1/feedback", params={"interaction_id": i}, headers=tenant.headers())
    (stored,) = r.json()["data"]
    assert stored["id"] == task["feedback_id"]
    assert stored["source"] == "reviewer" and stored["rating"] == 2
    assert stored["join"]["state"] == "joined"
    assert "jane.doe@example.org" not in stored["correction"]
    assert "<EMAIL>" in stored["correction"]
    with runtime.engine.connect() as conn:
        raw = conn.execute(sa.select(models.feedback.c.correction)).scalar_one()
    assert "jane.doe@example.org" not in raw

    r = await client.post(
        f"/v1/review/tasks/{task_id}/answer",
        json={"reviewer": "bob", "label": "wrong"},
        headers=tenant.headers(),
    )
    assert r.status_code == 409, r.text
    assert "done" in r.json()["detail"]
    r = await client.post("/v1/review/next", json={"reviewer": "bob"}, headers=tenant.headers())
    assert r.status_code == 204


async def test_bad_answers_name_the_field_and_leave_the_task_open(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient
) -> None:
    (i,) = _interactions(runtime, tenant, 1)
    task_id = review.create_task(runtime.engine, tenant.project_id, interaction_id=i)
    url = f"/v1/review/tasks/{task_id}/answer"
    r = await client.post(url, json={"reviewer": "ann"}, headers=tenant.headers())
    assert r.status_code == 400 and r.json()["field"] == "label"
    r = await client.post(
        url, json={"reviewer": "ann", "rating": {"value": 9}}, headers=tenant.headers()
    )
    assert r.status_code == 400 and r.json()["field"] == "rating", r.text
    r = await client.post(url, json={"label": "x"}, headers=tenant.headers())
    assert r.status_code == 400 and r.json()["field"] == "reviewer"
    assert review.get_task(runtime.engine, tenant.project_id, task_id).state == "open"


async def test_another_projects_tasks_and_interactions_answer_404(
    runtime: Runtime, tenant: Tenant, other_tenant: Tenant, client: httpx.AsyncClient
) -> None:
    (i,) = _interactions(runtime, tenant, 1)
    task_id = review.create_task(runtime.engine, tenant.project_id, interaction_id=i)
    theirs = other_tenant.headers()
    r = await client.post(
        f"/v1/review/tasks/{task_id}/answer",
        json={"reviewer": "eve", "label": "x"},
        headers=theirs,
    )
    assert r.status_code == 404
    r = await client.post(f"/v1/review/tasks/{task_id}/skip", headers=theirs)
    assert r.status_code == 404
    r = await client.post("/v1/review/tasks", json={"interaction_id": i}, headers=theirs)
    assert r.status_code == 404
    r = await client.post("/v1/review/next", json={"reviewer": "eve"}, headers=theirs)
    assert r.status_code == 204
    r = await client.get("/v1/review/tasks", headers=theirs)
    assert r.json()["tasks"] == []
    r = await client.get("/v1/review/tasks", headers=tenant.headers("public"))
    assert r.status_code == 401


async def test_a_skipped_task_leaves_the_queue(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient
) -> None:
    (i,) = _interactions(runtime, tenant, 1)
    task_id = review.create_task(runtime.engine, tenant.project_id, interaction_id=i)
    r = await client.post(
        f"/v1/review/tasks/{task_id}/skip", json={"reviewer": "ann"}, headers=tenant.headers()
    )
    assert r.status_code == 200 and r.json()["state"] == "skipped"
    r = await client.get("/v1/review/tasks", params={"state": "open"}, headers=tenant.headers())
    assert r.json()["tasks"] == []
    r = await client.post(f"/v1/review/tasks/{task_id}/skip", headers=tenant.headers())
    assert r.status_code == 409


def _trigger(tenant: Tenant, ids: tuple[str, ...]) -> Trigger:
    return Trigger(
        project_id=tenant.project_id,
        rule="low-ratings",
        kind="event",
        segment="all",
        fired_at=utcnow(),
        interaction_ids=ids,
    )


@pytest.mark.parametrize("max_tasks", [20, 2])
def test_the_review_action_queues_one_task_per_interaction_once(
    runtime: Runtime, tenant: Tenant, max_tasks: int
) -> None:
    ids = tuple(_interactions(runtime, tenant, 3))
    action = review.ReviewAction(
        review.ReviewParams(priority=4, max_tasks=max_tasks), runtime.act_context()
    )
    dry = action.run(_trigger(tenant, ids), dry_run=True)
    assert dry.dry_run and dry.details["would_create"] == min(3, max_tasks)
    assert review.tasks(runtime.engine, tenant.project_id) == []

    first = action.run(_trigger(tenant, ids))
    assert first.ok and len(first.details["created"]) == min(3, max_tasks)
    queued = review.tasks(runtime.engine, tenant.project_id)
    assert sorted(t.interaction_id or "" for t in queued) == sorted(ids[:max_tasks])
    assert all(t.priority == 4 and "low-ratings" in t.reason for t in queued)

    second = action.run(_trigger(tenant, ids))
    assert second.details["created"] == [] and len(second.details["existing"]) == len(queued)
    assert len(review.tasks(runtime.engine, tenant.project_id)) == len(queued)
    assert action.run(_trigger(tenant, ids), dry_run=True).details["would_create"] == 0


def test_an_answer_is_kept_only_once_when_two_reviewers_answer_at_once(
    runtime: Runtime, tenant: Tenant
) -> None:
    (i,) = _interactions(runtime, tenant, 1)
    task_id = review.create_task(runtime.engine, tenant.project_id, interaction_id=i)
    outcomes: list[str] = []
    start = threading.Barrier(2)

    def answer(name: str) -> None:
        start.wait()
        try:
            review.answer(runtime, tenant.project_id, task_id, reviewer=name, label=name)
            outcomes.append("done")
        except review.TaskClosed:
            outcomes.append("closed")

    threads = [threading.Thread(target=answer, args=(n,)) for n in ("ann", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["closed", "done"]
    task = review.get_task(runtime.engine, tenant.project_id, task_id)
    assert task.answer is not None and task.answer["label"] == task.answered_by
    with runtime.engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(models.feedback)).scalar()
    assert count == 1


def test_the_cli_queues_claims_and_answers_and_keeps_the_knowledge_base(
    runtime: Runtime, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from closedloop.cli import app

    monkeypatch.setenv("CLOSEDLOOP_DATA_DIR", str(runtime.settings.data_dir))
    monkeypatch.setenv("CLOSEDLOOP_DATABASE_URL", runtime.settings.resolved_database_url())
    (i,) = _interactions(runtime, tenant, 1)
    runner = CliRunner()
    out = runner.invoke(app, ["review", "add", i, "--project", "acme", "--priority", "2"])
    assert out.exit_code == 0, out.output
    (task,) = review.tasks(runtime.engine, tenant.project_id)
    out = runner.invoke(app, ["review", "next", "--project", "acme", "--reviewer", "ann"])
    assert out.exit_code == 0 and "question 0" in out.output, out.output
    answer = ["review", "answer", str(task.id), "--project", "acme", "--reviewer", "ann"]
    out = runner.invoke(app, [*answer, "--correction", "Say hello."])
    assert out.exit_code == 0 and "answered" in out.output, out.output
    assert review.get_task(runtime.engine, tenant.project_id, task.id).state == "done"
    out = runner.invoke(app, [*answer, "--label", "ok"])
    assert out.exit_code == 1 and "done" in out.output
    out = runner.invoke(app, ["review", "list", "--project", "acme", "--state", "bogus"])
    assert out.exit_code == 1 and "--state" in out.output

    kb = ["--project", "acme"]
    out = runner.invoke(app, ["kb", "add", "What is the refund window?", "30 days.", *kb])
    assert out.exit_code == 0, out.output
    out = runner.invoke(app, ["kb", "recall", "the refund window", *kb])
    assert out.exit_code == 0 and "30 days." in out.output, out.output
    out = runner.invoke(app, ["kb", "list", *kb])
    assert "refund" in out.output
    out = runner.invoke(app, ["kb", "flags", *kb, "--state", "bogus"])
    assert out.exit_code == 1 and "--state" in out.output


async def test_a_users_feedback_under_a_guessable_id_never_becomes_the_reviewers_answer(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient
) -> None:
    (i,) = _interactions(runtime, tenant, 1)
    task_id = review.create_task(runtime.engine, tenant.project_id, interaction_id=i)
    for guess in (f"review-{task_id}", f"review-{task_id}-0"):
        user = make_event("feedback", {"interaction_id": i, "thumbs": 1, "comment": "mine"})
        r = await client.post(
            "/v1/events", json={"events": [{**user, "id": guess}]}, headers=tenant.headers("public")
        )
        assert r.status_code in (200, 202), r.text
    r = await client.post(
        f"/v1/review/tasks/{task_id}/answer",
        json={"reviewer": "ann", "correction": "The reviewer's fix."},
        headers=tenant.headers(),
    )
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["answer"] == {"correction": "The reviewer's fix."}
    assert task["feedback_id"] not in (f"review-{task_id}", f"review-{task_id}-0")
    with runtime.engine.connect() as conn:
        source = conn.execute(
            sa.select(models.feedback.c.source).where(models.feedback.c.id == task["feedback_id"])
        ).scalar_one()
    assert source == "reviewer"


async def test_an_answer_whose_feedback_id_is_taken_fails_and_leaves_the_task_open(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    (i,) = _interactions(runtime, tenant, 1)
    task_id = review.create_task(runtime.engine, tenant.project_id, interaction_id=i)
    fixed = uuid.UUID(int=7)
    monkeypatch.setattr(uuid, "uuid4", lambda: fixed)  # the one id the answer will take
    taken = [f"review-{task_id}-{fixed.hex}", f"review-{task_id}"]  # the new and the old form
    _ingest(
        runtime,
        tenant,
        [make_event("feedback", {"interaction_id": i, "comment": "mine"}, id=t) for t in taken],
    )
    url = f"/v1/review/tasks/{task_id}/answer"
    answer = {"reviewer": "ann", "label": "wrong"}
    r = await client.post(url, json=answer, headers=tenant.headers())
    assert r.status_code == 409, r.text
    assert r.json()["field"] == "task_id" and "again" in r.json()["detail"]
    task = review.get_task(runtime.engine, tenant.project_id, task_id)
    assert task.state == "open" and task.answer is None and task.feedback_id is None

    monkeypatch.undo()
    r = await client.post(url, json=answer, headers=tenant.headers())
    assert r.status_code == 200 and r.json()["answer"] == {"label": "wrong"}, r.text
    r = await client.post(url, json=answer, headers=tenant.headers())  # closed: 409, a field
    assert r.status_code == 409 and r.json()["field"] == "task_id", r.text
    r = await client.post(f"/v1/review/tasks/{task_id}/skip", headers=tenant.headers())
    assert r.status_code == 409 and r.json()["field"] == "task_id", r.text
