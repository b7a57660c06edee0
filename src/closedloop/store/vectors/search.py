"""Semantic search over a project's stored texts: inputs, corrections and comments.

The query is embedded by the same embedder (and so the same model id) that made the stored
vectors. Candidates come from the ANN index (:mod:`closedloop.store.vectors.index`), or, with
``exact=True``, from a brute-force scan of the table in numpy (for tests and small
projects). Every candidate is re-read from the table with the filters applied, so a row
deleted by another process never comes back; its score is recomputed from the stored vector,
so both ways rank alike. With filters the index is asked for more candidates, growing until
``k`` pass or the index has nothing more.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from closedloop.embed.base import Embedder
from closedloop.enrich.sessions import user_text
from closedloop.events import Interaction
from closedloop.store import models
from closedloop.store.db import utc
from closedloop.store.vectors.index import IndexManager
from closedloop.store.vectors.table import KINDS, from_blob

__all__ = ["Hit", "SearchFilter", "search"]

_interaction = msgspec.json.Decoder(Interaction)
_SNIPPET = 280
_PAGE = 5_000


@dataclass(frozen=True, kw_only=True)
class Hit:
    """One stored text near the query.

    ``score`` is the cosine similarity in [-1, 1]; ``text`` a snippet of the stored (redacted)
    text, ``None`` when its row has left the hot store; ``thumbs`` and ``rating`` are the
    feedback's, for correction and comment hits.
    """

    score: float
    kind: str
    ref_id: str
    interaction_id: str
    ts: dt.datetime
    text: str | None
    thumbs: int | None = None
    rating: float | None = None
    seq: int

    def as_json(self) -> dict[str, Any]:
        """The hit as JSON-ready values."""
        return {
            "score": round(self.score, 6),
            "kind": self.kind,
            "ref_id": self.ref_id,
            "interaction_id": self.interaction_id,
            "timestamp": self.ts.isoformat(),
            "text": self.text,
            "thumbs": self.thumbs,
            "rating": self.rating,
        }


@dataclass(frozen=True, kw_only=True)
class SearchFilter:
    """Which stored texts a search may return (every field optional; all must hold)."""

    kinds: tuple[str, ...] | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    model_name: str | None = None
    model_version: str | None = None
    prompt_name: str | None = None
    prompt_version: str | None = None

    def __post_init__(self) -> None:
        for kind in self.kinds or ():
            if kind not in KINDS:
                raise ValueError(f"kind {kind!r}: use one of {', '.join(KINDS)}")
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.utcoffset() is None:
                raise ValueError(f"{name} must be timezone-aware")

    @property
    def segment(self) -> dict[str, str]:
        """The interaction columns it filters on, with their values."""
        pairs = {
            "model_name": self.model_name,
            "model_version": self.model_version,
            "prompt_name": self.prompt_name,
            "prompt_version": self.prompt_version,
        }
        return {k: v for k, v in pairs.items() if v is not None}

    @property
    def narrows(self) -> bool:
        """Whether it filters at all."""
        return bool(self.kinds or self.since or self.until or self.segment)


def _select(project_id: int, model: str, f: SearchFilter, columns: Sequence[Any]) -> sa.Select[Any]:
    v, i, fb = models.vectors, models.interactions, models.feedback
    on_interaction = sa.and_(i.c.project_id == v.c.project_id, i.c.id == v.c.interaction_id)
    on_feedback = sa.and_(
        fb.c.project_id == v.c.project_id, fb.c.id == v.c.ref_id, v.c.kind != "input"
    )
    joined = v.join(i, on_interaction, isouter=not f.segment).join(fb, on_feedback, isouter=True)
    stmt = (
        sa.select(*columns)
        .select_from(joined)
        .where(v.c.project_id == project_id, v.c.model == model)
    )
    if f.kinds:
        stmt = stmt.where(v.c.kind.in_(f.kinds))
    if f.since is not None:
        stmt = stmt.where(v.c.ts >= f.since)
    if f.until is not None:
        stmt = stmt.where(v.c.ts < f.until)
    for column, value in f.segment.items():
        stmt = stmt.where(i.c[column] == value)
    return stmt


def _columns() -> list[Any]:
    v, i, fb = models.vectors, models.interactions, models.feedback
    return [
        v.c.seq,
        v.c.kind,
        v.c.ref_id,
        v.c.interaction_id,
        v.c.ts,
        v.c.vector,
        i.c.body.label("interaction_body"),
        fb.c.correction,
        fb.c.comment,
        fb.c.thumbs,
        fb.c.rating,
    ]


def _snippet(row: Any) -> str | None:
    text: str | None
    if row.kind == "input":
        if row.interaction_body is None:
            return None
        text = user_text(_interaction.decode(row.interaction_body).input)
    else:
        text = row.correction if row.kind == "correction" else row.comment
    if text is None:
        return None
    return text if len(text) <= _SNIPPET else text[: _SNIPPET - 1] + "…"


def _hit(row: Any, score: float) -> Hit:
    return Hit(
        score=score,
        kind=row.kind,
        ref_id=row.ref_id,
        interaction_id=row.interaction_id,
        ts=utc(row.ts),
        text=_snippet(row),
        thumbs=row.thumbs,
        rating=row.rating,
        seq=int(row.seq),
    )


def _score(row: Any, query: np.ndarray[Any, Any]) -> float | None:
    vector = from_blob(row.vector)
    return float(vector @ query) if vector.shape == query.shape else None


def search(
    engine: Engine,
    index_manager: IndexManager | None,
    embedder: Embedder,
    project_id: int,
    q: str,
    k: int = 10,
    kinds: Sequence[str] | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    model_name: str | None = None,
    model_version: str | None = None,
    prompt_name: str | None = None,
    prompt_version: str | None = None,
    *,
    exact: bool = False,
) -> list[Hit]:
    """The ``k`` stored texts of ``project_id`` nearest to ``q``, best first.

    Parameters
    ----------
    engine, index_manager
        The store and its indexes (``index_manager`` may be ``None`` with ``exact=True``).
    embedder
        Embeds the query; its ``name`` selects the stored vectors searched.
    q, k
        The query text and how many hits (1-1000).
    kinds
        Only these kinds (``input``, ``correction``, ``comment``).
    since, until
        Only texts of events from ``since`` (inclusive) to ``until`` (exclusive).
    model_name, model_version, prompt_name, prompt_version
        Only texts of interactions of this segment (joins ``interactions``).
    exact
        Scan every stored vector in numpy instead of asking the ANN index.
    """
    if not 1 <= k <= 1000:
        raise ValueError("k must be between 1 and 1000")
    f = SearchFilter(
        kinds=tuple(kinds) if kinds else None,
        since=since,
        until=until,
        model_name=model_name,
        model_version=model_version,
        prompt_name=prompt_name,
        prompt_version=prompt_version,
    )
    query = embedder.embed([q])[0].astype(np.float32)
    if exact or index_manager is None:
        if not exact:
            raise ValueError("pass an index_manager, or exact=True")
        with engine.connect() as conn:
            return exact_search(conn, project_id, embedder.name, query, k, f)
    return _ann_search(engine, index_manager, project_id, embedder.name, query, k, f)


def exact_search(
    conn: Connection,
    project_id: int,
    model: str,
    query: np.ndarray[Any, Any],
    k: int,
    f: SearchFilter | None = None,
) -> list[Hit]:
    """Brute force: score every stored vector that passes ``f``; the ``k`` best."""
    f = f or SearchFilter()
    v = models.vectors
    best: list[tuple[float, int, Any]] = []
    after = 0
    while True:
        rows = conn.execute(
            _select(project_id, model, f, _columns())
            .where(v.c.seq > after)
            .order_by(v.c.seq)
            .limit(_PAGE)
        ).all()
        if not rows:
            break
        kept = [r for r in rows if len(r.vector) == 4 * query.shape[0]]
        if kept:
            matrix = np.frombuffer(b"".join(r.vector for r in kept), dtype=np.float32)
            scores = matrix.reshape(len(kept), -1) @ query
            top = np.argsort(-scores, kind="stable")[:k]
            best += [(float(scores[j]), int(kept[j].seq), kept[j]) for j in top]
            best = sorted(best, key=lambda t: (-t[0], t[1]))[:k]
        after = int(rows[-1].seq)
    return [_hit(row, score) for score, _, row in best]


def _ann_search(
    engine: Engine,
    manager: IndexManager,
    project_id: int,
    model: str,
    query: np.ndarray[Any, Any],
    k: int,
    f: SearchFilter,
) -> list[Hit]:
    v = models.vectors
    index = manager.index(project_id, model)
    count = max(4 * k, 40) if f.narrows else k + 10
    while True:
        candidates = index.search(query, count)
        keys = [key for key, _ in candidates]
        if not keys:
            return []
        with engine.connect() as conn:
            rows = conn.execute(_select(project_id, model, f, _columns()).where(v.c.seq.in_(keys)))
            hits = [h for h in (_rescored(r, query) for r in rows) if h is not None]
            if len(hits) < len(keys):
                found = {h.seq for h in hits}
                unknown = [key for key in keys if key not in found]
                stored = set(
                    conn.execute(
                        sa.select(v.c.seq).where(v.c.project_id == project_id, v.c.seq.in_(unknown))
                    ).scalars()
                )
                gone = [key for key in unknown if key not in stored]
                if gone:  # deleted by another process: never again
                    index.remove(gone)
        hits.sort(key=lambda h: (-h.score, h.seq))
        if len(hits) >= k or len(candidates) < count or count >= len(index):
            return hits[:k]
        count = min(count * 4, len(index))


def _rescored(row: Any, query: np.ndarray[Any, Any]) -> Hit | None:
    score = _score(row, query)
    return None if score is None else _hit(row, score)
