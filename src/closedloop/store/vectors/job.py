"""The embedding job: embed stored texts that have no vector for the embedder's model yet.

It runs in the worker as the recurring ``embed`` job, after the commit, never on the ingest
path. Texts are what the store holds, so they are already redacted:

* ``input``: the user's words of an interaction (the text, or the last user message:
  :func:`closedloop.enrich.sessions.user_text` of the stored body);
* ``correction`` and ``comment``: the feedback's non-empty correction and comment.

Each pass takes, across all projects, up to ``batch`` rows without a vector (an anti-join on
the vectors table), embeds them through the cache in one call, and stores the vectors in one
transaction. Rows with no text (an input with no user message, a blank comment) are skipped by
a key cursor within a run, so they never block the rows after them. On PostgreSQL one run at a
time holds an advisory lock: the job is the only writer of ``vectors``, so ``seq`` grows in
commit order, which the ANN indexes' catch-up relies on.

Which rows a run considers:

* Rows whose ``ts`` is past the project's ``vector_days`` (its
  :class:`~closedloop.store.retention.Retention`) are never embedded: the retention job deletes
  those vectors on purpose, so embedding them again would undo it.
* A process keeps a watermark on ``received_at`` (set by the ingest path from the server's
  clock). After a run that left nothing to do, later runs only look at rows received at or after
  ``watermark - margin_seconds``: the margin covers clocks of several servers that disagree a
  little and rows that commit a little after their ``received_at``. The watermark is the largest
  ``received_at`` in the store when the run started (taken from the rows, never from the local
  clock), so steady-state runs cost in proportion to the rows received within the margin; with an
  index on ``(project_id, received_at)`` of ``interactions`` and ``feedback`` the database finds
  them without reading the rest (without it the result is the same, only slower).
* The first run of a process, and then one every ``full_sweep_seconds``, is a full sweep with no
  watermark, so a row the watermark missed (committed very late, say) is embedded all the same.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.engine import Engine

from closedloop.embed.base import Embedder, text_hash
from closedloop.enrich.sessions import user_text
from closedloop.events import Interaction
from closedloop.store import models
from closedloop.store.db import single_flight, utc, utcnow
from closedloop.store.retention import Retention
from closedloop.store.vectors.table import NewVector, insert_vectors

__all__ = ["EmbedParams", "EmbedStats", "EmbeddingJob"]

_interaction = msgspec.json.Decoder(Interaction)
_LOCK_KEY = 0x636C_656D_6265_6464  # "clembedd": the advisory lock of the embed job
_EMPTY = np.zeros(0, dtype=np.float32)  # the vector of a row not embedded yet


@dataclass(frozen=True, kw_only=True)
class EmbedParams:
    """Configuration of :class:`EmbeddingJob`.

    Parameters
    ----------
    batch
        Most rows read, and texts embedded, per pass (default 256).
    max_chars
        Texts are cut to this many characters before embedding (default 2000; the default
        model reads 256 word pieces, about 1000 characters, anyway).
    time_budget_seconds
        A run stops starting new passes after this long (the next run continues).
    margin_seconds
        After a run that left nothing to do, later runs look only at rows received at or after
        the watermark less this (default 600): the most that ``received_at`` of a row committed
        later can be behind the largest one already stored (server clocks that disagree, a row
        that commits after its ``received_at``).
    full_sweep_seconds
        A run at least this long (default 3600) after the start of the last full sweep that
        left nothing to do is a full sweep again, with no watermark (``0``: every run).
    """

    batch: int = 256
    max_chars: int = 2000
    time_budget_seconds: float = 20.0
    margin_seconds: float = 600.0
    full_sweep_seconds: float = 3600.0


@dataclass
class EmbedStats:
    """What a pass or a run did: rows read, vectors stored, rows without text skipped."""

    read: int = 0
    stored: int = 0
    skipped: int = 0

    def add(self, other: EmbedStats) -> None:
        """Add ``other``'s counts to these."""
        self.read += other.read
        self.stored += other.stored
        self.skipped += other.skipped


@dataclass
class _Cursor:
    """Where a run is in each source: (project_id, id) of the last row read."""

    interactions: tuple[int, str] | None = None
    feedback: tuple[int, str] | None = None


@dataclass(frozen=True)
class _Scope:
    """The rows a run considers.

    ``since``: only rows received at or after it (``None``: all, a full sweep). ``keep``: the
    projects known when the run started, grouped by the oldest ``ts`` whose vectors their
    retention keeps (``None``: kept forever). ``high``: the largest ``received_at`` among the
    rows considered when the run started (the next watermark if the run completes).
    """

    since: dt.datetime | None
    keep: dict[dt.datetime | None, tuple[int, ...]]
    high: dt.datetime | None

    @property
    def projects(self) -> tuple[int, ...]:
        return tuple(sorted(p for ids in self.keep.values() for p in ids))

    def where(self, table: sa.Table) -> list[sa.ColumnElement[bool]]:
        """The conditions on ``table`` (``interactions`` or ``feedback``)."""
        conds: list[sa.ColumnElement[bool]] = []
        if self.since is not None:
            # the project list lets an index on (project_id, received_at) serve the range
            conds.append(table.c.project_id.in_(self.projects))
            conds.append(table.c.received_at >= self.since)
        if any(cutoff is not None for cutoff in self.keep):
            conds.append(
                sa.or_(
                    *(
                        table.c.project_id.in_(ids)
                        if cutoff is None
                        else sa.and_(table.c.project_id.in_(ids), table.c.ts >= cutoff)
                        for cutoff, ids in self.keep.items()
                    )
                )
            )
        return conds


class EmbeddingJob:
    """Embed stored texts that have no vector for the embedder's model.

    Parameters
    ----------
    engine
        The hot store.
    embedder
        The embedder, usually an :class:`~closedloop.embed.cache.EmbeddingCache`; its
        ``name`` is stored in ``vectors.model``.
    params
        Batch size, text length, time budget.
    registry
        Prometheus registry for the counters (a private one by default).
    clock
        Seconds of a monotonic clock, for when the next full sweep is due (tests pass their own).
    now
        The current time, for the retention cutoffs (tests pass their own).
    """

    def __init__(
        self,
        engine: Engine,
        embedder: Embedder,
        params: EmbedParams | None = None,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self._clock = clock
        self._now = now
        # the largest received_at seen by a run that left nothing to do, and when the last
        # such full sweep started (per process: a new process starts with a full sweep)
        self.watermark: dt.datetime | None = None
        self._last_full: float | None = None
        self.embedder = embedder
        self.params = params if params is not None else EmbedParams()
        if self.params.batch < 1:
            raise ValueError("batch must be at least 1")
        if self.params.margin_seconds < 0 or self.params.full_sweep_seconds < 0:
            raise ValueError("margin_seconds and full_sweep_seconds must not be negative")
        self._stored = Counter(
            "closedloop_vectors_stored",
            "Vectors stored by the embedding job, by kind.",
            ["kind"],
            registry=registry or CollectorRegistry(),
        )

    def __call__(self, job: object = None) -> None:
        """The ``embed`` job handler: passes until nothing is left or the budget is spent."""
        self.run()

    def run(self) -> EmbedStats:
        """Passes until one finds nothing to do (or the time budget is spent).

        A full sweep on the first run and every ``full_sweep_seconds``; otherwise only the rows
        received since the watermark less the margin. A run that leaves nothing to do moves the
        watermark up to the largest ``received_at`` stored when it started.
        """
        total = EmbedStats()
        with single_flight(self.engine, _LOCK_KEY) as mine:
            if not mine:
                return total
            started = self._clock()
            full = (
                self.watermark is None
                or self._last_full is None
                or started - self._last_full >= self.params.full_sweep_seconds
            )
            since = (
                None
                if full or self.watermark is None
                else self.watermark - dt.timedelta(seconds=self.params.margin_seconds)
            )
            scope = self._scope(since)
            cursor = _Cursor()
            deadline = time.monotonic() + self.params.time_budget_seconds
            while True:
                stats = self._pass(cursor, scope)
                total.add(stats)
                if not stats.read:
                    if scope.high is not None and (
                        self.watermark is None or scope.high > self.watermark
                    ):
                        self.watermark = scope.high
                    if full:
                        self._last_full = started
                    return total
                if time.monotonic() > deadline:
                    return total

    def run_once(self) -> int:
        """One pass from the start over all rows (no watermark); returns how many vectors it
        stored."""
        return self._pass(_Cursor(), self._scope(None, high=False)).stored

    def _scope(self, since: dt.datetime | None, *, high: bool = True) -> _Scope:
        """Every project's retention cutoff and, with ``high``, the largest ``received_at``
        (at or after ``since``) stored now."""
        p = models.projects
        now = self._now()
        keep: dict[dt.datetime | None, list[int]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(sa.select(p.c.id, p.c.retention).order_by(p.c.id)):
                days = Retention.stored(row.retention).vector_days
                cutoff = None if days is None else now - dt.timedelta(days=days)
                keep.setdefault(cutoff, []).append(row.id)
            scope = _Scope(since, {c: tuple(ids) for c, ids in keep.items()}, None)
            if not high:
                return scope
            largest: dt.datetime | None = None
            for table in (models.interactions, models.feedback):
                stmt = sa.select(sa.func.max(table.c.received_at))
                if since is not None:
                    stmt = stmt.where(
                        table.c.project_id.in_(scope.projects), table.c.received_at >= since
                    )
                value = conn.execute(stmt).scalar()
                if value is not None and (largest is None or utc(value) > largest):
                    largest = utc(value)
        return dataclasses.replace(scope, high=largest)

    # -- one pass ----------------------------------------------------------------------------

    def _pass(self, cursor: _Cursor, scope: _Scope) -> EmbedStats:
        stats = EmbedStats()
        todo: list[tuple[NewVector, str]] = []  # (vector without its values, text)
        budget = self.params.batch
        with self.engine.connect() as conn:
            rows = conn.execute(self._interactions(cursor.interactions, budget, scope)).all()
            for r in rows:
                text = user_text(_interaction.decode(r.body).input)
                self._add(todo, stats, r, "input", r.id, r.id, text)
            if rows:
                cursor.interactions = (rows[-1].project_id, rows[-1].id)
            stats.read += len(rows)
            budget -= len(rows)
            if budget > 0:
                rows = conn.execute(self._feedback(cursor.feedback, budget, scope)).all()
                for r in rows:
                    for kind in ("correction", "comment"):
                        if getattr(r, f"has_{kind}"):
                            self._add(
                                todo, stats, r, kind, r.id, r.interaction_id, getattr(r, kind)
                            )
                if rows:
                    cursor.feedback = (rows[-1].project_id, rows[-1].id)
                stats.read += len(rows)
        if todo:
            vectors = self.embedder.embed([text for _, text in todo])
            ready = [
                dataclasses.replace(blank, vector=vectors[j]) for j, (blank, _) in enumerate(todo)
            ]
            with self.engine.begin() as conn:
                stats.stored = insert_vectors(conn, ready, require_source=True)
            for kind in ("input", "correction", "comment"):
                n = sum(1 for v in ready if v.kind == kind)
                if n:
                    self._stored.labels(kind).inc(n)
        return stats

    def _add(
        self,
        todo: list[tuple[NewVector, str]],
        stats: EmbedStats,
        row: Any,
        kind: str,
        ref_id: str,
        interaction_id: str,
        text: str | None,
    ) -> None:
        text = (text or "").strip()[: self.params.max_chars]
        if not text:
            stats.skipped += 1
            return
        blank = NewVector(
            project_id=row.project_id,
            model=self.embedder.name,
            kind=kind,
            ref_id=ref_id,
            interaction_id=interaction_id,
            user_id=row.user_id,
            ts=utc(row.ts),
            vector=_EMPTY,
            text_hash=text_hash(text),
        )
        todo.append((blank, text))

    def _missing(self, table: sa.Table, kind: str, ref: sa.Column[Any]) -> sa.ColumnElement[bool]:
        v = models.vectors
        return ~sa.exists().where(
            v.c.project_id == table.c.project_id,
            v.c.model == self.embedder.name,
            v.c.kind == kind,
            v.c.ref_id == ref,
        )

    def _interactions(
        self, after: tuple[int, str] | None, limit: int, scope: _Scope
    ) -> sa.Select[Any]:
        i = models.interactions
        stmt = sa.select(i.c.project_id, i.c.id, i.c.ts, i.c.user_id, i.c.body).where(
            *scope.where(i), self._missing(i, "input", i.c.id)
        )
        if after is not None:
            stmt = stmt.where(sa.tuple_(i.c.project_id, i.c.id) > sa.tuple_(*after))
        return stmt.order_by(i.c.project_id, i.c.id).limit(limit)

    def _feedback(self, after: tuple[int, str] | None, limit: int, scope: _Scope) -> sa.Select[Any]:
        f = models.feedback
        needs = {
            kind: sa.and_(column.is_not(None), column != "", self._missing(f, kind, f.c.id))
            for kind, column in (("correction", f.c.correction), ("comment", f.c.comment))
        }
        stmt = sa.select(
            f.c.project_id,
            f.c.id,
            f.c.interaction_id,
            f.c.ts,
            f.c.user_id,
            sa.case((needs["correction"], f.c.correction), else_=None).label("correction"),
            sa.case((needs["comment"], f.c.comment), else_=None).label("comment"),
            sa.case((needs["correction"], True), else_=False).label("has_correction"),
            sa.case((needs["comment"], True), else_=False).label("has_comment"),
        ).where(*scope.where(f), sa.or_(*needs.values()))
        if after is not None:
            stmt = stmt.where(sa.tuple_(f.c.project_id, f.c.id) > sa.tuple_(*after))
        return stmt.order_by(f.c.project_id, f.c.id).limit(limit)
