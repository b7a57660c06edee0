"""Documents flagged for re-indexing: retrieved for answers that drew negative feedback.

:class:`ReindexScanner` (a worker job) reads the interactions enriched since its watermark
whose quality is below ``settings.negative_quality`` - from feedback or signals, never the
bare prior - and counts them per retrieved document; a document reaching
``settings.reindex_min_negatives`` is flagged once, and every enabled webhook endpoint of the
project is sent ``closedloop.document.flagged`` through the durable outbox.

The scan resumes after an ``(enriched_at, id)`` watermark, so a row must never commit behind
it. An enrichment pass stamps all its rows with the pass's start time and commits them session
chunk by session chunk (not in id order): a scan between two of its commits would move the
watermark to ``(T, largest id so far)`` and never count the later chunk's smaller ids. Rows are
therefore read only once they are :data:`SETTLE_SECONDS` old - longer than a pass lasts (the
enricher's time budget plus a wide margin), as :mod:`closedloop.store.vectors.job` does.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.enrich.job import EnrichParams
from closedloop.errors import ConfigError, NotFound
from closedloop.store import models
from closedloop.store.db import utc, utcnow

if TYPE_CHECKING:
    from closedloop.settings import Settings
    from closedloop.store.jobs import Job

__all__ = ["FLAGGED_EVENT", "SETTLE_SECONDS", "ReindexScanner", "flags", "mark_reindexed"]

log = logging.getLogger(__name__)


_LOCK_KEY = 0x636C_7265_696E_6478  # "clreindx": the advisory lock of the re-index scan
_STATE = "reindex"
_EXAMPLES = 5
_COUNTED = 20_000  # interactions remembered as counted (a re-enriched one is not counted again)
_PENDING_DOCS = 50_000  # documents with negatives below the threshold, remembered
FLAGGED_EVENT = "closedloop.document.flagged"
#: Age of an enriched row before a scan reads it: an enrichment pass's time budget (20 s) plus
#: 100 s for a pass that runs past it and for clocks of several servers that disagree.
SETTLE_SECONDS = EnrichParams().time_budget_seconds + 100.0


def _retrieved(body: str) -> list[str]:
    docs = json.loads(body).get("retrieved") or []
    return list(dict.fromkeys(str(d["id"]) for d in docs if d.get("id")))


def _flag_json(row: Any) -> dict[str, Any]:
    return {
        "doc_id": row.doc_id,
        "negatives": row.negatives,
        "examples": json.loads(row.examples),
        "state": row.state,
        "first_flagged_at": utc(row.first_flagged_at).isoformat(),
        "last_flagged_at": utc(row.last_flagged_at).isoformat(),
        "notified_at": row.notified_at and utc(row.notified_at).isoformat(),
    }


def flags(
    engine: Engine, project_id: int, *, state: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """The project's flagged documents, most negatives first."""
    states = ("flagged", "notified", "reindexed")
    if state is not None and state not in states:
        raise ConfigError(f"state must be one of {', '.join(states)}", field="state")
    t = models.reindex_flags
    query = sa.select(t).where(t.c.project_id == project_id)
    if state is not None:
        query = query.where(t.c.state == state)
    query = query.order_by(t.c.negatives.desc(), t.c.doc_id).limit(max(1, limit))
    with engine.connect() as conn:
        return [_flag_json(r) for r in conn.execute(query)]


def mark_reindexed(engine: Engine, project_id: int, doc_id: str) -> dict[str, Any]:
    """Record that a flagged document was re-indexed; later negatives count afresh."""
    t = models.reindex_flags
    where = (t.c.project_id == project_id, t.c.doc_id == doc_id)
    with engine.begin() as conn:
        conn.execute(t.update().where(*where).values(state="reindexed"))
        row = conn.execute(sa.select(t).where(*where)).first()
    if row is None:
        raise NotFound(f"document {doc_id!r} is not flagged in this project")
    return _flag_json(row)


class ReindexScanner:
    """Flag documents tied to bad answers (a worker job; see the module docstring).

    Parameters
    ----------
    engine
        The hot store.
    settings
        ``negative_quality`` and ``reindex_min_negatives`` are read.
    settle_seconds
        Interactions enriched more recently wait for a later run: a running enrichment pass
        may still commit rows stamped with its start time (see the module docstring). Tests
        set it small; in service it must exceed the longest enrichment pass.
    batch
        Interactions read per query.
    """

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        settle_seconds: float = SETTLE_SECONDS,
        batch: int = 2000,
    ) -> None:
        if settle_seconds < 0:
            raise ConfigError("settle_seconds must not be negative", field="settle_seconds")
        self.engine = engine
        self.settings = settings
        self.settle_seconds = settle_seconds
        self.batch = batch

    def __call__(self, job: Job) -> None:
        """The job handler: one run over the job's project (or every project)."""
        self.run(job.project_id)

    def run(self, project_id: int | None = None, now: dt.datetime | None = None) -> int:
        """Scan (one project, or all); how many documents were newly flagged."""
        from closedloop.store.db import single_flight

        now = now or utcnow()
        with single_flight(self.engine, _LOCK_KEY) as mine:
            if not mine:
                return 0
            if project_id is not None:
                ids = [project_id]
            else:
                with self.engine.connect() as conn:
                    ids = list(conn.execute(sa.select(models.projects.c.id)).scalars())
            return sum(self._scan(pid, now) for pid in ids)

    def _scan(self, project_id: int, now: dt.datetime) -> int:
        from closedloop.analyze.state import load_state, save_state

        i = models.interactions
        limit = now - dt.timedelta(seconds=self.settle_seconds)
        threshold = int(self.settings.reindex_min_negatives)
        newly = 0
        with self.engine.begin() as conn:
            state = load_state(conn, project_id, _STATE) or {}
            pending: dict[str, list[str]] = state.get("pending", {})
            counted: list[str] = state.get("counted", [])
            seen = set(counted)
            mark = state.get("after")
            query = (
                sa.select(i.c.id, i.c.body, i.c.enriched_at)
                .where(
                    i.c.project_id == project_id,
                    i.c.enriched_at.is_not(None),
                    i.c.enriched_at <= limit,
                    i.c.quality < float(self.settings.negative_quality),
                    i.c.quality_basis.in_(("explicit", "implicit")),
                    i.c.body.like('%"retrieved"%'),
                )
                .order_by(i.c.enriched_at, i.c.id)
                .limit(self.batch)
            )
            while True:
                page = query
                if mark is not None:
                    after, after_id = dt.datetime.fromisoformat(mark[0]), mark[1]
                    page = query.where(
                        sa.or_(
                            i.c.enriched_at > after,
                            sa.and_(i.c.enriched_at == after, i.c.id > after_id),
                        )
                    )
                rows = conn.execute(page).all()
                if not rows:
                    break
                mark = [utc(rows[-1].enriched_at).isoformat(), rows[-1].id]
                for row in rows:
                    if row.id in seen:
                        continue
                    seen.add(row.id)
                    counted.append(row.id)
                    for doc in _retrieved(row.body):
                        newly += self._count(conn, project_id, doc, row.id, pending, threshold, now)
            newly_notified = self._notify(conn, project_id, now)
            del counted[:-_COUNTED]
            for doc in list(pending)[: max(0, len(pending) - _PENDING_DOCS)]:
                del pending[doc]
            save_state(
                conn, project_id, _STATE, {"after": mark, "pending": pending, "counted": counted}
            )
        log.debug("reindex scan: %d flagged, %d notified", newly, newly_notified)
        return newly

    @staticmethod
    def _count(
        conn: sa.Connection,
        project_id: int,
        doc: str,
        interaction_id: str,
        pending: dict[str, list[str]],
        threshold: int,
        now: dt.datetime,
    ) -> int:
        """Count one negative answer against ``doc``; 1 when it flags the document."""
        t = models.reindex_flags
        where = (t.c.project_id == project_id, t.c.doc_id == doc)
        flag = conn.execute(sa.select(t).where(*where)).first()
        if flag is not None and flag.state != "reindexed":
            examples = json.loads(flag.examples)
            if interaction_id in examples:
                return 0
            conn.execute(
                t.update()
                .where(*where)
                .values(
                    negatives=t.c.negatives + 1,
                    examples=json.dumps([*examples, interaction_id][:_EXAMPLES]),
                    last_flagged_at=now,
                )
            )
            return 0
        ids = pending.setdefault(doc, [])
        if interaction_id not in ids:
            ids.append(interaction_id)
        if len(ids) < threshold:
            return 0
        values = {
            "negatives": len(ids),
            "examples": json.dumps(ids[:_EXAMPLES]),
            "state": "flagged",
            "last_flagged_at": now,
            "notified_at": None,
        }
        if flag is None:
            conn.execute(
                t.insert().values(project_id=project_id, doc_id=doc, first_flagged_at=now, **values)
            )
        else:  # re-indexed once, and bad answers came again
            conn.execute(t.update().where(*where).values(**values))
        del pending[doc]
        return 1

    @staticmethod
    def _notify(conn: sa.Connection, project_id: int, now: dt.datetime) -> int:
        """Queue ``closedloop.document.flagged`` to every enabled endpoint for each document
        not yet notified (in the scan's transaction: the outbox is exactly-once with it)."""
        from closedloop.act.webhooks import outbox

        t, e = models.reindex_flags, models.webhook_endpoints
        rows = conn.execute(
            sa.select(t).where(t.c.project_id == project_id, t.c.state == "flagged")
        ).all()
        if not rows:
            return 0
        endpoints = conn.execute(
            sa.select(e.c.name).where(e.c.project_id == project_id, e.c.enabled.is_(True))
        ).scalars()
        names = sorted(endpoints)
        for row in rows:
            payload = {"project_id": project_id, **_flag_json(row), "state": "notified"}
            for name in names:
                outbox.enqueue(conn, project_id, name, FLAGGED_EVENT, payload)
        conn.execute(
            t.update()
            .where(t.c.project_id == project_id, t.c.doc_id.in_([r.doc_id for r in rows]))
            .values(state="notified", notified_at=now)
        )
        return len(rows)
