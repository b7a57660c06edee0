"""The interactions explorer and one interaction's page, on both databases: each filter narrows
the list, pages follow newest first, the detail shows the conversation and the user's edit and
correction as a diff, untrusted text stays escaped, other projects' interactions are not found
and bad filters answer 400 naming the field."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any
from urllib.parse import quote

import httpx
import pytest
import sqlalchemy as sa

from closedloop import make_event
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utcnow
from tests.conftest import Tenant
from tests.integration.ui_helpers import PASSWORD, add_user, csrf_of

NOW = utcnow().replace(microsecond=0)
PAGE = "/ui/p/acme/interactions"
_ROW = re.compile(r'<a class="ix-open[^"]*" href="/ui/p/acme/interactions/([^"]+)"')


def event(kind: str, body: dict[str, Any], id: str, ago: dt.timedelta) -> dict[str, Any]:
    return make_event(kind, body, id=id, timestamp=NOW - ago)  # type: ignore[arg-type]


async def post(client: httpx.AsyncClient, tenant: Tenant, *events: dict[str, Any]) -> None:
    r = await client.post("/v1/events", json={"events": list(events)}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    assert all(x["status"] == "stored" for x in r.json()["results"]), r.text


async def sign_in(client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant) -> None:
    """A viewer of ``tenant`` signed in through the form (the lowest role reads both pages)."""
    add_user(runtime, tenant.project_id, "viewer@example.com", "viewer")
    client.cookies.clear()
    form = await client.get("/ui/login")
    r = await client.post(
        "/ui/login",
        data={
            "email": "viewer@example.com",
            "password": PASSWORD,
            "csrf_token": csrf_of(form.text),
        },
    )
    assert r.status_code == 303, r.text


async def ids(client: httpx.AsyncClient, query: str = "") -> list[str]:
    r = await client.get(PAGE + query)
    assert r.status_code == 200, r.text
    return _ROW.findall(r.text)


H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)


async def seed(client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant) -> None:
    """Five interactions in two segments, with feedback and an edit signal on some."""

    def chat(user: str, session: str, model: str, version: str, q: str, a: str) -> dict[str, Any]:
        return {
            "input": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": q}],
            "output": a,
            "user_id": user,
            "session_id": session,
            "model": {"name": model, "version": "v1"},
            "prompt": {"name": "support", "version": version},
            "latency_ms": 812.0,
            "tokens": {"input": 31, "output": 12},
            "tags": ["beta"],
        }

    await post(
        client,
        tenant,
        event(
            "interaction",
            chat("u1", "s1", "m1", "1", "old question", "old answer"),
            "i-old",
            10 * D,
        ),
        event(
            "interaction", chat("u2", "s2", "m2", "2", "how do I pay", "Pay by card."), "i-a", 2 * H
        ),
        event(
            "interaction", chat("u1", "s1", "m1", "1", "thanks a lot", "You are welcome."), "i-b", H
        ),
        event(
            "interaction",
            chat("u3", "s3", "m1", "2", "open hours?", "We open at nine every day."),
            "i-c",
            0.5 * H,
        ),
        event(
            "interaction",
            chat("u3", "s3", "m2", "1", "what is the refund policy", "Thirty days."),
            "i-d",
            0.25 * H,
        ),
    )
    await post(
        client,
        tenant,
        event(
            "feedback",
            {
                "interaction_id": "i-a",
                "thumbs": -1,
                "comment": "wrong method",
                "correction": "Pay by bank transfer.",
            },
            "f-a",
            1.9 * H,
        ),
        event("feedback", {"interaction_id": "i-b", "thumbs": 1}, "f-b", 0.9 * H),
        event(
            "signal",
            {"interaction_id": "i-c", "kind": "edit", "text": "We open at ten on weekdays."},
            "s-c",
            0.4 * H,
        ),
        event("signal", {"interaction_id": "i-d", "kind": "copy"}, "s-d", 0.2 * H),
    )
    runtime.enricher.run()


def clusters(runtime: Runtime, tenant: Tenant, kind: str, cid: int, members: list[str]) -> None:
    """A topic or issue with ``members`` (as the analysis job stores them)."""
    with runtime.engine.begin() as conn:
        conn.execute(
            sa.insert(models.clusters).values(
                project_id=tenant.project_id,
                kind=kind,
                id=cid,
                model="lexical",
                name=f"{kind} {cid} <b>name</b>",
                centroid=b"\0" * 8,
                size=len(members),
                state="open",
                created_at=NOW,
                updated_at=NOW,
                last_seen_at=NOW,
            )
        )
        conn.execute(
            sa.insert(models.cluster_members),
            [
                {
                    "project_id": tenant.project_id,
                    "kind": kind,
                    "ref_id": ref,
                    "cluster_id": cid,
                    "ts": NOW,
                    "assigned_at": NOW,
                }
                for ref in members
            ],
        )


async def test_each_filter_narrows_the_list_newest_first(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await seed(client, runtime, tenant)
    await sign_in(client, runtime, tenant)
    assert await ids(client) == ["i-d", "i-c", "i-b", "i-a", "i-old"]
    cases = {
        "?last=24h": ["i-d", "i-c", "i-b", "i-a"],
        "?last=30d": ["i-d", "i-c", "i-b", "i-a", "i-old"],
        f"?since={(NOW - 1.5 * H).strftime('%Y-%m-%dT%H:%M:%S')}": ["i-d", "i-c", "i-b"],
        "?until=" + quote((NOW - 1.5 * H).isoformat()): ["i-a", "i-old"],
        "?model=m1": ["i-c", "i-b", "i-old"],
        "?prompt=support&prompt_version=2": ["i-c", "i-a"],
        "?user_id=u1": ["i-b", "i-old"],
        "?session_id=s3": ["i-d", "i-c"],
        "?feedback=any": ["i-b", "i-a"],
        "?feedback=down": ["i-a"],
        "?feedback=up": ["i-b"],
        "?feedback=correction": ["i-a"],
        "?feedback=comment": ["i-a"],
        "?feedback=edit": ["i-c"],
        "?feedback=none": ["i-d", "i-c", "i-old"],
        "?q=REFUND": ["i-d"],
        "?q=100%25": [],
        "?model=m1&feedback=any&last=24h": ["i-b"],
        # a form sends every field, set or not
        "?last=&since=&until=&model=m2&prompt=&topic=&feedback=&q=": ["i-d", "i-a"],
    }
    for query, expected in cases.items():
        assert await ids(client, query) == expected, query


async def test_topic_and_issue_filters_keep_their_members(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await seed(client, runtime, tenant)
    clusters(runtime, tenant, "topic", 1, ["i-a", "i-d"])
    clusters(runtime, tenant, "issue", 7, ["i-a", "i-old"])
    await sign_in(client, runtime, tenant)
    assert await ids(client, "?topic=1") == ["i-d", "i-a"]
    assert await ids(client, "?issue=7") == ["i-a", "i-old"]
    assert await ids(client, "?issue=7&last=24h") == ["i-a"]
    page = (await client.get(PAGE + "?issue=7")).text
    assert "issue 7 &lt;b&gt;name&lt;/b&gt;" in page and "<b>name</b>" not in page
    assert 'name="issue" value="7"' in page, "the filter form keeps the issue"
    missing = await client.get(PAGE + "?issue=99")
    assert missing.status_code == 404
    detail = (await client.get(PAGE + "/i-a")).text
    assert "/ui/p/acme/issues/7" in detail and "?topic=1" in detail, "issue page, filtered topic"


async def test_pages_follow_the_cursor_newest_first(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await post(
        client,
        tenant,
        *(
            event(
                "interaction", {"input": f"q{k}", "output": "a", "user_id": "u"}, f"p-{k:03}", k * H
            )
            for k in range(60)
        ),
    )
    await sign_in(client, runtime, tenant)
    first = await client.get(PAGE + "?user_id=u")
    found = _ROW.findall(first.text)
    assert found == [f"p-{k:03}" for k in range(50)]
    older = re.search(r'href="([^"]+)" rel="next"', first.text)
    assert older, "a full page links to the next"
    url = older.group(1).replace("&amp;", "&")
    assert "user_id=u" in url, "the next page keeps the filters"
    second = await client.get(url)
    assert _ROW.findall(second.text) == [f"p-{k:03}" for k in range(50, 60)]
    assert 'rel="next"' not in second.text


async def test_the_detail_shows_the_conversation_feedback_and_diffs(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await seed(client, runtime, tenant)
    await sign_in(client, runtime, tenant)
    r = await client.get(PAGE + "/i-c")
    assert r.status_code == 200, r.text
    html = r.text
    assert "open hours?" in html and "We open at nine every day." in html
    # the edit against the output, word by word
    assert re.search(
        r"<del>[^<]*nine every day[^<]*</del><ins>[^<]*ten on weekdays[^<]*</ins>", html
    )
    assert "Edited by the user" in html
    assert 'href="/ui/p/acme/interactions?session_id=s3"' in html
    assert "edit_distance" in html, "the enrichment's measures"
    a = (await client.get(PAGE + "/i-a")).text
    assert re.search(r"<del>card</del><ins>bank transfer</ins>", a), "the correction as a diff"
    assert "wrong method" in a and "thumbs down" in a
    assert "812 ms" in a and "31" in a and "beta" in a


async def test_untrusted_text_is_escaped_everywhere(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    script, img, js = (
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        "javascript:alert(1)",
    )
    await post(
        client,
        tenant,
        event(
            "interaction",
            {
                "input": f"hi {script}",
                "output": f"hello {img}",
                "user_id": "javascript:alert",  # ids allow no parentheses
                "session_id": "javascript:alert",
                "model": {"name": script},
                "metadata": {"link": js, script: img},
                "tags": [script[:60]],
            },
            "x-1",
            H,
        ),
    )
    await post(
        client,
        tenant,
        event(
            "feedback",
            {"interaction_id": "x-1", "thumbs": -1, "comment": script, "correction": f"see {img}"},
            "x-f",
            0.5 * H,
        ),
        event("signal", {"interaction_id": "x-1", "kind": "click", "target": js}, "x-s", 0.5 * H),
        event("signal", {"interaction_id": "x-1", "kind": "edit", "text": script}, "x-e", 0.5 * H),
    )
    runtime.enricher.run()
    await sign_in(client, runtime, tenant)
    pages = [
        (await client.get(PAGE)).text,
        (await client.get(PAGE + "?q=" + "%3Cscript%3E" + "&user_id=javascript:alert")).text,
        (await client.get(PAGE + "/x-1")).text,
    ]
    for html in pages:
        assert "<script>alert" not in html and "<img src=x" not in html
        assert 'href="javascript:' not in html.lower()
        assert "onerror=alert(1)>" not in html
    listing, filtered, detail = pages
    assert "x-1" in _ROW.findall(filtered) and "hi &lt;script&gt;alert(1)" in listing
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in detail
    assert "&lt;img src=x onerror=alert(1)&gt;" in detail
    assert "javascript:alert(1)" in detail, "shown as text"
    assert "/ui/p/acme/interactions?session_id=javascript%3Aalert" in detail
    assert "<del>" in detail and "<ins>" in detail


async def test_another_projects_interaction_is_not_found(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    await post(client, other_tenant, event("interaction", {"input": "secret"}, "g-1", H))
    await sign_in(client, runtime, tenant)
    r = await client.get(PAGE + "/g-1")
    assert r.status_code == 404 and "text/html" in r.headers["content-type"]
    assert "secret" not in r.text
    assert (await client.get("/ui/p/globex/interactions/g-1")).status_code == 404
    assert (await client.get("/ui/p/globex/interactions")).status_code == 404
    assert "g-1" not in (await client.get(PAGE)).text


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("since=yesterday", "since"),
        ("until=2026-13-45", "until"),
        ("since=2026-06-02&until=2026-06-01", "until"),
        ("last=1y", "last"),
        ("feedback=maybe", "feedback"),
        ("issue=abc", "issue"),
        ("topic=-1", "topic"),
        ("topic=%C2%B2", "topic"),  # a superscript two: a digit to isdigit(), not to int()
        ("issue=%D9%A3", "issue"),  # an Arabic-Indic three
        ("cursor=not-a-cursor", "cursor"),
    ],
)
async def test_a_bad_filter_answers_400_naming_it(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, query: str, field: str
) -> None:
    await sign_in(client, runtime, tenant)
    r = await client.get(f"{PAGE}?{query}")
    assert r.status_code == 400, r.text
    assert "text/html" in r.headers["content-type"]
    assert f"{field}:" in r.text


async def test_without_a_session_the_pages_redirect_to_sign_in(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    for path in (PAGE, PAGE + "/i-1"):
        r = await client.get(path)
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/login")


async def test_an_empty_project_says_what_to_do(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await sign_in(client, runtime, tenant)
    html = (await client.get(PAGE)).text
    assert "No interactions yet" in html and "/v1/events" in html
    assert "No interaction matches" in (await client.get(PAGE + "?model=none")).text
