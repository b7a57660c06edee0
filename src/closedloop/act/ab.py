"""Prompt A/B tests in the store, and the job that promotes or rolls back on the evidence of
the always-valid sequential test (:mod:`closedloop.act.sequential`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.act import prompts
from closedloop.act.sequential import (
    ABParams,
    Decision,
    SequentialTest,
    always_valid_p_values,
    confidence_radius,
)
from closedloop.errors import ConfigError, NotFound
from closedloop.settings import Settings, get_settings
from closedloop.store import models
from closedloop.store.db import utc, utcnow
from closedloop.store.jobs import Job

__all__ = [
    "ABEvaluator",
    "ABParams",
    "ABStats",
    "Decision",
    "SequentialTest",
    "always_valid_p_values",
    "confidence_radius",
    "promote",
    "rollback",
    "start_test",
    "ab_test_json",
    "list_tests",
    "resolve_params",
]

log = logging.getLogger(__name__)

# -- tests in the store ------------------------------------------------------------------------


def ab_test_json(row: Any) -> dict[str, Any]:
    """A stored test as a JSON-ready dict."""
    return {
        "id": row.id,
        "prompt": row.prompt,
        "control_version": row.control_version,
        "candidate_version": row.candidate_version,
        "share": row.share,
        "state": row.state,
        "params": json.loads(row.params),
        "evidence": json.loads(row.evidence),
        "firing_id": row.firing_id,
        "started_at": utc(row.started_at).isoformat(),
        "ended_at": utc(row.ended_at).isoformat() if row.ended_at else None,
    }


def list_tests(
    engine: Engine, project_id: int, name: str | None = None, *, state: str | None = None
) -> list[dict[str, Any]]:
    """The project's tests (of one prompt, in one state), newest first."""
    t = models.ab_tests
    query = sa.select(t).where(t.c.project_id == project_id).order_by(t.c.id.desc())
    if name is not None:
        query = query.where(t.c.prompt == name)
    if state is not None:
        query = query.where(t.c.state == state)
    with engine.connect() as conn:
        return [ab_test_json(r) for r in conn.execute(query)]


def resolve_params(settings: Settings, overrides: Mapping[str, Any] | None = None) -> ABParams:
    """A test's parameters: the settings' ``alpha`` and ``min_samples`` with ``overrides``
    (``alpha``, ``tau``, ``min_samples``, ``max_samples``, ``max_days``); a
    :class:`~closedloop.errors.ConfigError` if unknown or inconsistent."""
    base = {"alpha": settings.ab_alpha, "min_samples": settings.ab_min_samples}
    extra = dict(overrides or {})
    unknown = set(extra) - {"alpha", "tau", "min_samples", "max_samples", "max_days"}
    if unknown:
        raise ConfigError(f"unknown test parameter {sorted(unknown)[0]!r}", field="params")
    return ABParams(**{**base, **extra})


def start_test(
    engine: Engine,
    project_id: int,
    name: str,
    candidate_version: int,
    *,
    share: float,
    firing_id: int | None = None,
    params: Mapping[str, Any] | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Test ``candidate_version`` against production on ``share`` of traffic (a running test of
    the same prompt is stopped); labels the candidate ``candidate``. Returns the test."""
    settings = settings or get_settings()
    if not 0 < share <= settings.ab_max_share:
        raise ConfigError(
            f"share must be above 0 and at most {settings.ab_max_share} (CLOSEDLOOP_AB_MAX_SHARE)",
            field="share",
        )
    chosen = resolve_params(settings, params)
    control = prompts.get(engine, project_id, name)
    prompts.get(engine, project_id, name, version=candidate_version)
    if control.version == candidate_version:
        raise ConfigError(
            f"version {candidate_version} is already production: build a new version to test",
            field="candidate_version",
        )
    t, now = models.ab_tests, utcnow()
    with engine.begin() as conn:
        conn.execute(
            t.update()
            .where(t.c.project_id == project_id, t.c.prompt == name, t.c.state == "running")
            .values(state="stopped", ended_at=now)
        )
        test_id = conn.execute(
            t.insert()
            .values(
                project_id=project_id,
                prompt=name,
                control_version=control.version,
                candidate_version=candidate_version,
                share=float(share),
                state="running",
                params=json.dumps(asdict(chosen)),
                evidence="{}",
                firing_id=firing_id,
                started_at=now,
            )
            .returning(t.c.id)
        ).scalar_one()
    prompts.set_label(engine, project_id, name, "candidate", candidate_version)
    return _one(engine, project_id, int(test_id))


def _one(engine: Engine, project_id: int, test_id: int) -> dict[str, Any]:
    t = models.ab_tests
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(t).where(t.c.project_id == project_id, t.c.id == test_id)
        ).first()
    if row is None:
        raise NotFound(f"no A/B test {test_id} in this project")
    return ab_test_json(row)


def _running(engine: Engine, project_id: int, name: str, test_id: int | None) -> dict[str, Any]:
    if test_id is not None:
        found = _one(engine, project_id, test_id)
        if found["prompt"] != name:
            raise NotFound(f"no A/B test {test_id} of prompt {name!r} in this project")
        if found["state"] != "running":
            raise ConfigError(f"A/B test {test_id} is {found['state']}, not running", field="id")
        return found
    running = list_tests(engine, project_id, name, state="running")
    if not running:
        raise NotFound(f"prompt {name!r} has no running A/B test")
    return running[0]


def _end(
    engine: Engine,
    project_id: int,
    test: Mapping[str, Any],
    state: str,
    evidence: Mapping[str, Any] | None,
) -> bool:
    t = models.ab_tests
    values: dict[str, Any] = {"state": state, "ended_at": utcnow()}
    if evidence is not None:
        values["evidence"] = json.dumps(dict(evidence))
    # one transaction: a crash cannot leave a test promoted with production on the control
    with engine.begin() as conn:  # only one process ends a test
        done = conn.execute(
            t.update()
            .where(t.c.project_id == project_id, t.c.id == test["id"], t.c.state == "running")
            .values(**values)
        ).rowcount
        if done:
            version = int(test["candidate_version"])
            if state == "promoted":
                prompts._put_label(conn, project_id, test["prompt"], "production", version)
            prompts._delete_label(conn, project_id, test["prompt"], "candidate", version=version)
    return bool(done)


def promote(
    engine: Engine,
    project_id: int,
    name: str,
    *,
    test_id: int | None = None,
    evidence: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Make the running test's candidate ``production`` (state ``promoted``)."""
    test = _running(engine, project_id, name, test_id)
    _end(engine, project_id, test, "promoted", evidence)
    return _one(engine, project_id, int(test["id"]))


def rollback(
    engine: Engine,
    project_id: int,
    name: str,
    *,
    test_id: int | None = None,
    evidence: Mapping[str, Any] | None = None,
    state: Literal["rolled_back", "stopped"] = "rolled_back",
) -> dict[str, Any]:
    """End the running test, keep production, remove the ``candidate`` label."""
    test = _running(engine, project_id, name, test_id)
    _end(engine, project_id, test, state, evidence)
    return _one(engine, project_id, int(test["id"]))


# -- the evaluation job ------------------------------------------------------------------------


@dataclass
class ABStats:
    """What one evaluation run did."""

    tests: int = 0
    promoted: int = 0
    rolled_back: int = 0
    stopped: int = 0


class ABEvaluator:
    """Evaluates every running test on the quality of its arms' rated interactions.

    Only interactions whose quality has a basis (``explicit`` feedback or ``implicit``
    signals; not the prior alone) that *arrived* since the test started count, read from the
    hot store. Arrival (``received_at``), not the event's ``ts``: ``ts`` is the client's clock,
    which may be skewed or set in the past (an app replaying a queue, a simulation on a virtual
    clock), while what was served under the test is what arrived since it started. An import
    of old interactions while a test runs would count toward it.
    """

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings

    def __call__(self, job: Job) -> None:
        """The worker's ``ab`` job."""
        self.run(job.project_id)

    def _qualities(self, test: Mapping[str, Any], project_id: int) -> Sequence[Any]:
        i = models.interactions
        versions = {str(test["control_version"]): 0, str(test["candidate_version"]): 1}
        query = sa.select(i.c.prompt_version, i.c.quality).where(
            i.c.project_id == project_id,
            i.c.prompt_name == test["prompt"],
            i.c.prompt_version.in_(list(versions)),
            i.c.received_at >= dt.datetime.fromisoformat(test["started_at"]),
            i.c.quality.is_not(None),
            i.c.quality_basis.in_(("explicit", "implicit")),
        )
        with self.engine.connect() as conn:
            return [(versions[r.prompt_version], float(r.quality)) for r in conn.execute(query)]

    def run(self, project_id: int | None = None, now: dt.datetime | None = None) -> ABStats:
        """Update the evidence of every running test; promote or roll back on a decision.

        ``now`` (default: the clock) dates the evidence and ends a test past its ``max_days``
        (counted from its start, on the same clock)."""
        now = now or utcnow()
        stats = ABStats()
        t = models.ab_tests
        query = sa.select(t).where(t.c.state == "running").order_by(t.c.id)
        if project_id is not None:
            query = query.where(t.c.project_id == project_id)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        for row in rows:
            stats.tests += 1
            test = ab_test_json(row)
            previous = test["evidence"].get("p_value", 1.0)
            params = ABParams(**test["params"])
            sequential = SequentialTest(params, p_value=float(previous))
            values = self._qualities(test, row.project_id)
            sequential.update(
                [q for arm, q in values if arm == 0], [q for arm, q in values if arm == 1]
            )
            decision = sequential.decision()
            if decision == "continue" and params.max_days is not None:
                if now - utc(row.started_at) >= dt.timedelta(days=params.max_days):
                    decision = "inconclusive"
            evidence = {
                **sequential.evidence(),
                "decision": decision,
                "updated_at": now.isoformat(),
            }
            if decision == "promote":
                stats.promoted += _end(self.engine, row.project_id, test, "promoted", evidence)
            elif decision == "rollback":
                stats.rolled_back += _end(
                    self.engine, row.project_id, test, "rolled_back", evidence
                )
            elif decision == "inconclusive":
                stats.stopped += _end(self.engine, row.project_id, test, "stopped", evidence)
            else:
                with self.engine.begin() as conn:
                    conn.execute(
                        t.update()
                        .where(t.c.id == row.id, t.c.state == "running")
                        .values(evidence=json.dumps(evidence))
                    )
            if decision != "continue":
                log.info("A/B test %s of %r: %s", row.id, row.prompt, decision)
        return stats
