"""Topics and issues: clusters of interaction inputs, kept up to date run after run.

Two kinds, one mechanism (:class:`~closedloop.analyze.cluster.IncrementalClusterer` over the
``input`` vectors the embedding job stores):

* ``topic``: every interaction's input; topics segment the metrics and feed topic-mix drift.
* ``issue``: the inputs of interactions with negative evidence: a quality estimate below
  ``negative_below`` decided by feedback or implicit measures (thumbs down, a low rating, a
  correction, a heavy edit, a rephrase, abandonment; never the prior alone). Severity is
  ``1 - quality``.

Each run takes the interactions with a vector that are not yet members (an anti-join, so
feedback that makes an interaction negative later is picked up then), joins them to the
nearest cluster or opens new ones, and stores members, centroids, names (class-based TF-IDF
keywords over the members' inputs) and representative examples. Ids are never reused, so an
issue keeps its id for life. Issues are then ranked by impact (:func:`issue_stats`).

A run's writes are batched (one statement per table and kind of change), and the keywords of
the clusters not being named, which names are weighed against, are kept in memory per engine
and project between runs (:class:`~closedloop.analyze.keywords.Background`, brought up to
date from the stored keywords each run), so a run's cost follows what changed, not the store.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import weakref
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec
import numpy as np
import pyarrow as pa
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from closedloop.analyze.cluster import Cluster, ClusterParams, IncrementalClusterer, Pending
from closedloop.analyze.keywords import Background, ctfidf_keywords, name_of, representatives
from closedloop.analyze.state import load_state, save_state
from closedloop.enrich.sessions import user_text
from closedloop.events import Interaction
from closedloop.store import models
from closedloop.store.db import utcnow

__all__ = [
    "Kind",
    "TrackerParams",
    "TrackerStats",
    "ClusterTracker",
    "issue_stats",
    "topic_table",
]

log = logging.getLogger(__name__)

Kind = Literal["topic", "issue"]
_DROPPED = -1  # a member dropped from a full pending pool: never clustered
_SEQ_LOOKBACK = 1000
_RENAME_GROWTH = 1.1  # a cluster is named again once it grew by a tenth
_interaction = msgspec.json.Decoder(Interaction)
_BACKGROUNDS = 64  # the projects' naming backgrounds kept per engine, least recently used out
_backgrounds: weakref.WeakKeyDictionary[Engine, OrderedDict[tuple[int, str], Background]] = (
    weakref.WeakKeyDictionary()
)
_backgrounds_lock = threading.Lock()  # also held while a background is used


@dataclass(frozen=True, kw_only=True)
class TrackerParams:
    """How topics and issues are tracked.

    ``cluster`` are the clustering parameters; ``negative_below`` the quality under which an
    interaction with evidence is an issue's member; ``batch`` the most new members taken per
    run; ``keyword_docs`` the members' inputs per cluster that name it; ``window_days`` the
    window of an issue's trend (this window against the one before); ``growing`` the growth
    at or above which an issue is ``growing``.
    """

    cluster: ClusterParams = ClusterParams()
    negative_below: float = 0.5
    batch: int = 2000
    keyword_docs: int = 100
    window_days: float = 7.0
    growing: float = 1.5


@dataclass(frozen=True)
class TrackerStats:
    """What one run did."""

    added: int = 0
    joined: int = 0
    opened: int = 0
    pending: int = 0


def _blob(vector: np.ndarray) -> bytes:
    return np.asarray(vector, dtype=np.float32).tobytes()


def _vec(blob: bytes) -> np.ndarray:
    return np.frombuffer(blob, dtype=np.float32)


class ClusterTracker:
    """Keeps one kind of cluster (topics or issues) of a project up to date.

    ``model`` is the embedder's name: only its vectors are clustered, and its clusters used.
    """

    def __init__(
        self, engine: Engine, kind: Kind, model: str, params: TrackerParams = TrackerParams()
    ) -> None:
        if kind not in ("topic", "issue"):
            raise ValueError(f"kind must be topic or issue, not {kind!r}")
        self.engine = engine
        self.kind = kind
        self.model = model
        self.params = params

    def run(self, project_id: int, *, now: dt.datetime | None = None) -> TrackerStats:
        """One run: new members in, clusters joined or opened, names and stats refreshed."""
        now = now or utcnow()
        with self.engine.begin() as conn:
            clusterer, pending_ts = self._load(conn, project_id)
            new = self._candidates(conn, project_id)
            if not new and not len(clusterer.pending):
                self._name(conn, project_id, set(), now)  # names an erasure made stale
                if self.kind == "issue":
                    self._rank(conn, project_id, now)  # a quiet week resolves an issue
                return TrackerStats()
            # a text with nothing the embedder can read (punctuation only) has a zero vector:
            # no direction, no cluster; it is recorded as dropped, so it is not taken again
            blank = tuple(r.ref_id for r in new if not np.any(_vec(r.vector)))
            usable = [r for r in new if r.ref_id not in blank] if blank else new
            keys = [r.ref_id for r in usable]
            vectors = (
                np.stack([_vec(r.vector) for r in usable])
                if usable
                else np.zeros((0, 1), np.float32)
            )
            result = clusterer.step(keys, vectors) if usable else clusterer.step([], vectors[:0])
            ts = {r.ref_id: r.ts for r in new} | pending_ts
            dropped = result.dropped + blank
            self._save_members(conn, project_id, new, result.joined, dropped, ts, now)
            touched = set(result.joined.values())
            self._save_clusters(conn, project_id, clusterer.clusters, touched, now)
            self._name(conn, project_id, touched, now)
            if self.kind == "issue":
                self._rank(conn, project_id, now)
            log.debug("%s run: %d new, %d opened", self.kind, len(new), len(result.opened))
        return TrackerStats(
            added=len(new),
            joined=len(result.joined),
            opened=len(result.opened),
            pending=len(clusterer.pending),
        )

    # -- loading ------------------------------------------------------------------------------

    def _load(
        self, conn: Connection, project_id: int
    ) -> tuple[IncrementalClusterer, dict[str, dt.datetime]]:
        c = models.clusters
        rows = conn.execute(
            sa.select(c.c.id, c.c.model, c.c.centroid, c.c.size).where(
                c.c.project_id == project_id, c.c.kind == self.kind
            )
        ).all()
        known = [
            Cluster(id=r.id, centroid=_vec(r.centroid), size=r.size)
            for r in rows
            if r.model == self.model
        ]
        next_id = max((r.id for r in rows), default=0) + 1
        m, v = models.cluster_members, models.vectors
        waiting = conn.execute(
            sa.select(m.c.ref_id, m.c.ts, v.c.vector)
            .join(
                v,
                sa.and_(
                    v.c.project_id == m.c.project_id,
                    v.c.model == self.model,
                    v.c.kind == "input",
                    v.c.ref_id == m.c.ref_id,
                ),
            )
            .where(m.c.project_id == project_id, m.c.kind == self.kind, m.c.cluster_id.is_(None))
            .order_by(m.c.ts, m.c.ref_id)
        ).all()
        pending = None
        if waiting:
            pending = Pending(
                keys=tuple(r.ref_id for r in waiting),
                vectors=np.stack([_vec(r.vector) for r in waiting]),
            )
        clusterer = IncrementalClusterer(self.params.cluster, known, next_id, pending)
        return clusterer, {r.ref_id: r.ts for r in waiting}

    def _candidates(self, conn: Connection, project_id: int) -> list[Any]:
        v, i, m = models.vectors, models.interactions, models.cluster_members
        severity: sa.ColumnElement[Any] = sa.literal(1.0)
        query = (
            sa.select(v.c.ref_id, v.c.vector, i.c.ts)
            .join(i, sa.and_(i.c.project_id == v.c.project_id, i.c.id == v.c.ref_id))
            .outerjoin(
                m,
                sa.and_(
                    m.c.project_id == v.c.project_id,
                    m.c.kind == self.kind,
                    m.c.ref_id == v.c.ref_id,
                ),
            )
            .where(
                v.c.project_id == project_id,
                v.c.model == self.model,
                v.c.kind == "input",
                m.c.ref_id.is_(None),
            )
            .order_by(v.c.seq)
            .limit(self.params.batch)
        )
        if self.kind == "issue":
            severity = 1.0 - i.c.quality
            query = query.where(
                i.c.quality < self.params.negative_below,
                i.c.quality_basis.in_(("explicit", "implicit")),
            )
        else:
            # every input is a topic's candidate once: start near the last vector taken (the
            # embedding job commits vectors in seq order, one run at a time; the lookback
            # and the anti-join cover the rest) instead of scanning them all each run
            mark = load_state(conn, project_id, self._mark) or {}
            if mark.get("model") == self.model:
                query = query.where(v.c.seq > int(mark["seq"]) - _SEQ_LOOKBACK)
        rows = list(conn.execute(query.add_columns(v.c.seq, severity.label("severity"))).all())
        if self.kind == "topic" and rows:
            save_state(conn, project_id, self._mark, {"model": self.model, "seq": rows[-1].seq})
        return rows

    @property
    def _mark(self) -> str:
        return f"{self.kind}_seq"

    # -- saving -------------------------------------------------------------------------------

    def _save_members(
        self,
        conn: Connection,
        project_id: int,
        new: Sequence[Any],
        joined: Mapping[Any, int],
        dropped: Sequence[Any],
        ts: Mapping[str, dt.datetime],
        now: dt.datetime,
    ) -> None:
        m = models.cluster_members
        fresh = {r.ref_id for r in new}
        gone = set(dropped)
        if new:
            conn.execute(
                m.insert(),
                [
                    {
                        "project_id": project_id,
                        "kind": self.kind,
                        "ref_id": r.ref_id,
                        "cluster_id": joined.get(r.ref_id, _DROPPED if r.ref_id in gone else None),
                        "severity": float(r.severity) if r.severity is not None else 1.0,
                        "ts": r.ts,
                        "assigned_at": now,
                    }
                    for r in new
                ],
            )
        old = [(k, cid) for k, cid in joined.items() if k not in fresh]
        old += [(k, _DROPPED) for k in dropped if k not in fresh]
        if old:
            conn.execute(
                m.update()
                .where(
                    m.c.project_id == project_id,
                    m.c.kind == self.kind,
                    m.c.ref_id == sa.bindparam("b_ref"),
                )
                .values(cluster_id=sa.bindparam("b_cluster"), assigned_at=now),
                [{"b_ref": k, "b_cluster": cid} for k, cid in old],
            )

    def _save_clusters(
        self,
        conn: Connection,
        project_id: int,
        clusters: Sequence[Cluster],
        touched: set[int],
        now: dt.datetime,
    ) -> None:
        c = models.clusters
        existing = set(
            conn.execute(
                sa.select(c.c.id).where(c.c.project_id == project_id, c.c.kind == self.kind)
            ).scalars()
        )
        changed = [cl for cl in clusters if cl.id in touched]
        updates = [
            {"b_id": cl.id, "b_centroid": _blob(cl.centroid), "b_size": cl.size}
            for cl in changed
            if cl.id in existing
        ]
        if updates:
            conn.execute(
                c.update()
                .where(
                    c.c.project_id == project_id,
                    c.c.kind == self.kind,
                    c.c.id == sa.bindparam("b_id"),
                )
                .values(
                    centroid=sa.bindparam("b_centroid"),
                    size=sa.bindparam("b_size"),
                    updated_at=now,
                    last_seen_at=now,
                ),
                updates,
            )
        inserts = [
            {
                "project_id": project_id,
                "kind": self.kind,
                "id": cl.id,
                "model": self.model,
                "name": f"{self.kind} {cl.id}",
                "state": "open",
                "created_at": now,
                "centroid": _blob(cl.centroid),
                "size": cl.size,
                "updated_at": now,
                "last_seen_at": now,
            }
            for cl in changed
            if cl.id not in existing
        ]
        if inserts:
            conn.execute(c.insert(), inserts)

    def _name(self, conn: Connection, project_id: int, touched: set[int], now: dt.datetime) -> None:
        """Keywords by c-TF-IDF and examples nearest the centroid, for the clusters that are new
        or grew by a tenth since they were last named (a name settles as a cluster grows)."""
        c, m, i, v = models.clusters, models.cluster_members, models.interactions, models.vectors
        state_name = f"{self.kind}_named"
        # locked: an erasure forgetting names meanwhile is not overwritten
        named: dict[str, int] = load_state(conn, project_id, state_name, for_update=True) or {}
        mine = (c.c.project_id == project_id, c.c.kind == self.kind, c.c.model == self.model)
        sizes = dict(
            conn.execute(sa.select(c.c.id, c.c.size).where(*mine, c.c.id.in_(touched))).all()
        )
        due = sorted(
            cid
            for cid in touched
            if cid in sizes and sizes[cid] >= _RENAME_GROWTH * named.get(str(cid), 0)
        )
        # clusters never named, or whose name an erasure made stale (it forgets their entry)
        # (this embedder's clusters only: another's are named by its own vectors)
        stale = set(conn.execute(sa.select(c.c.id).where(*mine)).scalars()) - {
            int(k) for k in named
        }
        if stale - set(due):
            due = sorted(set(due) | stale)
            sizes.update(
                conn.execute(sa.select(c.c.id, c.c.size).where(*mine, c.c.id.in_(due))).all()
            )
        if not due:
            return
        docs: dict[int, list[str]] = defaultdict(list)
        refs: dict[int, list[str]] = defaultdict(list)
        vecs: dict[int, list[np.ndarray]] = defaultdict(list)
        # the latest keyword_docs members of each cluster to name
        latest = (
            sa.select(
                m.c.cluster_id,
                m.c.ref_id,
                sa.func.row_number()
                .over(partition_by=m.c.cluster_id, order_by=(m.c.ts.desc(), m.c.ref_id))
                .label("rn"),
            )
            .where(m.c.project_id == project_id, m.c.kind == self.kind, m.c.cluster_id.in_(due))
            .subquery()
        )
        rows = conn.execute(
            sa.select(latest.c.cluster_id, latest.c.ref_id, i.c.body, v.c.vector)
            .join(i, sa.and_(i.c.project_id == project_id, i.c.id == latest.c.ref_id))
            .join(
                v,
                sa.and_(
                    v.c.project_id == project_id,
                    v.c.model == self.model,
                    v.c.kind == "input",
                    v.c.ref_id == latest.c.ref_id,
                ),
            )
            .where(latest.c.rn <= self.params.keyword_docs)
            .order_by(latest.c.cluster_id, latest.c.rn)
        )
        for cid, ref, body, vector in rows:
            text = user_text(_interaction.decode(body).input)
            if text:
                docs[cid].append(text)
                refs[cid].append(ref)
                vecs[cid].append(_vec(vector))
        keywords = self._keywords(conn, project_id, due, docs) if docs else {}
        centroids = dict(
            conn.execute(
                sa.select(c.c.id, c.c.centroid).where(
                    c.c.project_id == project_id, c.c.kind == self.kind, c.c.id.in_(due)
                )
            ).all()
        )
        names: list[dict[str, Any]] = []
        for cid in due:
            words = keywords.get(cid, [])
            examples: list[str] = []
            if (
                vecs.get(cid)
                and cid in centroids
                and len(_vec(centroids[cid])) == len(vecs[cid][0])
            ):
                picked = representatives(np.stack(vecs[cid]), _vec(centroids[cid]), k=3)
                examples = [refs[cid][j] for j in picked]
            names.append(
                {
                    "b_id": cid,
                    "b_name": (name_of(words) or f"{self.kind} {cid}")[:256],
                    "b_keywords": json.dumps(words),
                    "b_examples": json.dumps(examples),
                }
            )
            named[str(cid)] = sizes[cid]
        conn.execute(
            c.update()
            .where(
                c.c.project_id == project_id, c.c.kind == self.kind, c.c.id == sa.bindparam("b_id")
            )
            .values(
                name=sa.bindparam("b_name"),
                keywords=sa.bindparam("b_keywords"),
                examples=sa.bindparam("b_examples"),
            ),
            names,
        )
        save_state(conn, project_id, state_name, named)

    def _keywords(
        self, conn: Connection, project_id: int, due: Sequence[int], docs: Mapping[int, list[str]]
    ) -> dict[int, list[str]]:
        """The keywords of the clusters in ``docs``, weighed against the other clusters (by
        their stored keywords; any embedder's): the background names stand out from."""
        c = models.clusters
        texts = {
            cid: " ".join(json.loads(words))
            for cid, words in conn.execute(
                sa.select(c.c.id, c.c.keywords).where(
                    c.c.project_id == project_id, c.c.kind == self.kind, c.c.id.not_in(due)
                )
            )
            if words != "[]"
        }
        with _backgrounds_lock:
            kept = _backgrounds.setdefault(self.engine, OrderedDict())
            background = kept.pop((project_id, self.kind), None) or Background()
            kept[(project_id, self.kind)] = background  # the most recently used, last
            while len(kept) > _BACKGROUNDS:
                kept.popitem(last=False)
            background.sync(texts)
            return ctfidf_keywords(docs, top=8, background=background)

    def _rank(self, conn: Connection, project_id: int, now: dt.datetime) -> None:
        """Each issue's state and stats, written where they changed."""
        c = models.clusters
        stored = {
            cid: (state, stats)
            for cid, state, stats in conn.execute(
                sa.select(c.c.id, c.c.state, c.c.stats).where(
                    c.c.project_id == project_id, c.c.kind == "issue"
                )
            )
        }
        changed = []
        for cid, stats in issue_stats(conn, project_id, now, self.params).items():
            ranked = (stats["state"], json.dumps(stats))
            if cid in stored and stored[cid] != ranked:
                changed.append({"b_id": cid, "b_state": ranked[0], "b_stats": ranked[1]})
        if changed:
            conn.execute(
                c.update()
                .where(
                    c.c.project_id == project_id,
                    c.c.kind == "issue",
                    c.c.id == sa.bindparam("b_id"),
                )
                .values(state=sa.bindparam("b_state"), stats=sa.bindparam("b_stats")),
                changed,
            )


def issue_stats(
    conn: Connection, project_id: int, now: dt.datetime, params: TrackerParams = TrackerParams()
) -> dict[int, dict[str, Any]]:
    """Each issue's trend and impact, explained.

    ``recent`` and ``prior`` count its members in the last ``window_days`` and the window
    before; ``severity`` is their mean severity; ``growth`` is ``(recent + 1) / (prior + 1)``
    (smoothed, so one new member of a new issue is not infinite growth); ``impact`` is
    ``recent * severity * growth``. The state: ``resolved`` when nothing came in the last
    window, ``growing`` when growth reaches ``params.growing`` with at least ``min_size``
    recent members, else ``open``.
    """
    m = models.cluster_members
    window = dt.timedelta(days=params.window_days)
    start, before = now - window, now - 2 * window
    recent = sa.case((m.c.ts >= start, 1), else_=0)
    prior = sa.case((sa.and_(m.c.ts >= before, m.c.ts < start), 1), else_=0)
    rows = conn.execute(
        sa.select(
            m.c.cluster_id,
            sa.func.count(),
            sa.func.sum(recent),
            sa.func.sum(prior),
            sa.func.avg(sa.case((m.c.ts >= start, m.c.severity), else_=None)),
            sa.func.avg(m.c.severity),
        )
        .where(m.c.project_id == project_id, m.c.kind == "issue", m.c.cluster_id > 0)
        .group_by(m.c.cluster_id)
    ).all()
    out: dict[int, dict[str, Any]] = {}
    for cid, size, n_recent, n_prior, sev_recent, sev_all in rows:
        n_recent, n_prior = int(n_recent or 0), int(n_prior or 0)
        severity = float(sev_recent if sev_recent is not None else sev_all or 0.0)
        growth = (n_recent + 1) / (n_prior + 1)
        impact = n_recent * severity * growth
        if n_recent == 0:
            state = "resolved"
        elif growth >= params.growing and n_recent >= params.cluster.min_size:
            state = "growing"
        else:
            state = "open"
        days = f"{params.window_days:g} days"
        out[int(cid)] = {
            "members": int(size),
            "recent": n_recent,
            "prior": n_prior,
            "severity": round(severity, 4),
            "growth": round(growth, 4),
            "impact": round(impact, 4),
            "state": state,
            "explanation": (
                f"{n_recent} negative interactions in the last {days} x severity "
                f"{severity:.2f} x growth {growth:.2f} ({n_recent} against {n_prior} the "
                f"{days} before) = impact {impact:.1f}"
            ),
        }
    return out


def topic_table(engine: Engine, project_id: int) -> pa.Table:
    """Each interaction's topic as ``ref_id, topic`` (``"#id name"``), for metrics by topic."""
    m, c = models.cluster_members, models.clusters
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(m.c.ref_id, c.c.id, c.c.name)
            .join(
                c,
                sa.and_(
                    c.c.project_id == m.c.project_id, c.c.kind == m.c.kind, c.c.id == m.c.cluster_id
                ),
            )
            .where(m.c.project_id == project_id, m.c.kind == "topic")
        ).all()
    return pa.table(
        {
            "ref_id": pa.array([r.ref_id for r in rows], pa.string()),
            "topic": pa.array([f"#{r.id} {r.name}" for r in rows], pa.string()),
        }
    )
