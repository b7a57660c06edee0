"""Did the action fix what triggered it? Each firing's metric before, after, and against a
control.

Rules fire when a metric is at a low, so a naive before/after comparison is inflated by
regression to the mean: a segment picked because it was unlucky tends to look better next
window whatever is done. The report therefore measures against a control, and says which:

``ab_holdout``
    A prompt candidate is served to a share of users while the rest keep production, at the
    same time: the effect is candidate minus production over the same window (randomised),
    on the interactions the test itself counts (those that arrived while it ran).
``diff_in_diff``
    The rule watched one segment of a dimension (a model, a prompt, a topic...): the other
    segments of that dimension, untouched by the action, are the control, and the effect is
    the segment's change minus theirs over the same windows (difference in differences).
``holdout`` (per rule)
    The rule's ``holdout`` share of triggers is recorded but not acted on; they were picked by
    the same condition at the same kind of low, so comparing the treated firings' change with
    theirs cancels regression to the mean. The report gives it per rule, beside the firings.
``before_after``
    No control exists (the rule covers all traffic, or an issue): the plain change, flagged
    as liable to regression to the mean.

Intervals are 95 %, from the metric's own intervals (normal approximation of each estimate's
standard error, added in quadrature).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.act.actions import Trigger
from closedloop.act.rules import DriftCondition, MetricCondition, RuleSpec
from closedloop.analyze.drift.base import wilson_interval
from closedloop.analyze.metrics import metrics, t_interval
from closedloop.analyze.tracker import topic_table
from closedloop.store import models
from closedloop.store.db import utc, utcnow
from closedloop.store.olap import Analytics

__all__ = [
    "Scope",
    "baseline",
    "effect_report",
    "measure_scope",
    "rule_summaries",
    "scope_of",
]

_Z = 1.959963984540054
#: Measures where lower is better (the others: higher is better).
LOWER_IS_BETTER = frozenset(
    {"abandonment", "correction_rate", "latency_ms", "cost_usd", "issue_share"}
)
_MEANS = frozenset(
    {"rating", "edit_similarity", "quality", "observed_quality", "latency_ms", "cost_usd"}
)
_BY_ALARM_MEASURE = {"thumbs": "positive_rate", "rating": "rating"}
DEFAULT_WINDOW = 86400.0


@dataclass(frozen=True, kw_only=True)
class Scope:
    """What a firing's effect is measured on: ``measure`` of the segment ``value`` of the
    dimension ``by`` (``value`` is ``None`` for all traffic; ``issue`` for an issue's share of
    traffic), over windows of ``window`` seconds."""

    measure: str
    by: str
    value: str | None
    window: float
    issue_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        """For the firing's baseline."""
        return {
            "measure": self.measure,
            "by": self.by,
            "value": self.value,
            "window": self.window,
            "issue_id": self.issue_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Scope:
        """Back from :meth:`to_json`."""
        return cls(
            measure=data["measure"],
            by=data["by"],
            value=data.get("value"),
            window=float(data["window"]),
            issue_id=data.get("issue_id"),
        )


def scope_of(trigger: Trigger, spec: RuleSpec) -> Scope:
    """The scope a trigger's effect is measured on."""
    cond = spec.condition
    window = spec.effect_window_seconds
    if isinstance(cond, MetricCondition):
        value = None if cond.by == "all" else str(trigger.snapshot.get("segment"))
        return Scope(measure=cond.metric, by=cond.by, value=value, window=window or cond.window)
    if trigger.kind == "issue" and trigger.issue_id is not None:
        return Scope(
            measure="issue_share",
            by="issue",
            value=str(trigger.issue_id),
            window=window or DEFAULT_WINDOW,
            issue_id=trigger.issue_id,
        )
    measure = "quality"
    if isinstance(cond, DriftCondition):
        measure = _BY_ALARM_MEASURE.get(str(trigger.snapshot.get("measure")), "quality")
    dim, _, value = trigger.segment.partition("=")
    if dim in ("model", "prompt") and value:
        return Scope(measure=measure, by=dim, value=value, window=window or DEFAULT_WINDOW)
    return Scope(measure=measure, by="all", value=None, window=window or DEFAULT_WINDOW)


def _estimate(value: float, low: float | None, high: float | None, n: int) -> dict[str, Any]:
    return {"value": value, "low": low, "high": high, "n": n}


def _se(est: Mapping[str, Any]) -> float | None:
    if est.get("low") is None or est.get("high") is None:
        return None
    return (float(est["high"]) - float(est["low"])) / (2 * _Z)


def _pool(rows: list[dict[str, Any]], kind_rate: bool) -> dict[str, Any] | None:
    """The segments ``rows`` as one: weighted by ``n``; a rate's interval recomputed (Wilson),
    a mean's standard error pooled."""
    rows = [r for r in rows if r["n"] > 0 and r["value"] is not None]
    total = sum(int(r["n"]) for r in rows)
    if total == 0:
        return None
    value = sum(float(r["value"]) * int(r["n"]) for r in rows) / total
    if kind_rate:
        low, high = wilson_interval(round(value * total), total)
        return _estimate(value, low, high, total)
    ses = [_se(r) for r in rows]
    known = [s for s in ses if s is not None]
    if len(known) < len(ses):
        return _estimate(value, None, None, total)
    weighted = sum((int(r["n"]) * s) ** 2 for r, s in zip(rows, known, strict=True))
    se = math.sqrt(weighted) / total
    return _estimate(value, value - _Z * se, value + _Z * se, total)


def _issue_share(
    engine: Engine, project_id: int, issue_id: int, since: dt.datetime, until: dt.datetime
) -> dict[str, Any]:
    """The issue's new members as a share of all interactions in the window (Wilson)."""
    m, i = models.cluster_members, models.interactions
    with engine.connect() as conn:
        members = conn.execute(
            sa.select(sa.func.count()).where(
                m.c.project_id == project_id,
                m.c.kind == "issue",
                m.c.cluster_id == issue_id,
                m.c.ts >= since,
                m.c.ts < until,
            )
        ).scalar_one()
        volume = conn.execute(
            sa.select(sa.func.count()).where(
                i.c.project_id == project_id, i.c.ts >= since, i.c.ts < until
            )
        ).scalar_one()
    if not volume:
        return _estimate(float("nan"), None, None, 0)
    low, high = wilson_interval(int(members), int(volume))
    return _estimate(int(members) / int(volume), low, high, int(volume))


def measure_scope(
    analytics: Analytics,
    engine: Engine,
    project_id: int,
    scope: Scope,
    since: dt.datetime,
    until: dt.datetime,
) -> dict[str, Any]:
    """The scope's measure over ``[since, until)``: ``segment`` and, where one exists,
    ``control`` (the dimension's other segments pooled) with how many segments it pools."""
    if scope.issue_id is not None:
        seg = _issue_share(engine, project_id, scope.issue_id, since, until)
        return {"segment": seg, "control": None, "control_segments": 0}
    topics = topic_table(engine, project_id) if scope.by == "topic" else None
    frame = metrics(
        analytics,
        project_id,
        by=scope.by,
        since=since,
        until=until,
        measures=[scope.measure],
        topics=topics,
    )
    rows: list[dict[str, Any]] = [
        {
            "segment": str(r.segment),
            "value": None if r.value != r.value else float(r.value),
            "low": None if r.low is None or r.low != r.low else float(r.low),
            "high": None if r.high is None or r.high != r.high else float(r.high),
            "n": int(r.n),
        }
        for r in frame.itertuples(index=False)
    ]
    target = scope.value if scope.value is not None else "all"
    mine = next((r for r in rows if r["segment"] == target), None)
    seg = (
        _estimate(mine["value"], mine["low"], mine["high"], mine["n"])
        if mine is not None and mine["value"] is not None
        else _estimate(float("nan"), None, None, 0)
    )
    others = [r for r in rows if r["segment"] != target] if scope.by != "all" else []
    rate = scope.measure not in _MEANS
    return {"segment": seg, "control": _pool(others, rate), "control_segments": len(others)}


def baseline(
    analytics: Analytics,
    engine: Engine,
    project_id: int,
    scope: Scope,
    fired_at: dt.datetime,
) -> dict[str, Any]:
    """What a firing stores: its scope and the measure over the window before it."""
    since = fired_at - dt.timedelta(seconds=scope.window)
    return {
        "scope": scope.to_json(),
        "before": _json_safe(measure_scope(analytics, engine, project_id, scope, since, fired_at)),
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _diff(
    a: Mapping[str, Any] | None, b: Mapping[str, Any] | None
) -> tuple[float | None, float | None]:
    """``a - b`` and its standard error (``None`` where unknown)."""
    if not a or not b or a.get("value") is None or b.get("value") is None:
        return None, None
    sa_, sb = _se(a), _se(b)
    se = None if sa_ is None or sb is None else math.hypot(sa_, sb)
    return float(a["value"]) - float(b["value"]), se


def _ab_arms(
    engine: Engine, project_id: int, firing_id: int, scope: Scope, now: dt.datetime
) -> dict[str, Any] | None:
    t = models.ab_tests
    with engine.connect() as conn:
        test = conn.execute(sa.select(t).where(t.c.firing_id == firing_id)).first()
    if test is None:
        return None
    # the arms are compared as the A/B test compares them: on evidence, never the bare prior
    measure = scope.measure if scope.measure in ("positive_rate", "rating") else "observed_quality"
    arms: dict[str, dict[str, Any]] = {}
    for arm, values in _arm_observations(engine, project_id, test, measure, now).items():
        if not values:
            continue
        n, total = len(values), math.fsum(values)
        if measure == "positive_rate":
            low, high = wilson_interval(total, n)
        else:
            low, high = t_interval(total, math.fsum(v * v for v in values), n)
        finite = math.isfinite(low) and math.isfinite(high)
        arms[arm] = _estimate(total / n, low if finite else None, high if finite else None, n)
    return {"test_id": int(test.id), "state": test.state, "measure": measure, **arms}


def _arm_observations(
    engine: Engine, project_id: int, test: Any, measure: str, now: dt.datetime
) -> dict[str, list[float]]:
    """Per arm, one observation of ``measure`` per interaction the A/B test counts: those of
    its two versions that *arrived* (``received_at``) while it ran, whatever their ``ts``, read
    from the hot store as :class:`~closedloop.act.ab.ABEvaluator` reads them. ``rating`` and
    ``positive_rate`` fold each interaction's user feedback as :func:`metrics` does (the mean
    scaled rating; the latest thumbs)."""
    i, f = models.interactions, models.feedback
    arm_of = {str(test.control_version): "control", str(test.candidate_version): "candidate"}
    ours = sa.and_(
        i.c.project_id == project_id,
        i.c.prompt_name == test.prompt,
        i.c.prompt_version.in_(list(arm_of)),
        i.c.received_at >= utc(test.started_at),
        i.c.received_at < utc(test.ended_at or now),
    )
    out: dict[str, list[float]] = {"control": [], "candidate": []}
    with engine.connect() as conn:
        if measure == "observed_quality":
            rated = conn.execute(
                sa.select(i.c.prompt_version, i.c.quality).where(
                    ours,
                    i.c.quality.is_not(None),
                    i.c.quality_basis.in_(("explicit", "implicit")),
                )
            )
            for r in rated:
                out[arm_of[r.prompt_version]].append(float(r.quality))
            return out
        column = f.c.thumbs if measure == "positive_rate" else f.c.rating
        rows = conn.execute(
            sa.select(
                i.c.id, i.c.prompt_version, f.c.thumbs, f.c.rating, f.c.rating_min, f.c.rating_max
            )
            .join(f, sa.and_(f.c.project_id == i.c.project_id, f.c.interaction_id == i.c.id))
            .where(ours, f.c.source == "user", column.is_not(None))
            .order_by(f.c.ts, f.c.id)
        ).all()
    folded: dict[str, tuple[str, list[float]]] = {}
    for fb in rows:
        _, values = folded.setdefault(fb.id, (arm_of[fb.prompt_version], []))
        if measure == "positive_rate":
            values[:] = [1.0 if fb.thumbs > 0 else 0.0]  # the latest thumbs
        else:
            low = 1.0 if fb.rating_min is None else float(fb.rating_min)
            high = 5.0 if fb.rating_max is None else float(fb.rating_max)
            if high != low:
                values.append((float(fb.rating) - low) / (high - low))
    for arm, values in folded.values():
        if values:
            out[arm].append(math.fsum(values) / len(values))
    return out


_CAVEATS = {
    "before_after": "no control: liable to regression to the mean",
    "diff_in_diff": "corrects for changes shared by all segments, not for the segment having "
    "been picked at a low; a rule `holdout` gives a control picked the same way",
    "held_out": "a control firing: recorded, not acted on; its change is what the rule's "
    "treated firings are compared with",
}


def rule_summaries(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per rule with a hold-out: the treated firings' mean change minus the held-out firings'
    mean change (both picked by the same condition, so regression to the mean cancels), with
    its 95 % interval."""
    out = []
    for rule in sorted({r["rule"] for r in rows}):
        mine = [r for r in rows if r["rule"] == rule and r["naive_change"] is not None]
        treated = [r for r in mine if not r["held_out"]]
        held = [r for r in mine if r["held_out"]]
        if not treated or not held:
            continue
        mean_t, se_t = _mean_change(treated)
        mean_h, se_h = _mean_change(held)
        effect = mean_t - mean_h
        se = None if se_t is None or se_h is None else math.hypot(se_t, se_h)
        measure = treated[0]["scope"]["measure"]
        out.append(
            {
                "rule": rule,
                "method": "holdout",
                "measure": measure,
                "treated": len(treated),
                "held_out": len(held),
                "treated_change": mean_t,
                "held_out_change": mean_h,
                "effect": effect,
                "low": None if se is None else effect - _Z * se,
                "high": None if se is None else effect + _Z * se,
                "verdict": _verdict(effect, se, measure, all(r["complete"] for r in mine)),
            }
        )
    return out


def _mean_change(rows: list[dict[str, Any]]) -> tuple[float, float | None]:
    changes = [float(r["naive_change"]) for r in rows]
    mean = sum(changes) / len(changes)
    ses = [_diff(r["after"]["segment"], r["before"]["segment"])[1] for r in rows]
    known = [x for x in ses if x is not None]
    if len(known) < len(ses):
        return mean, None
    return mean, math.sqrt(sum(x * x for x in known)) / len(known)


def _verdict(effect: float | None, se: float | None, measure: str, complete: bool) -> str:
    if effect is None:
        return "no data"
    if se is None:
        return "no interval"
    sign = -1.0 if measure in LOWER_IS_BETTER else 1.0
    low, high = sorted((sign * (effect - _Z * se), sign * (effect + _Z * se)))
    if low > 0:
        return "improved"
    if high < 0:
        return "worsened"
    return "no clear change" if complete else "too early to tell"


def effect_report(
    engine: Engine,
    analytics: Analytics,
    project_id: int,
    *,
    rule: str | None = None,
    since: dt.datetime | None = None,
    limit: int = 100,
    now: dt.datetime | None = None,
) -> list[dict[str, Any]]:
    """Each (not dry-run) firing with its metric before and after, the control used, and the
    effect with its 95 % interval and a verdict; most recent first."""
    now = now or utcnow()
    f = models.firings
    query = sa.select(f).where(f.c.project_id == project_id, f.c.dry_run.is_(False))
    if rule is not None:
        query = query.where(f.c.rule_name == rule)
    if since is not None:
        query = query.where(f.c.fired_at >= since)
    with engine.connect() as conn:
        rows = conn.execute(query.order_by(f.c.fired_at.desc(), f.c.id.desc()).limit(limit)).all()
    out: list[dict[str, Any]] = []
    for row in rows:
        base = json.loads(row.baseline or "{}")
        if "scope" not in base:
            continue
        scope = Scope.from_json(base["scope"])
        fired = row.fired_at if row.fired_at.tzinfo else row.fired_at.replace(tzinfo=dt.UTC)
        until = min(fired + dt.timedelta(seconds=scope.window), now)
        complete = until >= fired + dt.timedelta(seconds=scope.window)
        before = base["before"]
        after = _json_safe(measure_scope(analytics, engine, project_id, scope, fired, until))
        naive, naive_se = _diff(after["segment"], before["segment"])
        ab = _ab_arms(engine, project_id, int(row.id), scope, now)
        if ab is not None and "control" in ab and "candidate" in ab:
            method = "ab_holdout"
            effect, se = _diff(ab["candidate"], ab["control"])
            measure = ab["measure"]
        elif after.get("control") and before.get("control") and naive is not None:
            method = "diff_in_diff"
            control_change, control_se = _diff(after["control"], before["control"])
            effect = None if control_change is None else naive - control_change
            se = (
                None if naive_se is None or control_se is None else math.hypot(naive_se, control_se)
            )
            measure = scope.measure
        else:
            method, effect, se, measure = "before_after", naive, naive_se, scope.measure
        if base.get("held_out"):
            method, effect, se, measure = "held_out", naive, naive_se, scope.measure
        out.append(
            {
                "firing_id": int(row.id),
                "held_out": bool(base.get("held_out")),
                "rule": row.rule_name,
                "segment": row.segment,
                "fired_at": fired.isoformat(),
                "measure": measure,
                "scope": scope.to_json(),
                "before": before,
                "after": after,
                "ab": ab,
                "method": method,
                "effect": effect,
                "low": None if effect is None or se is None else effect - _Z * se,
                "high": None if effect is None or se is None else effect + _Z * se,
                "naive_change": naive,
                "complete": complete,
                "verdict": _verdict(effect, se, measure, complete),
                "caveat": _CAVEATS.get(method),
            }
        )
    return out
