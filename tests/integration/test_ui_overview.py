"""The overview and issues pages render the analysis' real numbers: tiles, charts per segment
with drift alarms, ranked issues with trends, one issue; filters, tenancy and escaping."""

from __future__ import annotations

import datetime as dt
import html
import json
import re
from typing import Any

import httpx
import pytest

from closedloop import make_event
from closedloop.analyze import read
from closedloop.analyze.quality_drift import store_alarm
from closedloop.enrich.job import Enricher
from closedloop.runtime import Runtime
from closedloop.store.db import utcnow
from tests.conftest import Tenant
from tests.integration.ui_helpers import add_user, sign_in

NOW = utcnow().replace(microsecond=0)
HOSTILE = "<script>alert(1)</script>"
_CHART = re.compile(r"data-chart='([^']*)'")


def events(prefix: str, n: int = 8) -> list[dict[str, Any]]:
    """Refund questions answered badly by bot v1 (one of them hostile), weather questions
    answered well by bot v2; an hour or two ago."""
    out = []
    for k in range(n):
        for theme in ("refund", "weather"):
            bad = theme == "refund"
            text = (
                f"please refund my cancelled order number {k} to my card"
                if bad
                else f"what is the weather forecast for tomorrow in city {k}"
            )
            if bad and k == 3:
                text += " " + HOSTILE
            iid = f"{prefix}-{theme}-{k}"
            i = make_event(
                "interaction",
                {
                    "input": text,
                    "output": "ok",
                    "model": {"name": "bot", "version": "v1" if bad else "v2"},
                    "prompt": {"name": "support", "version": "3" if bad else "4"},
                },
                id=iid,
            )
            f = make_event(
                "feedback", {"interaction_id": iid, "thumbs": -1 if bad else 1}, id=f"f-{iid}"
            )
            i["timestamp"] = f["timestamp"] = (NOW - dt.timedelta(minutes=60 + k)).isoformat()
            out += [i, f]
    return out


async def seed(client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, n: int = 8) -> None:
    r = await client.post(
        "/v1/events", json={"events": events(tenant.name, n)}, headers=tenant.headers()
    )
    assert r.status_code == 200, r.text
    Enricher(runtime.engine).run(now=utcnow())
    r = await client.post("/v1/analyze", headers=tenant.headers())
    assert r.status_code == 200, r.text


def charts(page: str) -> list[dict[str, Any]]:
    """Every chart's data on a page, parsed as the browser's script parses it."""
    return [json.loads(html.unescape(raw)) for raw in _CHART.findall(page)]


def by_label(chart: dict[str, Any]) -> dict[str, list[float | None]]:
    return {s["label"]: s["values"] for s in chart["series"]}


@pytest.fixture
async def signed_in(client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant) -> Tenant:
    await seed(client, runtime, tenant)
    add_user(runtime, tenant.project_id, "ann@example.com", "viewer")
    await sign_in(client, "ann@example.com")
    return tenant


async def test_overview_shows_tiles_and_charts_per_segment_with_alarms(
    client: httpx.AsyncClient, runtime: Runtime, signed_in: Tenant
) -> None:
    with runtime.engine.begin() as conn:
        store_alarm(
            conn,
            project_id=signed_in.project_id,
            kind="quality",
            segment="model=bot@v1",
            measure="thumbs",
            since=NOW - dt.timedelta(hours=1),
            detected_at=NOW,
            before={"value": 0.9, "low": 0.8, "high": 0.95, "n": 40},
            after={"value": 0.1, "low": 0.0, "high": 0.3, "n": 8},
            details={},
        )
    # all of the week's data is from the last day: the overview opens on 24 h, hourly
    default = charts((await client.get("/ui/p/acme/")).text)
    assert len(default[0]["x"]) == 24
    r = await client.get("/ui/p/acme/", params={"window": "7d"})
    assert r.status_code == 200, r.text
    page = r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert re.search(r'id="tile-volume">.*?<span class="value">\s*16\s*</span>', page, re.S)
    assert re.search(r'id="tile-positive_rate">.*?50\.0 %', page, re.S)
    found = charts(page)
    assert len(found) == 4
    volume, feedback, positive, _quality = found
    assert len(volume["x"]) == 7 and volume["y"]["format"] == "count"
    assert {k: sum(v or 0 for v in vs) for k, vs in by_label(volume).items()} == {
        "bot@v1": 8,
        "bot@v2": 8,
    }
    rates = {k: [x for x in vs if x is not None] for k, vs in by_label(positive).items()}
    assert rates == {"bot@v1": [0.0], "bot@v2": [1.0]}
    assert [x for x in by_label(feedback)["bot@v1"] if x is not None] == [1.0]
    (alarm,) = positive["alarms"]
    assert alarm["at"] == int((NOW - dt.timedelta(hours=1)).timestamp())
    assert "thumbs dropped in model=bot@v1: 90 % → 10 %" in alarm["label"]
    assert volume["alarms"] == []
    assert "Recent drift alarms" in page and "thumbs dropped in model=bot@v1" in page

    issue = read.clusters(runtime.engine, signed_in.project_id, "issue")[0]
    assert f'href="/ui/p/acme/issues/{issue["id"]}"' in page

    r = await client.get("/ui/p/acme/", params={"window": "24h", "by": "prompt"})
    hourly = charts(r.text)[0]
    assert len(hourly["x"]) == 24 and hourly["x"][1] - hourly["x"][0] == 3600
    assert set(by_label(hourly)) == {"support@3", "support@4"}
    assert charts(r.text)[2]["alarms"] == [], "a model alarm is not marked by prompt"
    r = await client.get("/ui/p/acme/", params={"window": "30d", "by": "topic"})
    assert len(charts(r.text)[0]["x"]) == 30
    assert sum(sum(v or 0 for v in vs) for vs in by_label(charts(r.text)[0]).values()) == 16
    r = await client.get("/ui/p/acme/", params={"window": "1y"})
    assert r.status_code in (400, 422) and "<html" in r.text


async def test_overview_without_data_explains_how_to_send_it(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com", "viewer")
    await sign_in(client, "ann@example.com")
    r = await client.get("/ui/p/acme/")
    assert r.status_code == 200
    assert "No interactions yet" in r.text and "closedloop.log_interaction" in r.text
    assert "data-chart" not in r.text


async def test_issues_are_ranked_filtered_and_explained(
    client: httpx.AsyncClient, runtime: Runtime, signed_in: Tenant
) -> None:
    (issue,) = read.clusters(runtime.engine, signed_in.project_id, "issue")
    r = await client.get("/ui/p/acme/issues")
    assert r.status_code == 200
    page = r.text
    row = re.search(rf'<tr id="issue-{issue["id"]}">(.*?)</tr>', page, re.S)
    assert row, page
    assert html.escape(issue["name"]) in row.group(1)
    assert re.search(rf'<td class="num">{issue["size"]}</td>', row.group(1))
    assert '<svg class="sparkline"' in row.group(1)
    assert f'<span class="badge state-{issue["state"]}">' in row.group(1)
    assert HOSTILE not in page

    r = await client.get("/ui/p/acme/issues", params={"state": issue["state"]})
    assert f'id="issue-{issue["id"]}"' in r.text
    other = next(s for s in read.ISSUE_STATES if s != issue["state"])
    r = await client.get("/ui/p/acme/issues", params={"state": other})
    assert 'id="issue-' not in r.text and f"No {other} issues" in r.text

    r = await client.get(f"/ui/p/acme/issues/{issue['id']}")
    assert r.status_code == 200
    page = r.text
    for keyword in issue["keywords"]:
        assert f'<span class="kw">{html.escape(keyword)}</span>' in page
    assert issue["stats"]["explanation"] in page
    assert f'href="/ui/p/acme/interactions?issue={issue["id"]}"' in page
    (trend,) = charts(page)
    assert sum(trend["series"][0]["values"]) == issue["size"] == 8
    assert len(trend["x"]) == 14
    assert HOSTILE not in page and html.escape(HOSTILE) in page


async def test_issues_of_another_project_and_unknown_projects_answer_404(
    client: httpx.AsyncClient, runtime: Runtime, signed_in: Tenant, other_tenant: Tenant
) -> None:
    await seed(client, runtime, other_tenant, n=10)
    mine = {i["id"] for i in read.clusters(runtime.engine, signed_in.project_id, "issue")}
    theirs = {i["id"] for i in read.clusters(runtime.engine, other_tenant.project_id, "issue")}
    for foreign in theirs - mine or {max(mine) + 1}:
        r = await client.get(f"/ui/p/acme/issues/{foreign}")
        assert r.status_code == 404 and "<html" in r.text
    for path in ("/ui/p/globex/", "/ui/p/globex/issues", "/ui/p/nope/", "/ui/p/nope/issues"):
        r = await client.get(path)
        assert r.status_code == 404, path
    r = await client.get("/ui/p/acme/issues/abc")
    assert r.status_code in (400, 404, 422)
