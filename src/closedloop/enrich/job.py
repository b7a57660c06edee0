"""The enrichment job: join feedback and signals to interactions, derive measures, estimate
quality, keep session aggregates. It runs in the worker (``closedloop worker``, or the worker
thread of ``serve`` and of the SDK's embedded mode) as the recurring ``enrich`` job.

What the store marks tells it what to do, so nothing depends on clocks agreeing between
processes:

* feedback and signals arrive ``pending``. One whose interaction is in the store becomes
  ``joined`` and marks that interaction for (re)enrichment; one still without it after
  ``join_wait_seconds`` becomes ``orphaned`` with a reason (``interaction_missing``, or
  ``interaction_archived`` when the id ledger shows the interaction left the hot store). An
  orphan whose interaction arrives later still joins: nothing is dropped.
* an interaction with ``enriched_at IS NULL`` is (re)enriched together with its session;
  sessions whose abandonment window has since closed are revisited.

Concurrent runs are safe: state only moves forward, new feedback always re-marks its
interaction, and a run that computed from an older snapshot is corrected by the next one.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from closedloop.enrich.sessions import (
    SessionParams,
    SessionResult,
    Turn,
    TurnResult,
    enrich_session,
    user_text,
)
from closedloop.events import Feedback, Interaction, Signal
from closedloop.store import models
from closedloop.store.db import single_flight, utc, utcnow

__all__ = ["EnrichParams", "EnrichStats", "Enricher", "JoinStateCollector"]

log = logging.getLogger(__name__)

_interaction = msgspec.json.Decoder(Interaction)
_feedback = msgspec.json.Decoder(Feedback)
_signal = msgspec.json.Decoder(Signal)
_CHUNK = 400  # ids per IN (...) list
_SESSION_KEY = ("project_id", "session_id")
_LOCK_KEY = 0x636C_656E_7269_6368  # "clenrich": the advisory lock of the enrich job


@dataclass(frozen=True, kw_only=True)
class EnrichParams:
    """Configuration of :class:`Enricher`.

    Parameters
    ----------
    join_wait_seconds
        How long feedback and signals wait for their interaction before they are orphaned.
    batch
        Most interactions (and pending feedback or signals) taken per pass.
    max_session_turns
        Most recent interactions of a session read to derive its measures.
    session
        Measures, quality and abandonment settings.
    time_budget_seconds
        A job stops starting new passes after this long (the next run continues).
    """

    join_wait_seconds: float = 900.0
    batch: int = 500
    max_session_turns: int = 500
    session: SessionParams = field(default_factory=SessionParams)
    time_budget_seconds: float = 20.0


@dataclass
class EnrichStats:
    """What one pass did."""

    joined: int = 0
    late_joined: int = 0
    orphaned: int = 0
    interactions: int = 0
    sessions: int = 0

    def add(self, other: EnrichStats) -> None:
        """Add ``other``'s counts to these."""
        for name in ("joined", "late_joined", "orphaned", "interactions", "sessions"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    @property
    def busy(self) -> bool:
        """Whether the pass found anything to do."""
        return bool(self.joined or self.late_joined or self.orphaned or self.interactions)


class _Counters:
    def __init__(self, registry: CollectorRegistry | None) -> None:
        r = registry or CollectorRegistry()
        self.joined = Counter(
            "closedloop_enrich_joined",
            "Feedback and signals joined to their interaction, by type.",
            ["type"],
            registry=r,
        )
        self.late = Counter(
            "closedloop_enrich_late_joined",
            "Orphaned feedback and signals whose interaction arrived after all, by type.",
            ["type"],
            registry=r,
        )
        self.orphaned = Counter(
            "closedloop_enrich_orphaned",
            "Feedback and signals counted as orphaned, by type and reason.",
            ["type", "reason"],
            registry=r,
        )
        self.enriched = Counter(
            "closedloop_enrich_interactions", "Interactions (re)enriched.", registry=r
        )


_TYPES: dict[str, sa.Table] = {"feedback": models.feedback, "signal": models.signals}


class Enricher:
    """Run enrichment passes over the hot store.

    Parameters
    ----------
    engine
        The hot store.
    params
        Waits, batch sizes, measure and quality settings.
    registry
        Prometheus registry for the job's counters (a private one by default).
    """

    def __init__(
        self,
        engine: Engine,
        params: EnrichParams | None = None,
        *,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.engine = engine
        self.params = params if params is not None else EnrichParams()
        self._counters = _Counters(registry)

    def __call__(self, job: object = None) -> None:
        """The ``enrich`` job handler: passes until nothing is left or the budget is spent."""
        self.run()

    def run(self, *, now: dt.datetime | None = None) -> EnrichStats:
        """Passes until one finds nothing to do (or the time budget is spent).

        On PostgreSQL one run at a time holds an advisory lock; a run that finds it taken
        returns at once (another worker is enriching), so workers never race on a session.
        """
        total = EnrichStats()
        with single_flight(self.engine, _LOCK_KEY) as mine:
            if not mine:
                return total
            deadline = time.monotonic() + self.params.time_budget_seconds
            while True:
                stats = self.run_once(now=now)
                total.add(stats)
                if not stats.busy or time.monotonic() > deadline:
                    return total

    def run_once(self, *, now: dt.datetime | None = None) -> EnrichStats:
        """One pass: join, orphan, then enrich what is marked, session by session."""
        now = now or utcnow()
        stats = EnrichStats()
        for type_, table in _TYPES.items():
            self._join_pending(type_, table, now, stats)
        with self.engine.connect() as conn:
            dirty = conn.execute(
                sa.select(
                    models.interactions.c.project_id,
                    models.interactions.c.id,
                    models.interactions.c.session_id,
                )
                .where(models.interactions.c.enriched_at.is_(None))
                .limit(self.params.batch)
            ).all()
            due = self._due_sessions(conn, now)
        work: dict[int, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
        for project_id, session_id in due:
            work[project_id][0].add(session_id)
        for row in dirty:
            sessions, single = work[row.project_id]
            if row.session_id is None:
                single.add(row.id)
            else:
                sessions.add(row.session_id)
        for project_id, (sessions, single) in sorted(work.items()):
            for part in _chunks(sorted(sessions), 100):
                with self.engine.begin() as conn:
                    older = self._sessions(conn, project_id, part, now, stats)
                single |= older & {r.id for r in dirty if r.project_id == project_id}
            for part in _chunks(sorted(single), 200):
                with self.engine.begin() as conn:
                    self._singles(conn, project_id, part, now, stats)
        self._counters.enriched.inc(stats.interactions)
        return stats

    # -- joins -------------------------------------------------------------------------------

    def _join_pending(
        self, type_: str, table: sa.Table, now: dt.datetime, stats: EnrichStats
    ) -> None:
        i = models.interactions
        with self.engine.begin() as conn:
            rows = conn.execute(
                sa.select(table.c.project_id, table.c.id, table.c.interaction_id)
                .join(
                    i,
                    sa.and_(i.c.project_id == table.c.project_id, i.c.id == table.c.interaction_id),
                )
                .where(table.c.join_state == "pending")
                .limit(self.params.batch)
            ).all()
            by_project: dict[int, list[Any]] = defaultdict(list)
            for row in rows:
                by_project[row.project_id].append(row)
            for project_id, found in by_project.items():
                for part in _chunks(found, _CHUNK):
                    conn.execute(
                        table.update()
                        .where(
                            table.c.project_id == project_id, table.c.id.in_([r.id for r in part])
                        )
                        .values(join_state="joined", orphan_reason=None)
                    )
                    conn.execute(
                        i.update()
                        .where(
                            i.c.project_id == project_id,
                            i.c.id.in_({r.interaction_id for r in part}),
                        )
                        .values(enriched_at=None)
                    )
            stats.joined += len(rows)
            self._counters.joined.labels(type_).inc(len(rows))

            cutoff = now - dt.timedelta(seconds=self.params.join_wait_seconds)
            hot = sa.exists().where(
                i.c.project_id == table.c.project_id, i.c.id == table.c.interaction_id
            )
            ledger = models.event_ids
            archived = sa.exists().where(
                ledger.c.project_id == table.c.project_id,
                ledger.c.event_id == table.c.interaction_id,
                ledger.c.type == "interaction",
            )
            waiting = sa.and_(table.c.join_state == "pending", table.c.received_at < cutoff, ~hot)
            for reason, condition in (
                ("interaction_archived", archived),
                ("interaction_missing", sa.true()),
            ):
                n = conn.execute(
                    table.update()
                    .where(waiting, condition)
                    .values(join_state="orphaned", orphan_reason=reason)
                ).rowcount
                if n:
                    stats.orphaned += n
                    self._counters.orphaned.labels(type_, reason).inc(n)

    def _due_sessions(self, conn: Connection, now: dt.datetime) -> list[tuple[int, str]]:
        if not self.params.session.derive:
            return []
        s = models.sessions
        closed = now - dt.timedelta(seconds=self.params.session.abandon_after_seconds)
        rows = conn.execute(
            sa.select(s.c.project_id, s.c.session_id)
            .where(s.c.abandoned.is_(None), s.c.last_ts < closed)
            .limit(self.params.batch)
        ).all()
        return [(r.project_id, r.session_id) for r in rows]

    # -- one session, one interaction ---------------------------------------------------------

    def _sessions(
        self,
        conn: Connection,
        project_id: int,
        session_ids: Sequence[str],
        now: dt.datetime,
        stats: EnrichStats,
    ) -> set[str]:
        """Enrich the recent turns of ``session_ids`` (in bulk: a few statements for all);
        return the ids of marked interactions too old to be among them."""
        i = models.interactions
        limit = self.params.max_session_turns
        counts: dict[str, int] = dict(
            conn.execute(
                sa.select(i.c.session_id, sa.func.count())
                .where(i.c.project_id == project_id, i.c.session_id.in_(session_ids))
                .group_by(i.c.session_id)
            ).all()
        )
        columns = (i.c.id, i.c.ts, i.c.session_id, i.c.user_id, i.c.body, i.c.enriched_at)
        small = [sid for sid in session_ids if 0 < counts.get(sid, 0) <= limit]
        rows: list[Any] = []
        for part in _chunks(small, _CHUNK):
            rows += conn.execute(
                sa.select(*columns).where(i.c.project_id == project_id, i.c.session_id.in_(part))
            ).all()
        older: set[str] = set()
        firsts: dict[str, dt.datetime] = {}
        totals: dict[str, dict[str, int]] = defaultdict(dict)  # long sessions: whole counts
        for sid in session_ids:
            if counts.get(sid, 0) > limit:  # a long session: its most recent turns only
                recent = conn.execute(
                    sa.select(*columns)
                    .where(i.c.project_id == project_id, i.c.session_id == sid)
                    .order_by(i.c.ts.desc(), i.c.id.desc())
                    .limit(limit)
                ).all()
                marked = conn.execute(
                    sa.select(i.c.id).where(
                        i.c.project_id == project_id,
                        i.c.session_id == sid,
                        i.c.enriched_at.is_(None),
                    )
                ).scalars()
                older |= set(marked) - {r.id for r in recent}
                rows += recent
                first = conn.execute(
                    sa.select(sa.func.min(i.c.ts)).where(
                        i.c.project_id == project_id, i.c.session_id == sid
                    )
                ).scalar_one()
                firsts[sid] = utc(first)
                for name, table in (("feedback", models.feedback), ("signals", models.signals)):
                    totals[sid][name] = conn.execute(
                        sa.select(sa.func.count())
                        .select_from(table)
                        .join(
                            i,
                            sa.and_(
                                i.c.project_id == table.c.project_id,
                                i.c.id == table.c.interaction_id,
                            ),
                        )
                        .where(table.c.project_id == project_id, i.c.session_id == sid)
                    ).scalar_one()
        by_session: dict[str, list[Any]] = defaultdict(list)
        for row in rows:
            by_session[row.session_id].append(row)
        ordered = {
            sid: sorted(found, key=lambda r: (utc(r.ts), r.id)) for sid, found in by_session.items()
        }
        turns = self._turns(
            conn, project_id, [r for found in ordered.values() for r in found], stats
        )
        results: list[SessionResult] = []
        upserts: list[dict[str, Any]] = []
        for sid, found in ordered.items():
            result = enrich_session(
                [turns[r.id] for r in found], now=now, params=self.params.session
            )
            results.append(result)
            summary = result.summary
            first = min(summary.first_ts, firsts.get(sid, summary.first_ts))
            upserts.append(
                {
                    "project_id": project_id,
                    "session_id": sid,
                    "user_id": next(
                        (r.user_id for r in reversed(found) if r.user_id is not None), None
                    ),
                    "first_ts": first,
                    "last_ts": summary.last_ts,
                    "turns": counts.get(sid, len(found)),
                    "feedback_count": totals[sid].get("feedback", summary.feedback_count),
                    "signal_count": totals[sid].get("signals", summary.signal_count),
                    "last_interaction_id": summary.last_interaction_id,
                    "abandoned": summary.abandoned,
                    "abandon_source": summary.abandon_source,
                    "mean_quality": summary.mean_quality,
                    "updated_at": now,
                }
            )
        self._save_turns(conn, project_id, [t for r in results for t in r.turns], now)
        if upserts:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            stmt = dialect.insert(models.sessions)
            update = {c: stmt.excluded[c] for c in upserts[0] if c not in _SESSION_KEY}
            conn.execute(
                stmt.on_conflict_do_update(index_elements=list(_SESSION_KEY), set_=update),
                upserts,
            )
        stats.interactions += sum(len(r.turns) for r in results)
        stats.sessions += len(results)
        return older

    def _singles(
        self,
        conn: Connection,
        project_id: int,
        interaction_ids: Sequence[str],
        now: dt.datetime,
        stats: EnrichStats,
    ) -> None:
        """Enrich interactions on their own (no session: nothing derived from a timeline)."""
        i = models.interactions
        rows = conn.execute(
            sa.select(i.c.id, i.c.ts, i.c.body).where(
                i.c.project_id == project_id, i.c.id.in_(interaction_ids)
            )
        ).all()
        if not rows:
            return
        turns = self._turns(conn, project_id, rows, stats)
        params = SessionParams(
            measures=self.params.session.measures,
            estimator=self.params.session.estimator,
            abandon_after_seconds=self.params.session.abandon_after_seconds,
            derive=False,  # no session: nothing to derive a rephrase or abandonment from
        )
        done = [
            t for r in rows for t in enrich_session([turns[r.id]], now=now, params=params).turns
        ]
        self._save_turns(conn, project_id, done, now)
        stats.interactions += len(done)

    def _turns(
        self, conn: Connection, project_id: int, rows: Sequence[Any], stats: EnrichStats
    ) -> dict[str, Turn]:
        """Turns for ``rows`` (interactions in time order) with what refers to them, which
        is joined now (counting orphans that joined late)."""
        ids = [r.id for r in rows]
        feedback: dict[str, list[tuple[dt.datetime, Feedback]]] = defaultdict(list)
        signals: dict[str, list[tuple[dt.datetime, Signal]]] = defaultdict(list)
        for type_, table in _TYPES.items():
            for part in _chunks(ids, _CHUNK):
                mine = sa.and_(table.c.project_id == project_id, table.c.interaction_id.in_(part))
                late = conn.execute(
                    table.update()
                    .where(mine, table.c.join_state == "orphaned")
                    .values(join_state="joined", orphan_reason=None)
                ).rowcount
                if late:
                    stats.late_joined += late
                    self._counters.late.labels(type_).inc(late)
                joined = conn.execute(
                    table.update()
                    .where(mine, table.c.join_state == "pending")
                    .values(join_state="joined")
                ).rowcount
                if joined:
                    stats.joined += joined
                    self._counters.joined.labels(type_).inc(joined)
                found = conn.execute(
                    sa.select(table.c.interaction_id, table.c.ts, table.c.body)
                    .where(mine)
                    .order_by(table.c.ts, table.c.id)
                )
                for ref, ts, body in found:
                    when = utc(ts)
                    if type_ == "feedback":
                        feedback[ref].append((when, _feedback.decode(body)))
                    else:
                        signals[ref].append((when, _signal.decode(body)))
        turns: dict[str, Turn] = {}
        for r in rows:
            body = _interaction.decode(r.body)
            turns[r.id] = Turn(
                id=r.id,
                ts=utc(r.ts),
                input_text=user_text(body.input),
                output=body.output,
                feedback=tuple(feedback[r.id]),
                signals=tuple(signals[r.id]),
            )
        return turns

    @staticmethod
    def _save_turns(
        conn: Connection, project_id: int, done: Sequence[TurnResult], now: dt.datetime
    ) -> None:
        if not done:
            return
        i = models.interactions
        stmt = (
            i.update()
            .where(i.c.project_id == project_id, i.c.id == sa.bindparam("b_id"))
            .values(
                quality=sa.bindparam("b_quality"),
                quality_basis=sa.bindparam("b_basis"),
                enrichment=sa.bindparam("b_enrichment"),
                enriched_at=now,
            )
        )
        conn.execute(
            stmt,
            [
                {
                    "b_id": t.id,
                    "b_quality": t.quality.value,
                    "b_basis": t.quality.basis,
                    "b_enrichment": json.dumps(_enrichment_json(t)),
                }
                for t in done
            ],
        )


def _enrichment_json(turn: TurnResult) -> dict[str, Any]:
    return {
        # JSON has no infinity: a kept-length ratio over an empty output is stored as null
        "measures": [
            {
                "name": m.name,
                "value": m.value if math.isfinite(m.value) else None,
                "source": m.source,
            }
            for m in turn.measures
        ],
        "evidence": [
            {"name": e.name, "target": e.target, "weight": e.weight, "source": e.source}
            for e in turn.quality.evidence
        ],
    }


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class JoinStateCollector(Collector):
    """Prometheus gauges read from the store at scrape time, so every process agrees:
    feedback and signals still pending and orphaned, by type and reason."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "closedloop_join_state",
            "Feedback and signals not joined to an interaction, by type, state and reason.",
            labels=["type", "state", "reason"],
        )
        try:
            with self.engine.connect() as conn:
                for type_, table in _TYPES.items():
                    rows = conn.execute(
                        sa.select(table.c.join_state, table.c.orphan_reason, sa.func.count())
                        .where(table.c.join_state != "joined")
                        .group_by(table.c.join_state, table.c.orphan_reason)
                    )
                    for state, reason, n in rows:
                        gauge.add_metric([type_, state, reason or ""], n)
        except sa.exc.SQLAlchemyError as exc:  # a scrape must not fail with the database
            log.warning("cannot read join states: %s", exc)
        yield gauge
