"""The review queue and the rules pages of the dashboard: a reviewer works tasks through the
page's forms (answers become reviewer feedback), CSRF and roles are enforced, a dead webhook
delivery is retried from the page, and the rules page shows rules, firings and effects."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from closedloop import make_event
from closedloop.act.webhooks.endpoints import Endpoints
from closedloop.act.webhooks.outbox import WebhookSender, enqueue
from closedloop.act.webhooks.ssrf import SsrfGuard
from closedloop.enrich.job import Enricher
from closedloop.runtime import Runtime
from closedloop.settings import Settings
from closedloop.store import models
from closedloop.store.db import utcnow
from tests.conftest import Tenant
from tests.integration.ui_helpers import add_user
from tests.integration.ui_helpers import sign_in as ui_sign_in

REVIEWER = "rev@example.com"
ADMIN = "boss@example.com"
VIEWER = "look@example.com"
_TASK = re.compile(r'action="/ui/p/acme/review/(\d+)/answer"')


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Event rules act at once; one webhook attempt, so a refused delivery is dead at once."""
    return settings.with_overrides(
        act_event_settle_seconds=0, webhook_max_attempts=1, webhook_allow=[]
    )


async def sign_in(client: httpx.AsyncClient, email: str, page: str) -> str:
    """Sign in through the form; the CSRF token read off ``page``."""
    return await ui_sign_in(client, email, page=page)


async def seed(client: httpx.AsyncClient, tenant: Tenant, n: int) -> list[int]:
    """``n`` interactions through POST /v1/events, a review task on each through the API."""
    events = [
        make_event("interaction", {"input": f"question {k}", "output": f"answer {k}"}, id=f"i-{k}")
        for k in range(n)
    ]
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    ids = []
    for k in range(n):
        r = await client.post(
            "/v1/review/tasks",
            json={"interaction_id": f"i-{k}", "priority": n - k, "reason": f"check <b>{k}</b>"},
            headers=tenant.headers(),
        )
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def current_task(html: str) -> int:
    found = _TASK.search(html)
    assert found, "the page shows no task to answer"
    return int(found.group(1))


def task_rows(runtime: Runtime, tenant: Tenant) -> dict[int, Any]:
    t = models.review_tasks
    with runtime.engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.project_id == tenant.project_id)).all()
    return {int(r.id): r for r in rows}


def feedback_rows(runtime: Runtime, tenant: Tenant) -> list[Any]:
    f = models.feedback
    with runtime.engine.connect() as conn:
        return conn.execute(
            sa.select(f).where(f.c.project_id == tenant.project_id).order_by(f.c.interaction_id)
        ).all()


async def test_a_reviewer_works_three_tasks_through_the_page(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient
) -> None:
    tasks = await seed(client, tenant, 3)
    add_user(runtime, tenant.project_id, REVIEWER, "reviewer")
    csrf = await sign_in(client, REVIEWER, "/ui/p/acme/review")

    page = await client.get("/ui/p/acme/review")
    assert current_task(page.text) == tasks[0]  # highest priority first
    assert "question 0" in page.text and "check &lt;b&gt;0&lt;/b&gt;" in page.text
    assert "<kbd>" in page.text and "/ui/static/review.js" in page.text
    r = await client.post(
        f"/ui/p/acme/review/{tasks[0]}/answer",
        data={"csrf_token": csrf, "label": "wrong-policy", "original": "answer 0"},
    )
    assert r.status_code == 303 and r.headers["location"].endswith("/review?done=answered")

    page = await client.get(r.headers["location"])
    assert current_task(page.text) == tasks[1] and "Answered" in page.text
    r = await client.post(
        f"/ui/p/acme/review/{tasks[1]}/answer",
        data={
            "csrf_token": csrf,
            "rating": "2",
            "correction": "the better answer 1",
            "original": "answer 1",
            "comment": "too short",
        },
    )
    assert r.status_code == 303

    page = await client.get("/ui/p/acme/review")
    assert current_task(page.text) == tasks[2]
    r = await client.post(f"/ui/p/acme/review/{tasks[2]}/skip", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"].endswith("?done=skipped")

    page = await client.get("/ui/p/acme/review?done=skipped")
    assert "Nothing to review" in page.text and "wrong-policy" in page.text  # recent answers
    rows = task_rows(runtime, tenant)
    assert [rows[t].state for t in tasks] == ["done", "done", "skipped"]
    assert {rows[t].answered_by for t in tasks} == {REVIEWER}

    runtime.enricher.run()
    got = await client.get("/v1/feedback", headers=tenant.headers())
    stored = sorted(got.json()["data"], key=lambda f: f["interaction_id"])
    assert [f["source"] for f in stored] == ["reviewer", "reviewer"]
    assert stored[0]["interaction_id"] == "i-0" and stored[0]["label"] == "wrong-policy"
    assert "correction" not in stored[0] or stored[0]["correction"] is None
    assert stored[1]["correction"] == "the better answer 1" and stored[1]["rating"] == 2
    assert stored[1]["comment"] == "too short"
    assert {f["id"] for f in stored} == {rows[tasks[0]].feedback_id, rows[tasks[1]].feedback_id}

    # answering a closed task again: a clear 409 page, nothing more stored
    again = await client.post(
        f"/ui/p/acme/review/{tasks[0]}/answer", data={"csrf_token": csrf, "label": "x"}
    )
    assert again.status_code == 409 and "closed" in again.text
    assert len(feedback_rows(runtime, tenant)) == 2


async def test_an_unchanged_correction_alone_is_no_answer(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient
) -> None:
    (task,) = await seed(client, tenant, 1)
    add_user(runtime, tenant.project_id, REVIEWER, "reviewer")
    csrf = await sign_in(client, REVIEWER, "/ui/p/acme/review")
    r = await client.post(
        f"/ui/p/acme/review/{task}/answer",
        data={"csrf_token": csrf, "correction": "answer 0", "original": "answer 0"},
    )
    assert r.status_code == 303 and r.headers["location"].endswith("?done=empty")
    assert task_rows(runtime, tenant)[task].state == "open"
    assert feedback_rows(runtime, tenant) == []


async def test_without_the_csrf_token_nothing_is_answered(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient
) -> None:
    (task,) = await seed(client, tenant, 1)
    add_user(runtime, tenant.project_id, REVIEWER, "reviewer")
    await sign_in(client, REVIEWER, "/ui/p/acme/review")
    for path, data in ((f"{task}/answer", {"label": "good"}), (f"{task}/skip", {})):
        r = await client.post(f"/ui/p/acme/review/{path}", data=data)
        assert r.status_code == 403
        r = await client.post(f"/ui/p/acme/review/{path}", data={**data, "csrf_token": "forged"})
        assert r.status_code == 403
    assert task_rows(runtime, tenant)[task].state == "open"
    assert feedback_rows(runtime, tenant) == []


async def test_a_viewer_may_not_review(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient
) -> None:
    (task,) = await seed(client, tenant, 1)
    add_user(runtime, tenant.project_id, VIEWER, "viewer")
    csrf = await sign_in(client, VIEWER, "/ui/p/acme/rules")
    assert (await client.get("/ui/p/acme/review")).status_code == 403
    for path in (f"{task}/answer", f"{task}/skip"):
        r = await client.post(
            f"/ui/p/acme/review/{path}", data={"csrf_token": csrf, "label": "good"}
        )
        assert r.status_code == 403
    row = task_rows(runtime, tenant)[task]
    assert (row.state, row.assignee) == ("open", None)  # not even claimed
    assert feedback_rows(runtime, tenant) == []


async def test_another_projects_task_is_not_found(
    runtime: Runtime, tenant: Tenant, other_tenant: Tenant, client: httpx.AsyncClient
) -> None:
    (theirs,) = await seed(client, other_tenant, 1)
    add_user(runtime, tenant.project_id, REVIEWER, "reviewer")
    csrf = await sign_in(client, REVIEWER, "/ui/p/acme/review")
    for path in (f"{theirs}/answer", f"{theirs}/skip"):
        r = await client.post(
            f"/ui/p/acme/review/{path}", data={"csrf_token": csrf, "label": "good"}
        )
        assert r.status_code == 404
    assert (await client.get("/ui/p/globex/review")).status_code == 404
    assert task_rows(runtime, other_tenant)[theirs].state == "open"


def dead_delivery(runtime: Runtime, tenant: Tenant) -> int:
    """A delivery to the loopback, refused by the SSRF guard (no allowlist): dead at once."""
    endpoints = Endpoints(runtime.engine, SsrfGuard(["127.0.0.1"]))
    endpoints.create(tenant.project_id, "hook", "http://127.0.0.1:9/hook", allow_private=True)
    with runtime.engine.begin() as conn:
        delivery_id = enqueue(conn, tenant.project_id, "hook", "closedloop.test", {"n": 1})
    WebhookSender(runtime.engine, runtime.settings).run()
    return delivery_id


def delivery_state(runtime: Runtime, delivery_id: int) -> str:
    d = models.webhook_deliveries
    with runtime.engine.connect() as conn:
        state: str = conn.execute(sa.select(d.c.state).where(d.c.id == delivery_id)).scalar_one()
    return state


async def test_an_admin_retries_a_dead_delivery_from_the_page(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient
) -> None:
    delivery_id = dead_delivery(runtime, tenant)
    assert delivery_state(runtime, delivery_id) == "dead"
    add_user(runtime, tenant.project_id, VIEWER, "viewer")
    add_user(runtime, tenant.project_id, ADMIN, "admin")
    retry = f"/ui/p/acme/webhooks/deliveries/{delivery_id}/retry"

    csrf = await sign_in(client, VIEWER, "/ui/p/acme/rules")
    page = await client.get("/ui/p/acme/rules?state=dead")
    assert f"#{delivery_id}" in page.text and retry not in page.text  # no button for a viewer
    assert (await client.post(retry, data={"csrf_token": csrf})).status_code == 403
    assert delivery_state(runtime, delivery_id) == "dead"

    csrf = await sign_in(client, ADMIN, "/ui/p/acme/rules")
    page = await client.get("/ui/p/acme/rules?state=dead")
    assert retry in page.text and "state-dead" in page.text
    assert (await client.post(retry)).status_code == 403  # no token
    assert delivery_state(runtime, delivery_id) == "dead"
    r = await client.post(retry, data={"csrf_token": csrf})
    assert r.status_code == 303 and "done=retried" in r.headers["location"]
    assert delivery_state(runtime, delivery_id) == "pending"
    assert f"#{delivery_id}" not in (await client.get("/ui/p/acme/rules?state=dead")).text
    assert (await client.post(retry, data={"csrf_token": csrf})).status_code == 400  # pending


RULE = {
    "when": {"event": {"thumbs": "down", "correction": True}},
    "backfill": True,
    "actions": [{"review": {"max_tasks": 5, "reason": "a <corrected> answer"}}],
}


async def test_the_rules_pages_show_the_rule_its_firings_and_admin_actions(
    runtime: Runtime, tenant: Tenant, client: httpx.AsyncClient
) -> None:
    t = (utcnow() - dt.timedelta(minutes=30)).isoformat()
    events = [
        {**make_event("interaction", {"input": "q", "output": "a"}, id="i-1"), "timestamp": t},
        {
            **make_event("feedback", {"interaction_id": "i-1", "thumbs": -1, "correction": "A"}),
            "timestamp": t,
        },
    ]
    r = await client.post("/v1/events", json={"events": events}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    Enricher(runtime.engine).run()
    r = await client.put("/v1/rules/fix-answers", json=RULE, headers=tenant.headers())
    assert r.status_code == 200, r.text
    add_user(runtime, tenant.project_id, VIEWER, "viewer")
    add_user(runtime, tenant.project_id, ADMIN, "admin")

    csrf = await sign_in(client, VIEWER, "/ui/p/acme/rules")
    assert (await client.post("/ui/p/acme/rules/run", data={"csrf_token": csrf})).status_code == 403
    off = {"csrf_token": csrf, "enabled": "false"}
    assert (await client.post("/ui/p/acme/rules/fix-answers/enabled", data=off)).status_code == 403
    page = await client.get("/ui/p/acme/rules/fix-answers")
    assert page.status_code == 200 and "<button" not in page.text.split("</header>")[1]

    csrf = await sign_in(client, ADMIN, "/ui/p/acme/rules")
    r = await client.post("/ui/p/acme/rules/run", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"].endswith("/rules?done=ran")
    page = await client.get("/ui/p/acme/rules")
    assert "fix-answers" in page.text and "review: ok" in page.text
    assert "queued 1 review tasks" in page.text and "Run rules now" in page.text

    detail = await client.get("/ui/p/acme/rules/fix-answers")
    assert detail.status_code == 200
    assert "a &lt;corrected&gt; answer" in detail.text and "<corrected>" not in detail.text
    assert "review: ok" in detail.text
    r = await client.post(
        "/ui/p/acme/rules/fix-answers/enabled", data={"csrf_token": csrf, "enabled": "false"}
    )
    assert r.status_code == 303
    got = await client.get("/v1/rules/fix-answers", headers=tenant.headers())
    assert got.json()["enabled"] is False and got.json()["source"] == "api"
    assert (await client.get("/ui/p/acme/rules/nope")).status_code == 404
