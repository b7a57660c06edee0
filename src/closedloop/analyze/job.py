"""The analysis job: topics, issues, quality drift and input drift, for every project.

Runs every ``CLOSEDLOOP_ANALYZE_INTERVAL_SECONDS`` in the worker (``closedloop serve``,
``closedloop worker``, the SDK's embedded mode) and on demand (``closedloop analyze``). On
PostgreSQL one worker at a time runs it (an advisory lock), so detectors never see an
observation twice.

Input drift compares the last ``current_hours`` of inputs with the ``reference_days`` before
(at most once per ``input_every_seconds``; at most one alarm of each test per day, dated the
day the current window starts):

* ``input`` / ``embedding``: the kernel two-sample test (MMD, permutation p-value) of the
  input embeddings;
* ``topic_mix`` / ``topics``: the chi-square test of the topic shares;
* ``emerging`` / ``far_share``: the share of inputs far from every topic known before the
  current window grew.

Each test runs at ``alpha``; a run makes three tests per project.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from closedloop.analyze.cluster import Cluster, nearest
from closedloop.analyze.drift.monitor import DriftParams
from closedloop.analyze.input_drift import (
    MIN_SAMPLES,
    InputDriftParams,
    emerging,
    mmd_test,
    topic_mix_test,
)
from closedloop.analyze.quality_drift import (
    DEFAULT_PARAMS,
    DetectorFactory,
    QualityDrift,
    estimate_json,
    store_alarm,
)
from closedloop.analyze.state import load_state, save_state
from closedloop.analyze.tracker import ClusterTracker, TrackerParams
from closedloop.errors import JobError
from closedloop.store import models
from closedloop.store.db import single_flight, utc, utcnow

__all__ = ["AnalyzeParams", "AnalyzeStats", "Analyzer", "input_drift"]

log = logging.getLogger(__name__)

_LOCK_KEY = 0x636C_616E_616C_797A  # "clanalyz": the advisory lock of the analysis job
_INPUT_MARK = "input_drift"


@dataclass(frozen=True, kw_only=True)
class AnalyzeParams:
    """Everything the analysis job is configured by (see :mod:`closedloop.settings`)."""

    drift: DriftParams = DEFAULT_PARAMS
    tracker: TrackerParams = TrackerParams()
    input: InputDriftParams = InputDriftParams()
    input_every_seconds: float = 3600.0
    current_hours: float = 24.0
    reference_days: float = 7.0


@dataclass
class AnalyzeStats:
    """What a run did, summed over projects."""

    projects: int = 0
    topics_opened: int = 0
    issues_opened: int = 0
    members: int = 0
    observations: int = 0
    alarms: int = 0
    input_checks: int = 0
    skipped: bool = False
    by_project: dict[int, dict[str, Any]] = field(default_factory=dict)


class Analyzer:
    """Runs every analysis of each project; a job handler (``Analyzer(...)(job)``).

    ``model`` is the embedder's name, or a callable giving it (so the worker does not load
    the embedder before the first run). ``detector`` builds each quality stream's detector
    from its ARL0 (default: :class:`~closedloop.analyze.drift.BernoulliCusum`).
    """

    def __init__(
        self,
        engine: Engine,
        model: str | Callable[[], str],
        params: AnalyzeParams | None = None,
        *,
        detector: DetectorFactory | None = None,
    ) -> None:
        self.engine = engine
        self._model = model
        self.params = params = params or AnalyzeParams()
        self.quality = QualityDrift(engine, params.drift, factory=detector)

    @property
    def model(self) -> str:
        return self._model if isinstance(self._model, str) else self._model()

    def __call__(self, job: object = None) -> None:
        self.run()

    def _projects(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(models.projects.c.id).order_by("id")).scalars())

    def run(self, project_id: int | None = None, *, now: dt.datetime | None = None) -> AnalyzeStats:
        """One pass over one project (or all); returns at once if another worker is running."""
        stats = AnalyzeStats()
        with single_flight(self.engine, _LOCK_KEY) as mine:
            if not mine:
                stats.skipped = True
                return stats
            model = self.model
            failed: list[int] = []
            for pid in [project_id] if project_id is not None else self._projects():
                try:
                    self._project(pid, model, now or utcnow(), stats)
                except Exception:  # one project's failure must not starve the others
                    log.exception("the analysis of project %d failed", pid)
                    failed.append(pid)
            if failed:
                raise JobError(f"the analysis failed for projects {failed} (see the log)")
        return stats

    def _project(self, pid: int, model: str, when: dt.datetime, stats: AnalyzeStats) -> None:
        topics = ClusterTracker(self.engine, "topic", model, self.params.tracker)
        issues = ClusterTracker(self.engine, "issue", model, self.params.tracker)
        t = topics.run(pid, now=when)
        i = issues.run(pid, now=when)
        q = self.quality.run(pid, now=when)
        checks = self._input(pid, model, when)
        stats.projects += 1
        stats.topics_opened += t.opened
        stats.issues_opened += i.opened
        stats.members += t.added + i.added
        stats.observations += q.observations
        stats.alarms += q.alarms + max(checks, 0)
        stats.input_checks += 1 if checks >= 0 else 0
        stats.by_project[pid] = {"topics": t, "issues": i, "quality": q}

    def _input(self, project_id: int, model: str, now: dt.datetime) -> int:
        """Input-drift tests when due; the alarms stored (``-1``: not due)."""
        with self.engine.begin() as conn:
            last = load_state(conn, project_id, _INPUT_MARK)
            every = dt.timedelta(seconds=self.params.input_every_seconds)
            if last is not None and now - dt.datetime.fromisoformat(last) < every:
                return -1
            alarms = input_drift(conn, project_id, model, now, self.params)
            save_state(conn, project_id, _INPUT_MARK, now.isoformat())
            return alarms


def _window_vectors(
    conn: Connection, project_id: int, model: str, start: dt.datetime, end: dt.datetime, n: int
) -> tuple[list[str], np.ndarray]:
    """A uniform sample of at most ``n`` input vectors of the whole window (not its last
    hours), seeded by the project and the window's start."""
    v = models.vectors
    seqs = list(
        conn.execute(
            sa.select(v.c.seq).where(
                v.c.project_id == project_id,
                v.c.model == model,
                v.c.kind == "input",
                v.c.ts >= start,
                v.c.ts < end,
            )
        ).scalars()
    )
    if len(seqs) > n:
        seqs = random.Random(f"{project_id}:{start.isoformat()}").sample(sorted(seqs), n)
    rows: list[Any] = []
    for at in range(0, len(seqs), 500):
        rows += conn.execute(
            sa.select(v.c.ref_id, v.c.vector).where(v.c.seq.in_(seqs[at : at + 500]))
        ).all()
    vectors = {r.ref_id: np.frombuffer(r.vector, np.float32) for r in rows}
    refs = sorted(ref for ref, vec in vectors.items() if np.any(vec))  # zero: nothing to read
    if not refs:
        return [], np.zeros((0, 0), np.float32)
    return refs, np.stack([vectors[ref] for ref in refs])


def _topics_of(conn: Connection, project_id: int, refs: list[str]) -> list[int | None]:
    m = models.cluster_members
    found: dict[str, int | None] = {}
    for start in range(0, len(refs), 500):
        chunk = refs[start : start + 500]
        rows = conn.execute(
            sa.select(m.c.ref_id, m.c.cluster_id).where(
                m.c.project_id == project_id, m.c.kind == "topic", m.c.ref_id.in_(chunk)
            )
        )
        found.update({ref: cid if cid and cid > 0 else None for ref, cid in rows})
    return [found.get(r) for r in refs]


def input_drift(
    conn: Connection,
    project_id: int,
    model: str,
    now: dt.datetime,
    params: AnalyzeParams | None = None,
) -> int:
    """Run the three input-drift tests on the windows ending at ``now``; the alarms stored."""
    params = params or AnalyzeParams()
    p = params.input
    current_start = now - dt.timedelta(hours=params.current_hours)
    reference_start = current_start - dt.timedelta(days=params.reference_days)
    ref_ids, ref = _window_vectors(
        conn, project_id, model, reference_start, current_start, p.reference_window
    )
    cur_ids, cur = _window_vectors(conn, project_id, model, current_start, now, p.current_window)
    if len(ref_ids) < MIN_SAMPLES or len(cur_ids) < MIN_SAMPLES:
        return 0
    day = utc(dt.datetime.combine(current_start.date(), dt.time()))
    windows = {
        "reference": [reference_start.isoformat(), current_start.isoformat()],
        "current": [current_start.isoformat(), now.isoformat()],
    }
    stored = 0

    mmd = mmd_test(ref, cur, permutations=p.permutations, max_samples=p.max_samples, alpha=p.alpha)
    if mmd.drift:
        stored += store_alarm(
            conn,
            project_id=project_id,
            kind="input",
            segment="all",
            measure="embedding",
            since=day,
            detected_at=now,
            before={"n": mmd.n_reference},
            after={"n": mmd.n_current},
            details={
                "test": mmd.method,
                "statistic": mmd.statistic,
                "threshold": mmd.threshold,
                "p_value": mmd.p_value,
                "alpha": p.alpha,
                **windows,
            },
        )

    mix = topic_mix_test(
        _topics_of(conn, project_id, ref_ids), _topics_of(conn, project_id, cur_ids), alpha=p.alpha
    )
    if mix.drift:
        stored += store_alarm(
            conn,
            project_id=project_id,
            kind="topic_mix",
            segment="all",
            measure="topics",
            since=day,
            detected_at=now,
            before={"n": mix.n_reference},
            after={"n": mix.n_current},
            details={
                "test": "chi-square",
                "statistic": mix.statistic,
                "dof": mix.dof,
                "p_value": mix.p_value,
                "js_distance": mix.js_distance,
                "shifts": [
                    {"topic": s.topic, "before": s.before, "after": s.after} for s in mix.shifts
                ],
                "alpha": p.alpha,
                **windows,
            },
        )

    c = models.clusters
    known = [
        Cluster(id=r.id, centroid=np.frombuffer(r.centroid, np.float32), size=r.size)
        for r in conn.execute(
            sa.select(c.c.id, c.c.centroid, c.c.size).where(
                c.c.project_id == project_id,
                c.c.kind == "topic",
                c.c.model == model,
                c.c.created_at < current_start,
            )
        )
    ]
    if known:
        _, ref_sim = nearest(ref, known)
        _, cur_sim = nearest(cur, known)
        grew = emerging(np.clip(ref_sim, -1, 1), np.clip(cur_sim, -1, 1), far=p.far, alpha=p.alpha)
        if grew.emerging:
            stored += store_alarm(
                conn,
                project_id=project_id,
                kind="emerging",
                segment="all",
                measure="far_share",
                since=day,
                detected_at=now,
                before=estimate_json(grew.before),
                after=estimate_json(grew.after),
                details={"far": p.far, "p_value": grew.p_value, "alpha": p.alpha, **windows},
            )
    return stored
