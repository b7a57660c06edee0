"""Erasure of one end user from every tier: hot rows, vectors, the lake, exports.

``erase_user`` removes the user's interactions, the feedback and signals on them or given by
them, their sessions, the vectors and cached embeddings of those texts, the lake rows of all
of it (each affected Parquet file rewritten through the verified publish of
:mod:`closedloop.store.lake.tiering`) and the export files that held the user. It records a
tombstone first, so events for the user that arrive during or after the erasure are refused or
dropped (:mod:`closedloop.store.erased`), and answers with a receipt of what it removed where.

The user is looked up by the id the app sends and by its pseudonym (for projects that store
``ids: hash``, or did at some time). It is safe to run again: a second run removes what a
crashed first run left, and reports zeros when there is nothing left.

On SQLite the deletes run with ``secure_delete`` (freed bytes are overwritten with zeros) and
the WAL is checkpointed and truncated afterwards, so the erased bytes leave the files. On
PostgreSQL dead tuples keep their bytes until VACUUM reuses the space and old WAL segments are
recycled; run ``VACUUM`` after an erasure where that matters.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import re
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.enrich.privacy import pseudonym
from closedloop.errors import ConfigError, LakeError, NotFound
from closedloop.store import models
from closedloop.store.db import is_sqlite, utcnow
from closedloop.store.erased import INTERACTION, add_tombstones, user_key
from closedloop.store.exports import exports_holding, mark_deleted
from closedloop.store.lake import manifest
from closedloop.store.lake.files import Lake
from closedloop.store.lake.lock import lake_lock
from closedloop.store.lake.tiering import recover, rewrite
from closedloop.store.vectors.index import IndexManager

__all__ = ["ErasureReceipt", "erase_user"]

_CHUNK = 400


@dataclass
class ErasureReceipt:
    """What an erasure removed, where."""

    project_id: int
    erased_at: dt.datetime
    hot: dict[str, int] = field(default_factory=dict)
    lake: list[dict[str, Any]] = field(default_factory=list)
    exports: list[dict[str, Any]] = field(default_factory=list)
    indexes_dropped: bool = False

    @property
    def total(self) -> int:
        """Rows removed in all (hot rows, vectors, cache entries and lake rows)."""
        return sum(self.hot.values()) + sum(int(f["removed_rows"]) for f in self.lake)

    def to_json(self) -> dict[str, Any]:
        """The receipt as the API answers it."""
        return {
            "erased_at": self.erased_at.isoformat(),
            "hot": dict(self.hot),
            "lake": list(self.lake),
            "exports": list(self.exports),
            "indexes_dropped": self.indexes_dropped,
            "total_removed": self.total,
        }


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _CHUNK):
        yield list(items[start : start + _CHUNK])


def _select_ids(conn: sa.Connection, column: Any, where: Any, values: Iterable[str]) -> set[str]:
    found: set[str] = set()
    items = sorted(set(values))
    for chunk in _chunks(items):
        found.update(r[0] for r in conn.execute(sa.select(column).where(where(chunk))))
    return found


_ID_CHAR = r"A-Za-z0-9._:\-"  # the characters of an event id (closedloop.events)


@dataclass
class _Erased:
    """The ids of the user's rows an erasure has found: each sweep of the hot store adds the
    feedback and signals it deletes (the lake's are added before), so that every sweep scrubs
    what the act stage copied of any of them."""

    interactions: set[str]
    feedback: set[str] = field(default_factory=set)
    signals: set[str] = field(default_factory=set)


def _mentions(text: str, ids: Collection[str]) -> bool:
    """Whether ``text`` (JSON, possibly holding JSON in strings) names one of ``ids`` whole."""
    return any(re.search(f"(?<![{_ID_CHAR}]){re.escape(i)}(?![{_ID_CHAR}])", text) for i in ids)


def _scrub_actions(conn: sa.Connection, project_id: int, erased: _Erased) -> dict[str, int]:
    """The user's words that the act stage copied: a rule firing's snapshot of their feedback
    or signal (an edit's text), the results of actions that quoted their interactions,
    feedback or signals (a prompt candidate's examples, a dry run's body), the webhooks
    carrying their feedback or signals (deleted while not yet delivered, emptied after), and
    the few-shot examples of prompt versions. Rows are picked by a LIKE on each id (wildcards
    escaped), then checked exactly."""
    from closedloop.act.prompts import forget_examples

    fr, wd = models.firings, models.webhook_deliveries
    interaction_ids, feedback_ids = erased.interactions, erased.feedback
    events = feedback_ids | erased.signals  # what a trigger's snapshot or a webhook carries
    ids = interaction_ids | events
    firings: set[int] = set()
    deliveries: set[int] = set()
    for chunk in _chunks(sorted(ids)):
        like_trigger = [fr.c.trigger.contains(i, autoescape=True) for i in chunk]
        like_actions = [fr.c.actions.contains(i, autoescape=True) for i in chunk]
        rows = conn.execute(
            sa.select(fr.c.id, fr.c.trigger, fr.c.actions).where(
                fr.c.project_id == project_id, sa.or_(*like_trigger, *like_actions)
            )
        ).all()
        for row in rows:
            trigger, stored = json.loads(row.trigger), json.loads(row.actions)
            changed = False
            snapshot = trigger.get("snapshot") or {}
            if (
                snapshot.get("feedback_id") in feedback_ids
                or snapshot.get("signal_id") in erased.signals
            ):
                trigger["snapshot"], changed = {"erased": True}, True
            results = stored if isinstance(stored, list) else (stored or {}).get("done", [])
            for result in results:
                if _mentions(json.dumps(result.get("details")), ids):
                    result["details"], changed = {"erased": True}, True
            if changed:
                conn.execute(
                    fr.update()
                    .where(fr.c.id == row.id)
                    .values(trigger=json.dumps(trigger), actions=json.dumps(stored))
                )
                firings.add(int(row.id))
        rows = conn.execute(
            sa.select(wd.c.id, wd.c.payload, wd.c.state).where(
                wd.c.project_id == project_id,
                sa.or_(*[wd.c.payload.contains(i, autoescape=True) for i in chunk]),
            )
        ).all()
        for row in rows:
            if int(row.id) in deliveries or not _mentions(row.payload, events):
                continue
            where = wd.c.id == row.id
            if row.state == "delivered":
                conn.execute(wd.update().where(where).values(payload="{}"))
            else:
                conn.execute(wd.delete().where(where))
            deliveries.add(int(row.id))
    examples = forget_examples(conn, project_id, interaction_ids, feedback_ids)
    return {
        "firings": len(firings),
        "webhook_deliveries": len(deliveries),
        "prompt_examples": examples,
    }


def _delete(conn: sa.Connection, table: sa.Table, where: Any, values: Iterable[str]) -> int:
    items = sorted(set(values))
    return sum(
        int(conn.execute(table.delete().where(where(chunk))).rowcount or 0)
        for chunk in _chunks(items)
    )


def _lake_matches(
    lake: Lake, file: manifest.LakeFile, columns: Sequence[str], forms: set[str], ids: set[str]
) -> tuple[int, set[str]]:
    """How many rows of ``file`` belong to the user, and the ids of those rows."""
    with lake.open(file.path) as handle:
        table = pq.read_table(handle, columns=["id", *columns])
    mask = _mask(table, columns, forms, ids)
    hit = table.filter(mask)
    return hit.num_rows, {str(v) for v in hit.column("id").to_pylist()}


def _mask(table: pa.Table, columns: Sequence[str], forms: set[str], ids: set[str]) -> pa.Array:
    mask = pa.array([False] * table.num_rows, type=pa.bool_())
    for name in columns:
        values = pa.array(sorted(ids if name == "interaction_id" else forms), type=pa.string())
        mask = pc.or_(mask, pc.fill_null(pc.is_in(table.column(name), value_set=values), False))
    return mask


_USER_COLUMNS = {
    "interactions": ("user_id",),
    "feedback": ("user_id", "given_by", "interaction_id"),
    "signals": ("user_id", "interaction_id"),
}


def erase_user(
    engine: Engine,
    lake: Lake | None,
    project_id: int,
    user_id: str,
    *,
    indexes: IndexManager | None = None,
    on_tombstone: Callable[[], None] | None = None,
    settle_seconds: float = 0.0,
) -> ErasureReceipt:
    """Erase ``user_id`` (as the app sends it) from every tier of ``project_id``.

    ``on_tombstone`` is called as soon as the tombstones are committed (the caller drops its
    cached view of them). ``settle_seconds`` is how long other processes may still take the
    user's events after that (their cache's lifetime): the hot store is swept once more when
    it has passed, so an event accepted meanwhile does not survive the erasure.
    """
    if not user_id or len(user_id) > 128:
        raise ConfigError("user_id must hold 1-128 characters: the id the app sends as user_id")
    p = models.projects
    with engine.connect() as conn:
        row = conn.execute(sa.select(p.c.pii_secret).where(p.c.id == project_id)).first()
    if row is None:
        raise NotFound(f"no project with id {project_id}")
    secret = row.pii_secret
    forms = {user_id, pseudonym(secret, user_id)} if secret else {user_id}
    receipt = ErasureReceipt(project_id=project_id, erased_at=utcnow())
    notify = on_tombstone or (lambda: None)

    # 1. The tombstone first: from here on the user's new events are kept out.
    with engine.begin() as conn:
        add_tombstones(conn, project_id, [user_key(secret, form) for form in sorted(forms)])
    notify()
    settled_at = time.monotonic() + settle_seconds

    # 2-4 under the lake's lock, so that no tiering, retention or other erasure moves the
    # user's rows between reading the lake and rewriting it.
    lock = lake_lock(engine) if lake is not None else contextlib.nullcontext(True)
    with lock:
        if lake is not None:
            recover(engine, lake)  # a crashed rewrite's old file holds rows: gone first
        with engine.connect() as conn:
            interaction_ids = _hot_interactions(conn, project_id, forms)
        # 2. What the lake holds of the user: their interactions' ids first, then the files.
        lake_hits: list[manifest.LakeFile] = []
        tiered: dict[str, set[str]] = {"feedback": set(), "signals": set()}
        if lake is not None:
            with engine.connect() as conn:
                files = manifest.published(conn, project_id)
            for entity in ("interactions", "feedback", "signals"):
                for file in (f for f in files if f.entity == entity):
                    count, hit_ids = _lake_matches(
                        lake, file, _USER_COLUMNS[entity], forms, interaction_ids
                    )
                    if entity == "interactions":
                        interaction_ids |= hit_ids
                    else:  # a firing of a tiered feedback or signal may still quote it
                        tiered[entity] |= hit_ids
                    if count:
                        lake_hits.append(file)
        # Feedback and signals sent later on the erased answers are kept out too.
        with engine.begin() as conn:
            add_tombstones(
                conn,
                project_id,
                [user_key(secret, INTERACTION + i) for i in sorted(interaction_ids)],
            )
        notify()
        # 3. The hot tables, vectors and cached embeddings, in one transaction.
        erased = _Erased(interaction_ids, tiered["feedback"], tiered["signals"])
        _add(receipt.hot, _delete_hot(engine, project_id, forms, erased))
        # 4. The lake: each affected file rewritten without the user's rows (verified).
        for file in lake_hits:
            columns = _USER_COLUMNS[file.entity]

            def keep(table: pa.Table, columns: Sequence[str] = columns) -> pa.Table:
                return table.filter(pc.invert(_mask(table, columns, forms, interaction_ids)))

            try:
                removed, new_file = rewrite(engine, lake, file, keep)  # type: ignore[arg-type]
            except OSError as exc:
                raise LakeError(
                    f"the lake file {file.path} could not be rewritten ({exc}); erase the "
                    "user again to finish"
                ) from exc
            receipt.lake.append(
                {
                    "entity": file.entity,
                    "path": file.path,
                    "removed_rows": removed,
                    "replaced_by": new_file.path if new_file is not None else None,
                }
            )

    # 5. Exports that held the user: deleted (they can be made again without them).
    with engine.begin() as conn:
        held = exports_holding(conn, project_id, [user_key(secret, f) for f in sorted(forms)])
        for export in held:
            # remote exports are written with the lake's storage options (credentials, endpoint)
            options = lake.options if lake is not None and "://" in export.url else {}
            fs, path = fsspec.core.url_to_fs(export.url, **options)
            if fs.exists(path):
                fs.rm(path)
            receipt.exports.append({"kind": export.kind, "url": export.url, "rows": export.rows})
        mark_deleted(conn, [e.id for e in held])

    # 6. Once every process refuses the user's events, sweep the hot store again: an event
    # accepted before a process saw the tombstone, or a vector the embedding job was
    # writing, does not survive.
    wait = settled_at - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    _add(receipt.hot, _delete_hot(engine, project_id, forms, erased))

    # 7. Vector indexes hold the vectors too: dropped, rebuilt from the table on next use.
    if indexes is not None:
        indexes.drop(project_id)
        receipt.indexes_dropped = True

    if is_sqlite(engine):
        _checkpoint(engine)
    return receipt


def _add(into: dict[str, int], counts: dict[str, int]) -> None:
    for name, count in counts.items():
        into[name] = into.get(name, 0) + count


def _hot_interactions(conn: sa.Connection, project_id: int, forms: set[str]) -> set[str]:
    i = models.interactions
    return _select_ids(
        conn, i.c.id, lambda c: sa.and_(i.c.project_id == project_id, i.c.user_id.in_(c)), forms
    )


def _delete_hot(engine: Engine, project_id: int, forms: set[str], known: _Erased) -> dict[str, int]:
    """Delete the user's hot rows and what hangs on them, in one transaction; the counts.
    The ids of the feedback and signals deleted are added to ``known``.

    Source rows go before their vectors: on PostgreSQL the embedding job holds a share lock
    on the rows it is storing vectors for, so these deletes wait for it, and the vector
    delete after them sees its vectors."""
    i, f, s, ss = models.interactions, models.feedback, models.signals, models.sessions
    v, cache = models.vectors, models.embedding_cache
    hot: dict[str, int] = {}
    with engine.begin() as conn:
        if is_sqlite(engine):
            conn.exec_driver_sql("PRAGMA secure_delete=ON")
        hot_interactions = _hot_interactions(conn, project_id, forms)
        interaction_ids = known.interactions | hot_interactions
        session_ids = {
            r[0]
            for chunk in _chunks(sorted(hot_interactions))
            for r in conn.execute(
                sa.select(i.c.session_id).where(
                    i.c.project_id == project_id, i.c.id.in_(chunk), i.c.session_id.is_not(None)
                )
            )
        }
        session_ids |= _select_ids(
            conn,
            ss.c.session_id,
            lambda c: sa.and_(ss.c.project_id == project_id, ss.c.user_id.in_(c)),
            forms,
        )
        feedback_ids = _select_ids(
            conn,
            f.c.id,
            lambda c: sa.and_(
                f.c.project_id == project_id, sa.or_(f.c.user_id.in_(c), f.c.given_by.in_(c))
            ),
            forms,
        ) | _select_ids(
            conn,
            f.c.id,
            lambda c: sa.and_(f.c.project_id == project_id, f.c.interaction_id.in_(c)),
            interaction_ids,
        )
        hot["feedback"] = _delete(
            conn, f, lambda c: sa.and_(f.c.project_id == project_id, f.c.id.in_(c)), feedback_ids
        )
        # the deleted signals' ids: a firing's snapshot or a webhook may carry their text
        signal_ids: list[str] = []
        for chunk in _chunks(sorted(forms | interaction_ids)):
            signal_ids += conn.execute(
                s.delete()
                .where(
                    s.c.project_id == project_id,
                    sa.or_(s.c.user_id.in_(chunk), s.c.interaction_id.in_(chunk)),
                )
                .returning(s.c.id)
            ).scalars()
        hot["signals"] = len(signal_ids)
        known.feedback |= feedback_ids
        known.signals.update(signal_ids)
        hot["sessions"] = _delete(
            conn,
            ss,
            lambda c: sa.and_(ss.c.project_id == project_id, ss.c.session_id.in_(c)),
            session_ids,
        )
        hot["interactions"] = _delete(
            conn,
            i,
            lambda c: sa.and_(i.c.project_id == project_id, i.c.id.in_(c)),
            hot_interactions,
        )
        text_hashes = _select_ids(
            conn,
            v.c.text_hash,
            lambda c: sa.and_(v.c.project_id == project_id, v.c.interaction_id.in_(c)),
            interaction_ids,
        ) | _select_ids(
            conn,
            v.c.text_hash,
            lambda c: sa.and_(v.c.project_id == project_id, v.c.user_id.in_(c)),
            forms,
        )
        hot["vectors"] = (
            _delete(
                conn,
                v,
                lambda c: sa.and_(v.c.project_id == project_id, v.c.interaction_id.in_(c)),
                interaction_ids,
            )
            + _delete(
                conn,
                v,
                lambda c: sa.and_(v.c.project_id == project_id, v.c.ref_id.in_(c)),
                feedback_ids,
            )
            + _delete(
                conn,
                v,
                lambda c: sa.and_(v.c.project_id == project_id, v.c.user_id.in_(c)),
                forms,
            )
        )
        hot["embedding_cache"] = _delete(
            conn, cache, lambda c: cache.c.text_hash.in_(c), text_hashes
        )
        # knowledge-base entries holding the user's words (by their keyed hash, or made from
        # their interactions and feedback), and reviewers' answers on their interactions (the
        # reviewer feedback itself went with the interactions' feedback above)
        kb, rt, p = models.kb_entries, models.review_tasks, models.projects
        secret = conn.execute(sa.select(p.c.pii_secret).where(p.c.id == project_id)).scalar()
        hot["kb_entries"] = (
            _delete(
                conn,
                kb,
                lambda c: sa.and_(kb.c.project_id == project_id, kb.c.user_key.in_(c)),
                [user_key(secret, form) for form in forms],
            )
            + _delete(
                conn,
                kb,
                lambda c: sa.and_(kb.c.project_id == project_id, kb.c.interaction_id.in_(c)),
                interaction_ids,
            )
            + _delete(
                conn,
                kb,
                lambda c: sa.and_(kb.c.project_id == project_id, kb.c.feedback_id.in_(c)),
                feedback_ids,
            )
        )
        hot["review_answers"] = sum(
            int(
                conn.execute(
                    rt.update()
                    .where(
                        rt.c.project_id == project_id,
                        rt.c.interaction_id.in_(chunk),
                        rt.c.answer.is_not(None),
                    )
                    .values(answer=None, updated_at=utcnow())
                ).rowcount
                or 0
            )
            for chunk in _chunks(sorted(interaction_ids))
        )
        scrub = _Erased(interaction_ids, known.feedback, known.signals)
        hot.update(_scrub_actions(conn, project_id, scrub))
        # topic and issue memberships, and the examples that showed the user's inputs (a
        # cluster's centroid and keywords are aggregates, renewed when it next changes)
        m, cl = models.cluster_members, models.clusters
        lost = {
            (kind, cid)
            for chunk in _chunks(sorted(interaction_ids))
            for kind, cid in conn.execute(
                sa.select(m.c.kind, m.c.cluster_id)
                .where(m.c.project_id == project_id, m.c.ref_id.in_(chunk), m.c.cluster_id > 0)
                .distinct()
            )
        }
        hot["cluster_members"] = _delete(
            conn,
            m,
            lambda c: sa.and_(m.c.project_id == project_id, m.c.ref_id.in_(c)),
            interaction_ids,
        )
        for kind, cid, examples in conn.execute(
            sa.select(cl.c.kind, cl.c.id, cl.c.examples).where(cl.c.project_id == project_id)
        ).all():
            kept = [e for e in json.loads(examples) if e not in interaction_ids]
            if len(kept) != len(json.loads(examples)):
                conn.execute(
                    cl.update()
                    .where(cl.c.project_id == project_id, cl.c.kind == kind, cl.c.id == cid)
                    .values(examples=json.dumps(kept))
                )
        # the analysis job names again the clusters that lost members (it renames those it
        # has no named size for): their keywords may hold the user's words
        st = models.analysis_state
        for kind in {k for k, _ in lost}:
            where = (st.c.project_id == project_id, st.c.name == f"{kind}_named")
            value = conn.execute(sa.select(st.c.value).where(*where).with_for_update()).scalar()
            if value is not None:
                named = json.loads(value)
                for k, cid in lost:
                    if k == kind:
                        named.pop(str(cid), None)
                conn.execute(st.update().where(*where).values(value=json.dumps(named)))
    return hot


def _checkpoint(engine: Engine, attempts: int = 20) -> None:
    """Copy the WAL into the database file and truncate it (old page images hold the erased
    bytes). A reader holding an old snapshot makes SQLite answer busy: retry briefly."""
    for _ in range(attempts):
        with engine.connect() as conn:
            busy = conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").first()
        if busy is None or not busy[0]:
            return
        time.sleep(0.05)
