"""The knowledge base: corrections (and edits) become entries an app can recall at once.

An entry pairs a ``query`` (the user's words: an interaction's input text, or its last user
message) with an ``answer`` (a correction, a reviewer's fix, the text a user kept in an
``edit`` signal, or one written by hand); corrections and edits come from the store, where
they were redacted at ingest. Its query is embedded with the process's one embedder and
stored as float32 bytes beside the model's name.

:func:`recall` scores a query against the project's active entries by cosine similarity with
numpy, brute force: a knowledge base holds thousands of entries, where a matrix product takes
well under a millisecond and an approximate index would only add a second copy to keep in
step. Entries embedded by another model (the process switched embedders) are re-embedded on
the next recall that meets them and stored again, so a switch never hides the knowledge base.

Documents tied to bad answers are flagged by :mod:`closedloop.act.reindex`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pydantic
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from closedloop.act.actions import ActContext, ActionResult, Trigger
from closedloop.errors import ConfigError, NotFound
from closedloop.events import LIMITS
from closedloop.sdk.recall import Recalled
from closedloop.store import models
from closedloop.store.db import utc, utcnow
from closedloop.store.erased import user_key

if TYPE_CHECKING:
    from closedloop.embed.base import Embedder

__all__ = [
    "Entry",
    "KnowledgeAction",
    "KnowledgeParams",
    "Recalled",
    "add_entry",
    "deactivate",
    "entries",
    "from_corrections",
    "from_edits",
    "get_entry",
    "input_text",
    "recall",
    "recall_many",
]

log = logging.getLogger(__name__)

_SOURCES = ("correction", "edit", "manual", "review")
_CHUNK = 400


@dataclass(frozen=True, kw_only=True)
class Entry:
    """A knowledge-base entry (without its vector)."""

    id: int
    query: str
    answer: str
    source: str
    interaction_id: str | None
    feedback_id: str | None
    model: str | None
    active: bool
    firing_id: int | None
    created_at: dt.datetime
    updated_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        """The entry as the API answers it."""
        return {
            "id": self.id,
            "query": self.query,
            "answer": self.answer,
            "source": self.source,
            "interaction_id": self.interaction_id,
            "feedback_id": self.feedback_id,
            "model": self.model,
            "active": self.active,
            "firing_id": self.firing_id,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _text(field: str, value: str) -> str:
    if not value.strip():
        raise ConfigError(f"{field} must not be empty", field=field)
    if len(value) > LIMITS.text_length or "\x00" in value:
        raise ConfigError(
            f"{field} must hold at most {LIMITS.text_length} characters and no NUL", field=field
        )
    return value


def input_text(body: str | dict[str, Any]) -> str | None:
    """The user's words of an interaction (its body JSON): the input text, or the last user
    message of a chat input.

    >>> input_text('{"input": [{"role": "system", "content": "x"}, {"role": "user", '
    ...            '"content": "hi"}]}')
    'hi'
    """
    data = json.loads(body) if isinstance(body, str) else body
    value = data.get("input")
    if isinstance(value, str):
        return value or None
    for message in reversed(value or []):
        if message.get("role") == "user" and message.get("content"):
            return str(message["content"])
    return None


def _secret(conn: sa.Connection, project_id: int) -> str | None:
    p = models.projects
    row = conn.execute(sa.select(p.c.pii_secret).where(p.c.id == project_id)).first()
    if row is None:
        raise NotFound(f"no project with id {project_id}")
    secret: str | None = row.pii_secret
    return secret


@dataclass(frozen=True, kw_only=True)
class _Fix:
    """An entry to store: the user's words and the answer they should have had."""

    query: str
    answer: str
    source: str
    interaction_id: str | None = None
    feedback_id: str | None = None  # a correction's; an edit's entry is keyed by its answer
    user_id: str | None = None  # the stored id of the user whose words it holds


def _upsert(
    conn: sa.Connection,
    project_id: int,
    fix: _Fix,
    vector: bytes,
    *,
    secret: str | None,
    model: str,
    firing_id: int | None,
) -> int:
    """Insert an entry; the one of the same feedback id (a correction's) or of the same
    interaction and answer (an edit's: a signal id may equal a feedback id, so it cannot share
    that key) is replaced (and active again)."""
    t = models.kb_entries
    now = utcnow()
    values = {
        "project_id": project_id,
        "query": fix.query,
        "answer": fix.answer,
        "source": fix.source,
        "interaction_id": fix.interaction_id,
        "feedback_id": fix.feedback_id,
        "user_key": user_key(secret, fix.user_id) if fix.user_id else None,
        "model": model,
        "vector": vector,
        "active": True,
        "firing_id": firing_id,
        "created_at": now,
        "updated_at": now,
    }
    changed = {k: v for k, v in values.items() if k not in ("project_id", "created_at")}
    if fix.feedback_id is None:
        same = None
        if fix.source == "edit":
            same = conn.execute(
                sa.select(sa.func.max(t.c.id)).where(
                    t.c.project_id == project_id,
                    t.c.interaction_id == fix.interaction_id,
                    t.c.source == "edit",
                    t.c.answer == fix.answer,
                )
            ).scalar()
        if same is None:
            return int(conn.execute(t.insert().values(**values).returning(t.c.id)).scalar_one())
        conn.execute(t.update().where(t.c.id == same).values(**changed))
        return int(same)
    dialect = postgresql if conn.engine.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(t)
        .values(**values)
        .on_conflict_do_update(index_elements=["project_id", "feedback_id"], set_=changed)
        .returning(t.c.id)
    )
    return int(conn.execute(stmt).scalar_one())


def add_entry(
    engine: Engine,
    embedder: Embedder,
    project_id: int,
    *,
    query: str,
    answer: str,
    source: str,
    interaction_id: str | None = None,
    feedback_id: str | None = None,
    user_id: str | None = None,
    firing_id: int | None = None,
) -> int:
    """Add (or, for the same ``feedback_id``, replace) an entry; its id. ``user_id`` (the
    stored id of the user whose words the entry holds) is kept only as the keyed hash that
    erasure looks for."""
    if source not in _SOURCES:
        raise ConfigError(f"source must be one of {', '.join(_SOURCES)}", field="source")
    fix = _Fix(
        query=_text("query", query),
        answer=_text("answer", answer),
        source=source,
        interaction_id=interaction_id,
        feedback_id=feedback_id,
        user_id=user_id,
    )
    vector = embedder.embed([fix.query])[0].astype(np.float32).tobytes()
    with engine.begin() as conn:
        secret = _secret(conn, project_id)
        return _upsert(
            conn, project_id, fix, vector, secret=secret, model=embedder.name, firing_id=firing_id
        )


def _entry(row: Any) -> Entry:
    return Entry(
        id=int(row.id),
        query=row.query,
        answer=row.answer,
        source=row.source,
        interaction_id=row.interaction_id,
        feedback_id=row.feedback_id,
        model=row.model,
        active=bool(row.active),
        firing_id=row.firing_id,
        created_at=utc(row.created_at),
        updated_at=utc(row.updated_at),
    )


def entries(
    engine: Engine, project_id: int, *, limit: int = 100, active: bool | None = True
) -> list[Entry]:
    """The project's entries, newest first (``active=None``: also the deactivated ones)."""
    t = models.kb_entries
    columns = [c for c in t.c if c.name not in ("vector", "user_key")]
    query = sa.select(*columns).where(t.c.project_id == project_id)
    if active is not None:
        query = query.where(t.c.active == active)
    query = query.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(max(1, limit))
    with engine.connect() as conn:
        return [_entry(r) for r in conn.execute(query)]


def get_entry(engine: Engine, project_id: int, entry_id: int) -> Entry:
    """One entry of the project (:class:`NotFound` otherwise)."""
    t = models.kb_entries
    columns = [c for c in t.c if c.name not in ("vector", "user_key")]
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(*columns).where(t.c.project_id == project_id, t.c.id == entry_id)
        ).first()
    if row is None:
        raise NotFound(f"no knowledge-base entry {entry_id} in this project")
    return _entry(row)


def deactivate(engine: Engine, project_id: int, entry_id: int) -> None:
    """Stop recalling an entry (it stays listed with ``active=False``)."""
    t = models.kb_entries
    with engine.begin() as conn:
        done = conn.execute(
            t.update()
            .where(t.c.project_id == project_id, t.c.id == entry_id)
            .values(active=False, updated_at=utcnow())
        ).rowcount
    if not done:
        raise NotFound(f"no knowledge-base entry {entry_id} in this project")


def recall(
    engine: Engine,
    embedder: Embedder,
    project_id: int,
    query: str,
    *,
    k: int = 3,
    min_score: float = 0.0,
) -> list[Recalled]:
    """The ``k`` active entries whose query is closest to ``query`` (cosine, best first),
    each scoring at least ``min_score`` (see the module docstring)."""
    query = _text("query", query)
    return recall_many(engine, embedder, project_id, [query], k=k, min_score=min_score)[0]


def recall_many(
    engine: Engine,
    embedder: Embedder,
    project_id: int,
    queries: Sequence[str],
    *,
    k: int = 3,
    min_score: float = 0.0,
) -> list[list[Recalled]]:
    """:func:`recall` for many queries at once (one read of the entries, one matrix product):
    the same entries and scores as calling it on each query, in the order of ``queries``."""
    if not 1 <= k <= 50:
        raise ConfigError("k must lie within 1-50", field="k")
    queries = [_text("query", q) for q in queries]
    if not queries:
        return []
    t = models.kb_entries
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.c.id, t.c.model, t.c.vector).where(
                t.c.project_id == project_id, t.c.active.is_(True)
            )
        ).all()
    if not rows:
        return [[] for _ in queries]
    stale = [r for r in rows if r.model != embedder.name or r.vector is None]
    fresh = _reembed(engine, embedder, stale) if stale else {}
    dim = int(embedder.dim)
    keep: list[int] = []
    blobs: list[bytes] = []
    for n, row in enumerate(rows):
        blob = fresh.get(int(row.id), row.vector)
        if blob is not None and len(blob) == 4 * dim:
            keep.append(n)
            blobs.append(bytes(blob))
    if not keep:
        return [[] for _ in queries]
    matrix = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(keep), dim)
    scores = embedder.embed(queries) @ matrix.T
    bests: list[dict[int, float]] = []
    for row_scores in scores:
        order = np.argsort(-row_scores, kind="stable")[:k]
        bests.append(
            {
                int(rows[keep[j]].id): float(row_scores[j])
                for j in order
                if row_scores[j] >= min_score
            }
        )
    wanted = sorted({i for best in bests for i in best})
    texts: dict[int, Any] = {}
    with engine.connect() as conn:
        for start in range(0, len(wanted), _CHUNK):
            chunk = wanted[start : start + _CHUNK]
            for r in conn.execute(
                sa.select(t.c.id, t.c.query, t.c.answer, t.c.source, t.c.created_at).where(
                    t.c.project_id == project_id, t.c.id.in_(chunk), t.c.active.is_(True)
                )
            ):
                texts[int(r.id)] = r
    return [
        [
            Recalled(
                id=entry_id,
                query=texts[entry_id].query,
                answer=texts[entry_id].answer,
                score=score,
                source=texts[entry_id].source,
                created_at=utc(texts[entry_id].created_at),
            )
            for entry_id, score in best.items()
            if entry_id in texts
        ]
        for best in bests
    ]


def _reembed(engine: Engine, embedder: Embedder, rows: Sequence[Any]) -> dict[int, bytes]:
    """Embed again the entries of another model; store and return their vectors by id."""
    t = models.kb_entries
    ids = [int(r.id) for r in rows]
    with engine.connect() as conn:
        queries = dict(conn.execute(sa.select(t.c.id, t.c.query).where(t.c.id.in_(ids))).all())
    ids = [i for i in ids if i in queries]
    matrix = embedder.embed([queries[i] for i in ids]).astype(np.float32)
    out = {entry_id: matrix[n].tobytes() for n, entry_id in enumerate(ids)}
    with engine.begin() as conn:
        for entry_id, blob in out.items():
            conn.execute(
                t.update().where(t.c.id == entry_id).values(vector=blob, model=embedder.name)
            )
    return out


def _latest_corrections(
    conn: sa.Connection,
    project_id: int,
    interaction_ids: Iterable[str] | None,
    since: dt.datetime | None,
    limit: int,
) -> list[Any]:
    """The latest correction of each interaction (in the hot store), newest first."""
    f, i = models.feedback, models.interactions
    query = (
        sa.select(
            f.c.id,
            f.c.interaction_id,
            f.c.correction,
            f.c.source,
            f.c.user_id.label("feedback_user"),
            i.c.user_id,
            i.c.body,
        )
        .join(i, sa.and_(i.c.project_id == f.c.project_id, i.c.id == f.c.interaction_id))
        .where(f.c.project_id == project_id, f.c.correction.is_not(None), f.c.correction != "")
        .order_by(f.c.ts.desc(), f.c.id.desc())
    )
    if since is not None:
        query = query.where(f.c.received_at >= since)
    if interaction_ids is None:
        return _first_of_each(conn.execute(query.limit(limit * 10)))[:limit]
    return _latest_of(conn, query, f.c.interaction_id, interaction_ids)[:limit]


def _latest_of(
    conn: sa.Connection, query: sa.Select[Any], column: Any, interaction_ids: Iterable[str]
) -> list[Any]:
    """The first row ``query`` (newest first) gives for each of the interactions."""
    ids = sorted(set(interaction_ids))
    rows: list[Any] = []
    for start in range(0, len(ids), _CHUNK):
        rows.extend(conn.execute(query.where(column.in_(ids[start : start + _CHUNK]))))
    return _first_of_each(rows)


def _first_of_each(rows: Iterable[Any]) -> list[Any]:
    latest: dict[str, Any] = {}
    for row in rows:
        latest.setdefault(row.interaction_id, row)
    return list(latest.values())


def _write(
    engine: Engine,
    embedder: Embedder,
    project_id: int,
    fixes: Sequence[_Fix],
    *,
    firing_id: int | None,
    dry_run: bool,
) -> int:
    """Store ``fixes`` as active entries, each deactivating the other entries of its
    interaction but the manual ones; how many (in a dry run: would be)."""
    if dry_run or not fixes:
        return len(fixes)
    t = models.kb_entries
    matrix, name = embedder.embed([fix.query for fix in fixes]).astype(np.float32), embedder.name
    with engine.begin() as conn:
        secret = _secret(conn, project_id)
        for n, fix in enumerate(fixes):
            vector = matrix[n].tobytes()
            entry_id = _upsert(
                conn, project_id, fix, vector, secret=secret, model=name, firing_id=firing_id
            )
            conn.execute(
                t.update()
                .where(
                    t.c.project_id == project_id,
                    t.c.interaction_id == fix.interaction_id,
                    t.c.id != entry_id,
                    t.c.source != "manual",
                )
                .values(active=False, updated_at=utcnow())
            )
    return len(fixes)


def from_corrections(
    engine: Engine,
    embedder: Embedder,
    project_id: int,
    interaction_ids: Iterable[str] | None = None,
    *,
    since: dt.datetime | None = None,
    firing_id: int | None = None,
    limit: int = 100,
    dry_run: bool = False,
) -> int:
    """Turn the latest correction of each interaction (those of ``interaction_ids``, or those
    corrected ``since``) into an entry: the interaction's input as the query, the correction
    as the answer. The interaction's other entries (but manual ones) are deactivated. Returns
    how many entries were written (in a dry run: would be)."""
    if interaction_ids is None and since is None:
        raise ConfigError("pass interaction_ids or since", field="interaction_ids")
    with engine.connect() as conn:
        fixes = [
            _Fix(
                interaction_id=row.interaction_id,
                query=text,
                answer=row.correction,
                source="review" if row.source == "reviewer" else "correction",
                feedback_id=row.id,
                user_id=row.user_id or row.feedback_user,
            )
            for row in _latest_corrections(conn, project_id, interaction_ids, since, limit)
            if (text := input_text(row.body)) is not None and text.strip()
        ]
    return _write(engine, embedder, project_id, fixes, firing_id=firing_id, dry_run=dry_run)


def _latest_edits(conn: sa.Connection, project_id: int, interaction_ids: list[str]) -> list[Any]:
    """The latest ``edit`` signal of each interaction (in the hot store)."""
    s, i = models.signals, models.interactions
    query = (
        sa.select(
            s.c.interaction_id,
            s.c.body.label("signal_body"),
            s.c.user_id.label("signal_user"),
            i.c.user_id,
            i.c.body,
        )
        .join(i, sa.and_(i.c.project_id == s.c.project_id, i.c.id == s.c.interaction_id))
        .where(s.c.project_id == project_id, s.c.kind == "edit")
        .order_by(s.c.ts.desc(), s.c.id.desc())
    )
    return _latest_of(conn, query, s.c.interaction_id, interaction_ids)


def from_edits(
    engine: Engine,
    embedder: Embedder,
    project_id: int,
    interaction_ids: Iterable[str],
    *,
    firing_id: int | None = None,
    limit: int = 100,
    dry_run: bool = False,
) -> int:
    """Turn the text the user kept in the latest ``edit`` signal of each interaction into an
    entry (source ``edit``): the interaction's input as the query, the kept text (stripped) as
    the answer, when it is not empty and differs from the output. An interaction with a
    correction gets none (the explicit fix wins, see :func:`from_corrections`). The
    interaction's other entries (but manual ones) are deactivated. Returns how many entries
    were written (in a dry run: would be)."""
    ids = sorted(set(interaction_ids))
    fixes: list[_Fix] = []
    with engine.connect() as conn:
        corrected = {
            r.interaction_id for r in _latest_corrections(conn, project_id, ids, None, len(ids))
        }
        for row in _latest_edits(conn, project_id, [i for i in ids if i not in corrected]):
            kept = str(json.loads(row.signal_body).get("text") or "").strip()
            output = json.loads(row.body).get("output")
            query = input_text(row.body)
            if not kept or not query or not query.strip():
                continue
            if isinstance(output, str) and kept == output.strip():
                continue
            fixes.append(
                _Fix(
                    interaction_id=row.interaction_id,
                    query=query,
                    answer=kept,
                    source="edit",
                    feedback_id=None,
                    user_id=row.signal_user or row.user_id,  # the words kept are the editor's
                )
            )
    fixes = fixes[:limit]
    return _write(engine, embedder, project_id, fixes, firing_id=firing_id, dry_run=dry_run)


class KnowledgeParams(pydantic.BaseModel):
    """``kb_refresh:`` parameters of a rule."""

    model_config = pydantic.ConfigDict(extra="forbid")

    from_corrections: bool = True
    from_edits: bool = pydantic.Field(
        default=False,
        description="Also the text users kept in their edits (where no correction exists).",
    )
    max_entries: int = pydantic.Field(default=100, ge=1, le=10_000)


class KnowledgeAction:
    """Turn the corrections (and, with ``from_edits``, the edits) on the trigger's interactions
    into knowledge-base entries (a per-event rule passes the corrected or edited interaction:
    the fix is recallable at once)."""

    name: ClassVar[str] = "kb_refresh"
    Params: ClassVar[type[pydantic.BaseModel]] = KnowledgeParams

    def __init__(self, params: KnowledgeParams, context: ActContext) -> None:
        self.params = params
        self.context = context

    @classmethod
    def _unit_test_params(cls) -> Sequence[dict[str, Any]]:
        return [{}, {"from_corrections": False}, {"from_edits": True}, {"max_entries": 5}]

    def run(self, trigger: Trigger, *, dry_run: bool = False) -> ActionResult:
        """Write the entries (in a dry run: count them)."""
        ids = list(dict.fromkeys(trigger.interaction_ids))
        p, written = self.params, {"corrections": 0, "edits": 0}
        context, project_id = self.context, trigger.project_id
        if p.from_corrections and ids:
            written["corrections"] = from_corrections(
                context.engine,
                context.embedder(),
                project_id,
                ids,
                firing_id=trigger.firing_id,
                limit=p.max_entries,
                dry_run=dry_run,
            )
        left = p.max_entries - written["corrections"]
        if p.from_edits and ids and left > 0:
            written["edits"] = from_edits(
                context.engine,
                context.embedder(),
                project_id,
                ids,
                firing_id=trigger.firing_id,
                limit=left,
                dry_run=dry_run,
            )
        count = sum(written.values())
        verb = "would write" if dry_run else "wrote"
        return ActionResult(
            action=self.name,
            ok=True,
            summary=f"{verb} {count} knowledge-base entries ({written['corrections']} from "
            f"corrections, {written['edits']} from edits)",
            details={"entries": count, **written, "interaction_ids": ids[: p.max_entries]},
            dry_run=dry_run,
        )
