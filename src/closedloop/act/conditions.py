"""What makes each kind of rule fire: the triggers a condition finds in the store now.

Each finder returns :class:`Found` triggers with the key that de-duplicates them (a trigger
fires a rule once) and, for the kinds that read a stream (drift alarms, feedback or signal
events), the cursor to keep once they are handled.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.act.actions import Trigger
from closedloop.act.rules import (
    DriftCondition,
    EventCondition,
    EventFilter,
    IssueCondition,
    MetricCondition,
)
from closedloop.analyze.metrics import metrics
from closedloop.analyze.quality_drift import _scaled
from closedloop.analyze.tracker import topic_table
from closedloop.store import models
from closedloop.store.olap import Analytics

__all__ = [
    "Found",
    "drift_triggers",
    "event_triggers",
    "issue_triggers",
    "metric_triggers",
    "stream_head",
    "stream_of",
]

#: Interactions a trigger names for its actions (review tasks, knowledge-base entries).
MAX_INTERACTIONS = 50
#: Feedback (or signal) rows an event rule reads per run.
EVENT_BATCH = 2000
#: Orphaned feedback (or signals) an event rule remembers, to read again if it joins late.
MAX_ORPHANS = 10_000
#: Characters of a signal's text (an edit's kept text) a trigger's snapshot carries.
SNAPSHOT_TEXT = 2000


@dataclass(frozen=True, kw_only=True)
class Found:
    """A trigger, the key that fires it once, and the cursor after it (streams only)."""

    trigger: Trigger
    dedup_key: str
    cursor: dict[str, Any] | None = None
    baseline: dict[str, Any] = field(default_factory=dict)


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _segment_filter(segment: str) -> Any:
    """The interactions of a segment named ``model=NAME@V``, ``prompt=NAME@V`` or ``all``
    (``None`` for the dimensions only DuckDB can segment: topic, tag, cohort)."""
    i = models.interactions
    if segment == "all":
        return sa.true()
    dim, _, value = segment.partition("=")
    if dim not in ("model", "prompt"):
        return None
    name, at, version = value.rpartition("@")
    if not at:
        name, version = value, ""
    col_name = i.c.model_name if dim == "model" else i.c.prompt_name
    col_version = i.c.model_version if dim == "model" else i.c.prompt_version
    if name == "(none)":
        return col_name.is_(None)
    return sa.and_(col_name == name, col_version == version if version else col_version.is_(None))


def negative_interactions(
    engine: Engine,
    project_id: int,
    segment: str,
    *,
    since: dt.datetime,
    negative_quality: float,
    limit: int = MAX_INTERACTIONS,
) -> tuple[str, ...]:
    """The segment's latest interactions since ``since`` whose quality (from feedback or
    signals) is below ``negative_quality``: what a review or a fix should look at."""
    where = _segment_filter(segment)
    if where is None:
        return ()
    i = models.interactions
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(i.c.id)
            .where(
                i.c.project_id == project_id,
                i.c.ts >= since,
                i.c.quality < negative_quality,
                i.c.quality_basis.in_(("explicit", "implicit")),
                where,
            )
            .order_by(i.c.ts.desc())
            .limit(limit)
        )
        return tuple(r.id for r in rows)


def _prompt_of(segment: str) -> str | None:
    if segment.startswith("prompt="):
        value = segment.removeprefix("prompt=")
        name, at, _ = value.rpartition("@")
        return name if at else value
    return None


def metric_triggers(
    analytics: Analytics,
    engine: Engine,
    project_id: int,
    rule: str,
    cond: MetricCondition,
    now: dt.datetime,
    *,
    negative_quality: float,
) -> list[Found]:
    """Each segment whose measure over the last ``window`` is past the threshold, on at least
    ``min_count`` observations."""
    since = now - dt.timedelta(seconds=cond.window)
    topics = topic_table(engine, project_id) if cond.by == "topic" else None
    frame = metrics(
        analytics,
        project_id,
        by=cond.by,
        since=since,
        until=now,
        measures=[cond.metric],
        topics=topics,
    )
    found: list[Found] = []
    for row in frame.itertuples(index=False):
        value, n = row.value, int(row.n)
        if value is None or value != value or n < cond.min_count:
            continue
        if cond.segment is not None and not fnmatch.fnmatchcase(str(row.segment), cond.segment):
            continue
        crossed = value < cond.below if cond.below is not None else value > (cond.above or 0)
        if not crossed:
            continue
        segment = "all" if cond.by == "all" else f"{cond.by}={row.segment}"
        snapshot = {
            "metric": cond.metric,
            "by": cond.by,
            "segment": str(row.segment),
            "value": float(value),
            "low": _num(row.low),
            "high": _num(row.high),
            "n": n,
            "threshold": {"below": cond.below} if cond.below is not None else {"above": cond.above},
            "window_seconds": cond.window,
        }
        trigger = Trigger(
            project_id=project_id,
            rule=rule,
            kind="metric",
            segment=segment,
            fired_at=now,
            snapshot=snapshot,
            interaction_ids=negative_interactions(
                engine, project_id, segment, since=since, negative_quality=negative_quality
            ),
            prompt=_prompt_of(segment),
        )
        found.append(Found(trigger=trigger, dedup_key=f"metric|{segment}|{now.isoformat()}"))
    return found


def _num(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


def drift_triggers(
    engine: Engine,
    project_id: int,
    rule: str,
    cond: DriftCondition,
    now: dt.datetime,
    cursor: dict[str, Any],
    *,
    negative_quality: float,
) -> list[Found]:
    """Each drift alarm stored after the cursor that matches."""
    a = models.drift_alarms
    after = int(cursor.get("alarm_id", 0))
    query = sa.select(a).where(a.c.project_id == project_id, a.c.id > after).order_by(a.c.id)
    if cond.drift != "any":
        query = query.where(a.c.kind == cond.drift)
    with engine.connect() as conn:
        rows = conn.execute(query.limit(1000)).all()
    found: list[Found] = []
    for row in rows:
        next_cursor = {**cursor, "alarm_id": int(row.id)}
        matches = (cond.segment is None or fnmatch.fnmatchcase(row.segment, cond.segment)) and (
            cond.measure is None or row.measure == cond.measure
        )
        if not matches:
            # the cursor still moves past it: carried by the next match, or saved at the end
            cursor = next_cursor
            continue
        snapshot = {
            "alarm_id": int(row.id),
            "kind": row.kind,
            "segment": row.segment,
            "measure": row.measure,
            "since": _aware(row.since).isoformat(),
            "detected_at": _aware(row.detected_at).isoformat(),
            "before": json.loads(row.before),
            "after": json.loads(row.after),
            "details": json.loads(row.details),
        }
        trigger = Trigger(
            project_id=project_id,
            rule=rule,
            kind="drift",
            segment=row.segment,
            fired_at=now,
            snapshot=snapshot,
            interaction_ids=negative_interactions(
                engine,
                project_id,
                row.segment,
                since=_aware(row.since),
                negative_quality=negative_quality,
            ),
            prompt=_prompt_of(row.segment),
        )
        found.append(Found(trigger=trigger, dedup_key=f"drift|{row.id}", cursor=next_cursor))
        cursor = next_cursor
    if rows and (not found or found[-1].cursor != cursor):
        # alarms that did not match still move the cursor: a last marker with no trigger
        found.append(Found(trigger=_NO_TRIGGER, dedup_key="", cursor=cursor))
    return found


#: A marker that only carries a cursor forward (no rule fires on it).
_NO_TRIGGER = Trigger(
    project_id=0,
    rule="",
    kind="manual",
    segment="",
    fired_at=dt.datetime.min.replace(tzinfo=dt.UTC),
)


def is_marker(found: Found) -> bool:
    """Whether ``found`` only moves a cursor."""
    return found.trigger is _NO_TRIGGER


def issue_triggers(
    engine: Engine, project_id: int, rule: str, cond: IssueCondition, now: dt.datetime
) -> list[Found]:
    """Each issue in one of the states, large and impactful enough (once per issue and state)."""
    c, m, i = models.clusters, models.cluster_members, models.interactions
    found: list[Found] = []
    with engine.connect() as conn:
        issues = conn.execute(
            sa.select(c).where(
                c.c.project_id == project_id,
                c.c.kind == "issue",
                c.c.state.in_(cond.issue),
                c.c.size >= cond.min_size,
            )
        ).all()
        for row in issues:
            stats = json.loads(row.stats or "{}")
            if float(stats.get("impact", 0.0)) < cond.min_impact:
                continue
            members = conn.execute(
                sa.select(m.c.ref_id, i.c.prompt_name)
                .join(i, sa.and_(i.c.project_id == m.c.project_id, i.c.id == m.c.ref_id))
                .where(
                    m.c.project_id == project_id,
                    m.c.kind == "issue",
                    m.c.cluster_id == row.id,
                )
                .order_by(m.c.ts.desc())
                .limit(MAX_INTERACTIONS)
            ).all()
            prompts = [p.prompt_name for p in members if p.prompt_name]
            prompt = max(set(prompts), key=prompts.count) if prompts else None
            snapshot = {
                "issue_id": int(row.id),
                "name": row.name,
                "state": row.state,
                "size": int(row.size),
                "keywords": json.loads(row.keywords or "[]"),
                "stats": stats,
            }
            trigger = Trigger(
                project_id=project_id,
                rule=rule,
                kind="issue",
                segment=f"issue={row.id}",
                fired_at=now,
                snapshot=snapshot,
                interaction_ids=tuple(r.ref_id for r in members),
                issue_id=int(row.id),
                prompt=prompt,
            )
            found.append(Found(trigger=trigger, dedup_key=f"issue|{row.id}|{row.state}"))
    return found


def _matches_version(name: str | None, version: str | None, wanted: str) -> bool:
    if "@" in wanted:
        want_name, _, want_version = wanted.rpartition("@")
        return name == want_name and version == want_version
    return name == wanted


@dataclass(frozen=True)
class _Stream:
    """What an event rule reads: the feedback, or the signals of one kind."""

    name: str  # the prefix of its triggers' keys
    table: sa.Table
    columns: tuple[Any, ...]  # what its filter and snapshot need besides the shared ones
    where: Any


def _stream(kind: str) -> _Stream:
    """The ``event`` stream (feedback) or a ``signal:KIND`` stream (the signals of a kind)."""
    if kind.startswith("signal:"):
        s = models.signals
        where = s.c.kind == kind.removeprefix("signal:")
        return _Stream("signal", s, (s.c.kind, s.c.body), where)
    if kind != "event":
        raise ValueError(f"no stream {kind!r}: drift, event or signal:KIND")
    f = models.feedback
    columns = (f.c.thumbs, f.c.rating, f.c.rating_min, f.c.rating_max, f.c.label)
    return _Stream("feedback", f, (*columns, f.c.correction, f.c.comment, f.c.source), sa.true())


def stream_of(cond: object) -> str | None:
    """The stream a rule reads past a cursor (``drift``, ``event`` for feedback, or
    ``signal:KIND`` for the signals of one kind), or ``None``: the stream its cursor is kept
    for. A rule whose stream changes (another signal kind among them) restarts at its head, as
    its cursor only moved past the rows it read."""
    if isinstance(cond, DriftCondition):
        return "drift"
    if isinstance(cond, EventCondition):
        return "event" if cond.event.signal is None else f"signal:{cond.event.signal}"
    return None


def event_triggers(
    engine: Engine,
    project_id: int,
    rule: str,
    cond: EventCondition,
    now: dt.datetime,
    cursor: dict[str, Any],
    *,
    settle_seconds: float = 0.0,
) -> list[Found]:
    """Each feedback (or, with ``signal``, each signal of that kind) after the cursor that
    matches the filter, once joined to its interaction.

    Rows are read in arrival order, only once they are ``settle_seconds`` old (the arrival time
    is stamped just before the commit: a row stamped earlier may commit a little later). A row
    still waiting for its interaction holds the cursor back; a row the enrichment job orphaned
    is remembered (the last :data:`MAX_ORPHANS`) and read again if it joins late.
    """
    flt = cond.event
    stream = _stream("event" if flt.signal is None else f"signal:{flt.signal}")
    t, i = stream.table, models.interactions
    orphans = [str(o) for o in cursor.get("orphans", [])]
    columns = (
        t.c.id,
        t.c.received_at,
        t.c.interaction_id,
        t.c.join_state,
        *stream.columns,
        i.c.prompt_name,
        i.c.prompt_version,
        i.c.model_name,
        i.c.model_version,
    )
    joined = sa.and_(i.c.project_id == t.c.project_id, i.c.id == t.c.interaction_id)
    ours = sa.and_(t.c.project_id == project_id, stream.where)
    late: list[Any] = []
    with engine.connect() as conn:
        for start in range(0, len(orphans), 500):
            late += conn.execute(
                sa.select(*columns)
                .outerjoin(i, joined)
                .where(ours, t.c.join_state == "joined", t.c.id.in_(orphans[start : start + 500]))
            ).all()
        waiting = conn.execute(
            sa.select(sa.func.min(t.c.received_at)).where(ours, t.c.join_state == "pending")
        ).scalar()
        query = (
            sa.select(*columns)
            .outerjoin(i, joined)
            .where(
                ours,
                t.c.join_state != "pending",
                t.c.received_at <= now - dt.timedelta(seconds=settle_seconds),
            )
            .order_by(t.c.received_at, t.c.id)
            .limit(EVENT_BATCH)
        )
        if waiting is not None:
            query = query.where(t.c.received_at < waiting)
        if cursor.get("received_at"):
            at = dt.datetime.fromisoformat(cursor["received_at"])
            query = query.where(
                sa.or_(
                    t.c.received_at > at,
                    sa.and_(t.c.received_at == at, t.c.id > cursor.get("id", "")),
                )
            )
        rows = conn.execute(query).all()
    late_ids = {r.id for r in late}
    remaining = list(orphans)  # each late row leaves the list as it is handled
    known = set(remaining)
    found: list[Found] = []
    for row in [*late, *rows]:
        if row.id in late_ids:
            remaining = [o for o in remaining if o != row.id]
        else:
            if row.join_state == "orphaned" and row.id not in known:
                remaining.append(row.id)
                known.add(row.id)
            cursor = {**cursor, "received_at": _aware(row.received_at).isoformat(), "id": row.id}
        cursor = {**cursor, "orphans": remaining[-MAX_ORPHANS:]}
        if row.join_state != "joined" or not _event_matches(row, flt):
            continue
        prompt = row.prompt_name
        segment = (
            f"prompt={prompt}" + (f"@{row.prompt_version}" if row.prompt_version else "")
            if prompt
            else "all"
        )
        snapshot = {
            **(_feedback_snapshot(row) if flt.signal is None else _signal_snapshot(row)),
            "prompt": {"name": prompt, "version": row.prompt_version} if prompt else None,
            "model": {"name": row.model_name, "version": row.model_version}
            if row.model_name
            else None,
        }
        trigger = Trigger(
            project_id=project_id,
            rule=rule,
            kind="event",
            segment=segment,
            fired_at=now,
            snapshot=snapshot,
            interaction_ids=(row.interaction_id,),
            prompt=prompt,
        )
        found.append(Found(trigger=trigger, dedup_key=f"{stream.name}|{row.id}", cursor=cursor))
    if (rows or late) and (not found or found[-1].cursor != cursor):
        found.append(Found(trigger=_NO_TRIGGER, dedup_key="", cursor=cursor))
    return found


def _feedback_snapshot(row: Any) -> dict[str, Any]:
    return {
        "feedback_id": row.id,
        "interaction_id": row.interaction_id,
        "thumbs": row.thumbs,
        "rating": row.rating,
        "label": row.label,
        "correction": row.correction,
        "comment": row.comment,
        "source": row.source,
    }


def _signal_snapshot(row: Any) -> dict[str, Any]:
    snapshot = {"signal_id": row.id, "interaction_id": row.interaction_id, "kind": row.kind}
    text = json.loads(row.body).get("text")
    if isinstance(text, str):
        snapshot["text"] = text[:SNAPSHOT_TEXT]
    return snapshot


def stream_head(
    engine: Engine, project_id: int, kind: str, *, before: dt.datetime | None = None
) -> dict[str, Any]:
    """The cursor at the end of a stream (``drift`` alarms, or the ``event`` feedback or the
    ``signal:KIND`` signals received ``before``): where a new rule starts, so that it acts on
    what arrives from then on."""
    with engine.connect() as conn:
        if kind == "drift":
            a = models.drift_alarms
            last = conn.execute(
                sa.select(sa.func.max(a.c.id)).where(a.c.project_id == project_id)
            ).scalar()
            return {"alarm_id": int(last or 0)}
        stream = _stream(kind)
        t = stream.table
        row = conn.execute(
            sa.select(t.c.received_at, t.c.id)
            .where(
                t.c.project_id == project_id,
                stream.where,
                t.c.join_state != "pending",
                t.c.received_at <= (before or dt.datetime.max.replace(tzinfo=dt.UTC)),
            )
            .order_by(t.c.received_at.desc(), t.c.id.desc())
            .limit(1)
        ).first()
    if row is None:
        return {"received_at": None}
    return {"received_at": _aware(row.received_at).isoformat(), "id": row.id}


def _event_matches(row: Any, flt: EventFilter) -> bool:
    if flt.signal is not None:
        if row.kind != flt.signal:
            return False
    elif not _feedback_matches(row, flt):
        return False
    if flt.prompt is not None and not _matches_version(
        row.prompt_name, row.prompt_version, flt.prompt
    ):
        return False
    return flt.model is None or _matches_version(row.model_name, row.model_version, flt.model)


def _feedback_matches(row: Any, flt: EventFilter) -> bool:
    checks: list[Callable[[], bool]] = []
    if flt.source != "any":
        checks.append(lambda: row.source == flt.source)
    if flt.thumbs is not None:
        checks.append(lambda: row.thumbs == (1 if flt.thumbs == "up" else -1))
    if flt.correction is not None:
        checks.append(lambda: bool(row.correction) == flt.correction)
    if flt.comment is not None:
        checks.append(lambda: bool(row.comment) == flt.comment)
    if flt.label is not None:
        checks.append(lambda: row.label == flt.label)
    if (below := flt.rating_below) is not None:
        checks.append(lambda: _below(_scaled_rating(row), below))
    return all(check() for check in checks)


def _scaled_rating(row: Any) -> float | None:
    return None if row.rating is None else _scaled(row.rating, row.rating_min, row.rating_max)


def _below(value: float | None, threshold: float) -> bool:
    return value is not None and value < threshold
