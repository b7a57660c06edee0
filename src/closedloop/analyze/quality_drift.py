"""Quality drift on the stored feedback: each segment's streams through its detector.

The job reads user feedback joined to its interaction in arrival order (``received_at``,
then id) past a watermark, and feeds each observation to the detector of every stream it
belongs to: the segments ``all``, ``model=NAME@VERSION`` and ``prompt=NAME@VERSION``, and
the measures ``thumbs`` (1 up, 0 down) and ``rating`` (scaled to [0, 1] by its own scale).
Detectors (:class:`~closedloop.analyze.drift.BernoulliCusum` by default) keep their state
between runs in ``drift_streams``; an alarm is stored in ``drift_alarms`` with the estimated
change point turned into a time.

Arrival order is the order a live detector would see; feedback whose interaction has not come
yet holds the watermark back (it waits until the enrichment job joins or orphans it), so no
observation is skipped and none is counted twice. Orphans never join a segment and are left
out.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import pickle
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from closedloop.analyze.drift.base import ChangeDetector, Estimate
from closedloop.analyze.drift.bernoulli import BernoulliCusum
from closedloop.analyze.drift.calibrate import segment_arl0
from closedloop.analyze.drift.monitor import DriftParams
from closedloop.analyze.state import load_state, save_state
from closedloop.store import models
from closedloop.store.db import utcnow

__all__ = ["QualityDrift", "QualityDriftStats", "estimate_json", "store_alarm"]

log = logging.getLogger(__name__)

_WATERMARK = "quality_drift"
# timestamps kept per stream to date a change point (an older one is dated by the oldest): a
# detector's estimated change point starts its current excursion, a few hundred observations
# back at the delays measured in bench/drift_eval.py
_TIMES = 10_000

DetectorFactory = Callable[[float], ChangeDetector]
DEFAULT_PARAMS = DriftParams(n_segments=64)


@dataclass
class _Stream:
    """A detector with the timestamps of its recent observations."""

    detector: ChangeDetector
    seen: int = 0
    times: deque[float] = field(default_factory=lambda: deque(maxlen=_TIMES))  # POSIX seconds
    dirty: bool = False

    def at(self, index: int) -> dt.datetime:
        first = self.seen - len(self.times)
        stamp = self.times[min(max(index - first, 0), len(self.times) - 1)]
        if isinstance(stamp, dt.datetime):  # a state written before times were floats
            return _aware(stamp)
        return dt.datetime.fromtimestamp(stamp, dt.UTC)


@dataclass(frozen=True)
class QualityDriftStats:
    """What one run did."""

    observations: int = 0
    alarms: int = 0
    streams: int = 0


def estimate_json(e: Estimate) -> dict[str, Any]:
    """An estimate as JSON (infinite bounds as null)."""

    def finite(x: float) -> float | None:
        return x if x == x and abs(x) != float("inf") else None

    return {"value": finite(e.value), "low": finite(e.low), "high": finite(e.high), "n": e.n}


def store_alarm(
    conn: Connection,
    *,
    project_id: int,
    kind: str,
    segment: str,
    measure: str,
    since: dt.datetime,
    detected_at: dt.datetime,
    before: dict[str, Any],
    after: dict[str, Any],
    details: dict[str, Any],
) -> bool:
    """Insert an alarm unless the same change is already stored; whether it was new."""
    t = models.drift_alarms
    exists = conn.execute(
        sa.select(t.c.id).where(
            t.c.project_id == project_id,
            t.c.kind == kind,
            t.c.segment == segment,
            t.c.measure == measure,
            t.c.since == since,
        )
    ).first()
    if exists is not None:
        return False
    conn.execute(
        t.insert().values(
            project_id=project_id,
            kind=kind,
            segment=segment,
            measure=measure,
            since=since,
            detected_at=detected_at,
            before=json.dumps(before),
            after=json.dumps(after),
            details=json.dumps(details),
            created_at=utcnow(),
        )
    )
    return True


def _scaled(rating: float, low: float | None, high: float | None) -> float | None:
    lo = 1.0 if low is None else low
    hi = 5.0 if high is None else high
    if hi <= lo:
        return None
    return min(max((rating - lo) / (hi - lo), 0.0), 1.0)


class QualityDrift:
    """Feeds stored feedback to the drift detectors of each segment and stores the alarms.

    Parameters
    ----------
    engine
        The hot store.
    params
        The false-alarm budget: ``arl0`` observations per false alarm for the whole family of
        ``n_segments`` streams (each stream's detector gets ``n_segments * arl0``),
        ``warmup`` observations before a stream may alarm.
    factory
        Builds a stream's detector from its ARL0 (default: :class:`BernoulliCusum`).
    batch
        Feedback rows read per query.
    settle_seconds
        Rows received in the last few seconds are left for the next run (a commit in flight
        may still add rows received before them).
    """

    def __init__(
        self,
        engine: Engine,
        params: DriftParams = DEFAULT_PARAMS,
        *,
        factory: DetectorFactory | None = None,
        batch: int = 20_000,
        settle_seconds: float = 5.0,
    ) -> None:
        self.engine = engine
        self.params = params
        self.factory = factory
        self.batch = batch
        self.settle_seconds = settle_seconds
        self._detector_name: str | None = None

    def _new(self) -> ChangeDetector:
        arl0 = segment_arl0(self.params.arl0, self.params.n_segments)
        if self.factory is not None:
            return self.factory(arl0)
        return BernoulliCusum(
            arl0=arl0,
            drops=self.params.drops,
            warmup=self.params.warmup,
            dispersion=self.params.dispersion,
        )

    @property
    def detector_name(self) -> str:
        """The class name of the detectors this job builds."""
        if self._detector_name is None:
            self._detector_name = type(self._new()).__name__
        return self._detector_name

    def run(self, project_id: int, *, now: dt.datetime | None = None) -> QualityDriftStats:
        """Feed everything that arrived since the last run; store the alarms."""
        now = now or utcnow()
        f, i = models.feedback, models.interactions
        observations = alarms = 0
        streams: dict[tuple[str, str], _Stream] = {}
        with self.engine.begin() as conn:
            mark = load_state(conn, project_id, _WATERMARK) or {}
            limit = now - dt.timedelta(seconds=self.settle_seconds)
            waiting = conn.execute(
                sa.select(sa.func.min(f.c.received_at)).where(
                    f.c.project_id == project_id, f.c.join_state == "pending"
                )
            ).scalar()
            if waiting is not None:
                limit = min(limit, _aware(waiting) - dt.timedelta(microseconds=1))
            after_ts = dt.datetime.fromisoformat(mark["received_at"]) if mark else None
            after_id = mark.get("id", "")
            query = (
                sa.select(
                    f.c.id,
                    f.c.ts,
                    f.c.received_at,
                    f.c.thumbs,
                    f.c.rating,
                    f.c.rating_min,
                    f.c.rating_max,
                    i.c.model_name,
                    i.c.model_version,
                    i.c.prompt_name,
                    i.c.prompt_version,
                )
                .join(i, sa.and_(i.c.project_id == f.c.project_id, i.c.id == f.c.interaction_id))
                .where(
                    f.c.project_id == project_id,
                    f.c.join_state == "joined",
                    f.c.source == "user",
                    f.c.received_at <= limit,
                )
                .order_by(f.c.received_at, f.c.id)
                .limit(self.batch)
            )
            if after_ts is not None:
                query = query.where(
                    sa.or_(
                        f.c.received_at > after_ts,
                        sa.and_(f.c.received_at == after_ts, f.c.id > after_id),
                    )
                )
            while True:
                rows = conn.execute(query).all()
                if not rows:
                    break
                for row in rows:
                    ts = _aware(row.ts)
                    stamp = ts.timestamp()
                    observed = _observations(row)
                    if not observed:
                        continue
                    for segment in _segments(row):
                        for measure, x in observed:
                            stream = self._stream(conn, project_id, streams, segment, measure)
                            stream.detector.update(x)
                            stream.times.append(stamp)
                            stream.seen += 1
                            stream.dirty = True
                            observations += 1
                            change = stream.detector.change
                            if stream.detector.drift_detected and change is not None:
                                alarms += store_alarm(
                                    conn,
                                    project_id=project_id,
                                    kind="quality",
                                    segment=segment,
                                    measure=measure,
                                    since=stream.at(change.change_point),
                                    detected_at=ts,
                                    before=estimate_json(change.before),
                                    after=estimate_json(change.after),
                                    details={
                                        "change_point": change.change_point,
                                        "detected_at": change.detected_at,
                                        "delay": change.delay,
                                        "arl0": segment_arl0(
                                            self.params.arl0, self.params.n_segments
                                        ),
                                    },
                                )
                last = rows[-1]
                mark = {"received_at": _aware(last.received_at).isoformat(), "id": last.id}
                after_ts, after_id = _aware(last.received_at), last.id
                query = query.where(
                    sa.or_(
                        f.c.received_at > after_ts,
                        sa.and_(f.c.received_at == after_ts, f.c.id > after_id),
                    )
                )
            self._save(conn, project_id, streams)
            if mark:
                save_state(conn, project_id, _WATERMARK, mark)
        return QualityDriftStats(observations=observations, alarms=alarms, streams=len(streams))

    def _stream(
        self,
        conn: Connection,
        project_id: int,
        streams: dict[tuple[str, str], _Stream],
        segment: str,
        measure: str,
    ) -> _Stream:
        key = (segment, measure)
        found = streams.get(key)
        if found is not None:
            return found
        t = models.drift_streams
        row = conn.execute(
            sa.select(t.c.detector, t.c.state).where(
                t.c.project_id == project_id, t.c.segment == segment, t.c.measure == measure
            )
        ).first()
        stream: _Stream
        if row is not None and row.detector == self.detector_name:
            # Our own object, written by this job into our own store: never outside input.
            stream = pickle.loads(row.state)  # noqa: S301
        else:  # a new stream, or the configured detector changed: start afresh
            stream = _Stream(self._new())
        streams[key] = stream
        return stream

    @staticmethod
    def _save(conn: Connection, project_id: int, streams: dict[tuple[str, str], _Stream]) -> None:
        t = models.drift_streams
        for (segment, measure), stream in streams.items():
            if not stream.dirty:
                continue
            stream.dirty = False
            values = {
                "detector": type(stream.detector).__name__,
                "state": pickle.dumps(stream),
                "observations": stream.seen,
                "updated_at": utcnow(),
            }
            where = (t.c.project_id == project_id, t.c.segment == segment, t.c.measure == measure)
            if conn.execute(t.update().where(*where).values(**values)).rowcount == 0:
                conn.execute(
                    t.insert().values(
                        project_id=project_id, segment=segment, measure=measure, **values
                    )
                )


def _aware(value: dt.datetime) -> dt.datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


@functools.lru_cache(maxsize=4096)
def _segment_names(
    model: str | None, model_version: str | None, prompt: str | None, prompt_version: str | None
) -> tuple[str, ...]:
    names = ["all"]
    if model is not None:
        names.append(f"model={model}" + (f"@{model_version}" if model_version else ""))
    if prompt is not None:
        names.append(f"prompt={prompt}" + (f"@{prompt_version}" if prompt_version else ""))
    return tuple(names)


def _segments(row: Any) -> Iterable[str]:
    return _segment_names(row.model_name, row.model_version, row.prompt_name, row.prompt_version)


def _observations(row: Any) -> Sequence[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    if row.thumbs is not None:
        out.append(("thumbs", 1.0 if row.thumbs > 0 else 0.0))
    if row.rating is not None:
        scaled = _scaled(row.rating, row.rating_min, row.rating_max)
        if scaled is not None:
            out.append(("rating", scaled))
    return out
