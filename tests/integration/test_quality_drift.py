"""Quality drift from stored feedback: alarms where and since when, across runs, both backends."""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path

import pytest
import sqlalchemy as sa

from closedloop.analyze.drift.bernoulli import BernoulliCusum
from closedloop.analyze.drift.monitor import DriftParams
from closedloop.analyze.drift.registry import detector_factory
from closedloop.analyze.quality_drift import QualityDrift
from closedloop.errors import ConfigError
from closedloop.store import models
from closedloop.store.projects import Projects

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
PARAMS = DriftParams(arl0=10_000, n_segments=16, warmup=500)


def seed(
    engine: sa.Engine,
    project_id: int,
    model: str,
    rates: list[tuple[int, float]],
    *,
    rng: random.Random,
    start: int = 0,
    join_state: str = "joined",
) -> None:
    """Interactions of ``model`` with one thumbs each: ``n`` at ``rate`` for each pair, one a
    minute; ids and times continue from ``start``."""
    inter, fb = [], []
    k = start
    for n, rate in rates:
        for _ in range(n):
            ts = T0 + dt.timedelta(minutes=k)
            iid = f"{model}-{k:06d}"
            inter.append(
                {
                    "project_id": project_id,
                    "id": iid,
                    "ts": ts,
                    "received_at": ts,
                    "model_name": model,
                    "model_version": "1",
                    "body": "{}",
                }
            )
            fb.append(
                {
                    "project_id": project_id,
                    "id": f"f-{iid}",
                    "ts": ts,
                    "received_at": ts,
                    "interaction_id": iid,
                    "thumbs": 1 if rng.random() < rate else -1,
                    "source": "user",
                    "body": "{}",
                    "join_state": join_state,
                }
            )
            k += 1
    with engine.begin() as conn:
        conn.execute(models.interactions.insert(), inter)
        conn.execute(models.feedback.insert(), fb)


def alarms(engine: sa.Engine) -> list[dict[str, object]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(models.drift_alarms).order_by("id")).mappings().all()
    return [dict(r) for r in rows]


def test_a_drop_in_one_model_alarms_there_and_says_since_when(engine: sa.Engine) -> None:
    pid = Projects(engine).create("acme")[0].id
    rng = random.Random(7)
    seed(engine, pid, "a", [(1500, 0.85), (600, 0.50)], rng=rng)
    seed(engine, pid, "b", [(2100, 0.85)], rng=rng)
    stats = QualityDrift(engine, PARAMS).run(pid, now=T0 + dt.timedelta(days=30))
    assert stats.observations == 2 * 4200  # each thumbs feeds "all" and its model's stream
    found = {(a["segment"], a["measure"]) for a in alarms(engine)}
    assert ("model=a@1", "thumbs") in found
    assert not any(seg == "model=b@1" for seg, _ in found), "a steady model never alarms"
    alarm = next(a for a in alarms(engine) if a["segment"] == "model=a@1")
    change = T0 + dt.timedelta(minutes=1500)
    since = alarm["since"]
    assert isinstance(since, dt.datetime)
    since = since if since.tzinfo else since.replace(tzinfo=dt.UTC)
    assert abs(since - change) <= dt.timedelta(minutes=60), "change point within 60 observations"
    before, after = json.loads(str(alarm["before"])), json.loads(str(alarm["after"]))
    assert before["low"] <= 0.85 <= before["high"]
    assert after["value"] < 0.65 and after["high"] < before["low"]


def test_runs_in_pieces_find_the_same_alarms_as_one_run_and_never_twice(
    engine: sa.Engine,
) -> None:
    pid = Projects(engine).create("acme")[0].id
    rng = random.Random(11)
    job = QualityDrift(engine, PARAMS)
    seed(engine, pid, "a", [(1500, 0.85)], rng=rng)
    job.run(pid, now=T0 + dt.timedelta(days=30))
    assert alarms(engine) == []
    seed(engine, pid, "a", [(300, 0.45)], rng=rng, start=1500)
    job.run(pid, now=T0 + dt.timedelta(days=30))
    seed(engine, pid, "a", [(300, 0.45)], rng=rng, start=1800)
    job.run(pid, now=T0 + dt.timedelta(days=30))
    job.run(pid, now=T0 + dt.timedelta(days=30))  # nothing new: nothing added
    pieces = [(a["segment"], a["measure"], a["since"]) for a in alarms(engine)]
    assert ("model=a@1", "thumbs") in {(s, m) for s, m, _ in pieces}
    assert len(pieces) == len(set(pieces))

    # the same feedback in one run, in a fresh project, gives the same alarms
    with engine.begin() as conn:
        n = conn.execute(sa.select(sa.func.count()).select_from(models.drift_streams)).scalar()
        assert n == 2  # all and model=a@1, thumbs
        conn.execute(models.drift_streams.delete())
        conn.execute(models.drift_alarms.delete())
        conn.execute(models.analysis_state.delete())
    job.run(pid, now=T0 + dt.timedelta(days=30))
    whole = [(a["segment"], a["measure"], a["since"]) for a in alarms(engine)]
    assert sorted(map(str, whole)) == sorted(map(str, pieces))


def test_feedback_waiting_for_its_interaction_holds_the_watermark(engine: sa.Engine) -> None:
    pid = Projects(engine).create("acme")[0].id
    rng = random.Random(3)
    seed(engine, pid, "a", [(10, 0.8)], rng=rng, join_state="pending")
    seed(engine, pid, "a", [(10, 0.8)], rng=rng, start=10)
    stats = QualityDrift(engine, PARAMS).run(pid, now=T0 + dt.timedelta(days=30))
    assert stats.observations == 0, "the joined rows came after a pending one"
    with engine.begin() as conn:
        conn.execute(models.feedback.update().values(join_state="joined"))
    stats = QualityDrift(engine, PARAMS).run(pid, now=T0 + dt.timedelta(days=30))
    assert stats.observations == 2 * 20


def test_other_projects_feedback_is_not_fed(engine: sa.Engine) -> None:
    projects = Projects(engine)
    a, b = projects.create("acme")[0].id, projects.create("globex")[0].id
    rng = random.Random(5)
    seed(engine, pid := a, "a", [(1500, 0.85), (600, 0.4)], rng=rng)
    assert QualityDrift(engine, PARAMS).run(b, now=T0 + dt.timedelta(days=30)).observations == 0
    assert alarms(engine) == []
    assert QualityDrift(engine, PARAMS).run(pid, now=T0 + dt.timedelta(days=30)).alarms >= 1
    assert {x["project_id"] for x in alarms(engine)} == {a}


def test_the_configured_detector_is_used_and_a_change_of_detector_starts_afresh(
    engine: sa.Engine,
) -> None:
    pid = Projects(engine).create("acme")[0].id
    seed(engine, pid, "a", [(50, 0.8)], rng=random.Random(1))
    QualityDrift(engine, PARAMS).run(pid, now=T0 + dt.timedelta(days=30))
    gaussian = detector_factory("GaussianCusum", warmup=500)
    seed(engine, pid, "a", [(30, 0.8)], rng=random.Random(2), start=50)
    QualityDrift(engine, PARAMS, factory=gaussian).run(pid, now=T0 + dt.timedelta(days=30))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(models.drift_streams.c.detector, models.drift_streams.c.observations)
        ).all()
    assert sorted(rows) == [("GaussianCusum", 30), ("GaussianCusum", 30)], "fresh, not 80"


def test_an_unknown_detector_is_refused_naming_the_setting() -> None:
    with pytest.raises(ConfigError) as info:
        detector_factory("NoSuchDetector")
    assert info.value.field == "drift_detector" and "BernoulliCusum" in str(info.value)


def test_a_server_with_an_unknown_detector_refuses_to_start(tmp_path: Path) -> None:
    from closedloop.runtime import Runtime
    from closedloop.settings import Settings

    settings = Settings(data_dir=tmp_path, drift_detector="Nope", _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(ConfigError) as info:
        Runtime.build(settings, load_plugins=False)
    assert info.value.field == "drift_detector"


def test_the_drift_settings_reach_every_stream_detector(tmp_path: Path) -> None:
    from closedloop.runtime import Runtime
    from closedloop.settings import Settings

    settings = Settings(
        data_dir=tmp_path,
        drift_arl0=5_000,
        drift_streams=10,
        drift_warmup=300,
        drift_dispersion=1.4,
        _env_file=None,  # type: ignore[call-arg]
    )
    runtime = Runtime.build(settings, load_plugins=False)
    try:
        detector = runtime.analyzer().quality._new()
        assert isinstance(detector, BernoulliCusum)
        assert (detector.arl0, detector.warmup, detector.dispersion) == (50_000, 300, 1.4)
    finally:
        runtime.engine.dispose()
