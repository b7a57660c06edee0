"""The analysis through its three doors, HTTP, CLI and Python, on SQLite and PostgreSQL: the
same numbers, clear errors, and metrics that read the lake as well as the hot store."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import closedloop
from closedloop.analyze.metrics import metrics
from closedloop.cli import app
from closedloop.enrich.job import Enricher
from closedloop.runtime import Runtime
from closedloop.sdk.envelope import make_event
from closedloop.settings import Settings
from closedloop.store.db import utcnow
from tests.conftest import Tenant
from tests.integration.test_cli import _text

NOW = utcnow().replace(microsecond=0)
FAILING = "my refund for order {k} never arrived"


def events(n: int = 12) -> list[dict[str, Any]]:
    """Refund questions answered badly by model v1 (thumbs down), others answered well by v2."""
    out = []
    for k in range(n):
        bad = k % 2 == 0
        text = FAILING.format(k=k) if bad else f"what is the weather in town {k}"
        when = (NOW - dt.timedelta(hours=2, minutes=k)).isoformat()
        i = make_event(
            "interaction",
            {
                "input": text,
                "output": "ok",
                "model": {"name": "bot", "version": "v1" if bad else "v2"},
                "metadata": {"plan": "pro" if k < 6 else "free"},
            },
            id=f"i{k}",
        )
        f = make_event(
            "feedback", {"interaction_id": f"i{k}", "thumbs": -1 if bad else 1}, id=f"f{k}"
        )
        i["timestamp"] = f["timestamp"] = when
        out += [i, f]
    return out


@pytest.fixture
async def seeded(client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant) -> Tenant:
    r = await client.post("/v1/events", json={"events": events()}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    Enricher(runtime.engine).run(now=utcnow())
    return tenant


async def test_http_metrics_are_the_python_frame(
    client: httpx.AsyncClient, runtime: Runtime, seeded: Tenant
) -> None:
    r = await client.get("/v1/metrics", params={"by": "model"}, headers=seeded.headers())
    assert r.status_code == 200, r.text
    rows = {(x["segment"], x["measure"]): x for x in r.json()["rows"]}
    assert rows[("bot@v1", "positive_rate")]["value"] == 0.0
    assert rows[("bot@v2", "positive_rate")]["value"] == 1.0
    assert rows[("bot@v1", "volume")]["low"] is None, "no interval on a count: null, not NaN"
    frame = metrics(runtime.analytics(), seeded.project_id, by="model")
    for row in frame.itertuples():
        got = rows[(row.segment, row.measure)]
        assert got["n"] == row.n
        if row.value == row.value:
            assert got["value"] == pytest.approx(row.value)
    r = await client.get(
        "/v1/metrics",
        params={"by": "cohort:plan", "bucket": "day", "measure": ["volume", "positive_rate"]},
        headers=seeded.headers(),
    )
    assert r.status_code == 200, r.text
    got = r.json()["rows"]
    assert {x["measure"] for x in got} == {"volume", "positive_rate"}
    assert sum(x["value"] for x in got if x["measure"] == "volume") == 12
    assert all(x["bucket"] for x in got)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"by": "colour"}, "by"),
        ({"by": "cohort:"}, "by"),
        ({"measure": "happiness"}, "measures"),
        ({"bucket": "fortnight"}, "bucket"),
        ({"since": "yesterday"}, "since"),
        ({"until": "9999-12-31T23:59:59-05:00"}, "until"),  # no such instant in UTC
        ({"since": "0001-01-01T00:00:00+05:00"}, "since"),
    ],
)
async def test_bad_metrics_requests_get_a_problem_naming_the_field(
    client: httpx.AsyncClient, seeded: Tenant, params: dict[str, str], field: str
) -> None:
    r = await client.get("/v1/metrics", params=params, headers=seeded.headers())
    assert 400 <= r.status_code < 500, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in json.dumps(r.json()), r.text


async def test_metrics_since_the_first_day_of_year_one_count_everything(
    client: httpx.AsyncClient, seeded: Tenant
) -> None:
    # the fuzzer found a 500: the lake's pruning bound (a day before since) overflowed
    first = {"since": "0001-01-01T00:00:00Z"}
    r = await client.get("/v1/metrics", params=first, headers=seeded.headers())
    assert r.status_code == 200, r.text
    every = await client.get("/v1/metrics", headers=seeded.headers())
    assert r.json()["rows"] == every.json()["rows"]


async def test_analyze_then_read_issues_topics_and_one_issue(
    client: httpx.AsyncClient, runtime: Runtime, seeded: Tenant
) -> None:
    r = await client.post("/v1/analyze", headers=seeded.headers())
    assert r.status_code == 200, r.text
    assert r.json()["members"] == 12 + 6  # every input a topic member, the 6 failing an issue
    issues = (await client.get("/v1/issues", headers=seeded.headers())).json()["issues"]
    assert len(issues) == 1, issues
    (issue,) = issues
    assert issue["rank"] == 1 and issue["size"] == 6 and "refund" in issue["keywords"]
    assert issue["state"] in ("open", "growing") and issue["impact"] > 0
    assert all("refund" in e["input"] for e in issue["examples"])
    one = await client.get(f"/v1/issues/{issue['id']}", headers=seeded.headers())
    assert one.status_code == 200
    assert sorted(m["interaction_id"] for m in one.json()["members"]) == [
        f"i{k}" for k in (0, 10, 2, 4, 6, 8)
    ]
    missing = await client.get("/v1/issues/999", headers=seeded.headers())
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    topics = (await client.get("/v1/topics", headers=seeded.headers())).json()["topics"]
    assert {t["size"] for t in topics} == {6}, "refunds and weather"
    by_topic = await client.get("/v1/metrics", params={"by": "topic"}, headers=seeded.headers())
    segments = {x["segment"] for x in by_topic.json()["rows"]}
    assert len(segments) == 2 and all(s.startswith("#") for s in segments)
    drift = await client.get("/v1/drift", headers=seeded.headers())
    assert drift.status_code == 200 and drift.json()["alarms"] == [], "12 thumbs: no alarm"


def test_python_api_returns_dataframes(runtime: Runtime, seeded: Tenant) -> None:
    settings = runtime.settings
    runtime.embedding_job().run()
    runtime.analyzer().run(seeded.project_id)
    frame = closedloop.metrics(seeded.name, by="model", settings=settings)  # type: ignore[attr-defined]
    assert set(frame.segment) == {"bot@v1", "bot@v2"}
    issues = closedloop.issues(seeded.name, settings=settings)  # type: ignore[attr-defined]
    assert list(issues["size"]) == [6] and "refund" in issues["keywords"][0]
    topics = closedloop.topics(seeded.project_id, settings=settings)  # type: ignore[attr-defined]
    assert len(topics) == 2
    alarms = closedloop.drift_alarms(seeded.name, settings=settings)  # type: ignore[attr-defined]
    assert alarms.empty


@pytest.fixture
def shop(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Project ``shop`` through the CLI: 12 interactions, 4 of them 40 days old."""
    monkeypatch.setenv("CLOSEDLOOP_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CLOSEDLOOP_DATABASE_URL", database_url)
    runner = CliRunner()
    assert runner.invoke(app, ["projects", "create", "shop"]).exit_code == 0
    batch = events()
    for e in batch[:8]:  # i0..i3 and their feedback
        e["timestamp"] = (NOW - dt.timedelta(days=40)).isoformat()
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(e) for e in batch) + "\n")
    assert runner.invoke(app, ["import", str(path), "--project", "shop"]).exit_code == 0
    assert runner.invoke(app, ["enrich"]).exit_code == 0
    return Settings(data_dir=tmp_path / "data", database_url=database_url, _env_file=None)  # type: ignore[call-arg]


def test_cli_metrics_read_both_tiers_and_analysis_commands_print_tables(shop: Settings) -> None:
    runner = CliRunner()
    before = runner.invoke(
        app, ["metrics", "--project", "shop", "--by", "model", "--format", "json"]
    )
    assert before.exit_code == 0, before.output
    assert runner.invoke(app, ["tier"]).exit_code == 0
    after = runner.invoke(
        app, ["metrics", "--project", "shop", "--by", "model", "--format", "json"]
    )
    assert after.exit_code == 0, after.output
    assert json.loads(after.output) == json.loads(before.output), "the lake's rows still count"
    assert sum(r["value"] for r in json.loads(after.output) if r["measure"] == "volume") == 12

    table = runner.invoke(app, ["metrics", "--project", "shop", "--by", "model"])
    assert table.exit_code == 0 and "bot@v1" in _text(table) and "positive_rate" in _text(table)
    bad = runner.invoke(app, ["metrics", "--project", "shop", "--by", "colour"])
    assert bad.exit_code != 0 and "by=" in _text(bad)

    analyzed = runner.invoke(app, ["analyze"])
    assert analyzed.exit_code == 0, analyzed.output
    assert "interactions clustered" in _text(analyzed)
    issues = runner.invoke(app, ["issues", "--project", "shop"])
    assert issues.exit_code == 0 and "refund" in _text(issues), issues.output
    topics = runner.invoke(app, ["topics", "--project", "shop"])
    assert topics.exit_code == 0 and "weather" in _text(topics), topics.output
    drift = runner.invoke(app, ["drift", "--project", "shop"])
    assert drift.exit_code == 0 and "no drift alarms" in _text(drift)
    bad_kind = runner.invoke(app, ["drift", "--project", "shop", "--kind", "vibes"])
    assert bad_kind.exit_code != 0 and "--kind" in _text(bad_kind)


def test_a_second_analysis_run_waits_its_turn(runtime: Runtime, seeded: Tenant) -> None:
    """While one run holds the analysis lock (another worker, or a CLI run beside a server),
    another returns at once, having done nothing: no observation is fed twice."""
    from closedloop.analyze.job import _LOCK_KEY
    from closedloop.store.db import single_flight

    with single_flight(runtime.engine, _LOCK_KEY) as mine:
        assert mine
        stats = runtime.analyzer().run(seeded.project_id)
        assert stats.skipped and stats.observations == 0
    later = utcnow() + dt.timedelta(minutes=1)  # past the settling seconds of fresh rows
    stats = runtime.analyzer().run(seeded.project_id, now=later)
    assert not stats.skipped and stats.observations == 2 * 12
