"""The tiering job: move settled rows older than each project's hot window to the lake.

For each project and entity (interactions, feedback, signals) the rows older than the
project's hot window (judged by ``ts``) that are settled (interactions enriched, i.e.
``enriched_at IS NOT NULL``; feedback and signals no longer ``pending``) move in files of one
UTC day each, at most ``file_rows`` rows, ordered by ``(ts, id)``. The protocol, in this order:

1. **recover** — under the lake lock, delete every file in staging and every partition file
   that the manifest does not list: they were left by a crashed run (with the lock held no
   other writer is at work, so an unlisted file is garbage).
2. **read** — the chunk's rows from the hot table into an Arrow table of the layout schema.
3. **write**, **verify** — write it to the staging path (Parquet, zstd, schema version and
   checksum in the metadata), read it back, check row count and checksum
   (:mod:`.publish`); a mismatch deletes the staged file and raises :class:`LakeError`.
4. **move** — to its final partition path (a local rename; copy then delete on S3).
5. **commit** — ONE transaction deletes the chunk's rows by primary key (``RETURNING`` them)
   and inserts the file's manifest row. When the deleted rows are not exactly the file's rows
   (same keys, same checksum: a row changed or vanished meanwhile) the transaction rolls back
   and the file is deleted; the rows stay hot for the next run.

A crash anywhere leaves each row either hot (its file is unlisted, hence garbage that step 1
of the next run deletes) or in a listed file (its hot row is gone): a rerun ends with every
row exactly once across hot rows and the rows of the manifest's files.

The lake lock (:func:`.lock.lake_lock`) serialises every writer of the lake: tiering,
retention (:func:`drop_before`) and erasure (:func:`rewrite`). One lake root belongs to one
database.

Test hooks: ``fail_at`` names a step at which an :class:`InjectedFailure` is raised, and
``on_step`` is called with each step's name. Steps, where they fire: ``recover`` (before
recovery), ``read`` (before a chunk is read), ``write`` (the staged file is half written),
``verify`` (the staged file is complete, not yet read back), ``move`` (verified, not yet
moved), ``commit`` (inside the transaction, its statements done, before COMMIT) and ``done``
(committed). :func:`rewrite` fires ``read``, ``write``, ``verify``, ``move``, ``commit`` and
``cleanup`` (before the replaced file is deleted); :func:`drop_before` fires ``commit`` and
``cleanup``.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from closedloop.errors import LakeError
from closedloop.store import models
from closedloop.store.db import utc, utcnow
from closedloop.store.lake import manifest
from closedloop.store.lake.files import Lake
from closedloop.store.lake.layout import (
    ENTITIES,
    SCHEMA_VERSION,
    arrow_schema,
    partition_path,
    table_of,
)
from closedloop.store.lake.lock import lake_lock
from closedloop.store.lake.publish import Hook, Staged, checksum, read_verified, stage

__all__ = [
    "DEFAULT_HOT_DAYS",
    "STEPS",
    "InjectedFailure",
    "TierReport",
    "Tierer",
    "drop_before",
    "read_file",
    "recover",
    "rewrite",
    "tier",
    "to_arrow",
]

log = logging.getLogger(__name__)

#: The hot window of a project whose retention does not say, in days.
DEFAULT_HOT_DAYS = 30.0
#: The steps of a tiering run, in order (see the module docstring).
STEPS = ("recover", "read", "write", "verify", "move", "commit", "done")

_CHUNK = 500  # primary keys per IN (...) list
_STAGING = "_staging"

HotDays = Callable[[int], float] | Mapping[int, float] | float


class InjectedFailure(RuntimeError):
    """Raised at the step named by ``fail_at`` (a test hook)."""


@dataclass
class TierReport:
    """What a tiering run did."""

    files: int = 0
    rows: int = 0
    #: Rows moved, by entity.
    by_entity: dict[str, int] = field(default_factory=dict)
    #: Stray files (left by a crashed run) deleted by recovery.
    recovered: int = 0
    #: Chunks rolled back because their rows changed while they were written.
    conflicts: int = 0
    #: Another run held the lake lock: this one did nothing.
    busy: bool = False
    #: The time budget ran out before every due row moved (the next run continues).
    unfinished: bool = False


def _hook(fail_at: str | None, on_step: Hook | None) -> Hook:
    def hook(step: str) -> None:
        if on_step is not None:
            on_step(step)
        if step == fail_at:
            raise InjectedFailure(f"injected failure at step {step!r}")

    return hook


# -- rows as Arrow ---------------------------------------------------------------------------


def to_arrow(entity: str, rows: Sequence[Sequence[Any]]) -> pa.Table:
    """Rows of ``entity``'s hot table (all columns, in table order) as an Arrow table of the
    layout schema; naive timestamps (SQLite) are taken as UTC."""
    schema = arrow_schema(entity)
    columns: list[Sequence[Any]] = (
        list(zip(*rows, strict=True)) if rows else [() for _ in schema.names]
    )
    arrays = []
    for fld, values in zip(schema, columns, strict=True):
        if pa.types.is_timestamp(fld.type):
            values = [None if v is None else utc(v) for v in values]
        arrays.append(pa.array(values, type=fld.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def _settled(entity: str, table: sa.Table) -> sa.ColumnElement[bool]:
    if entity == "interactions":
        return table.c.enriched_at.is_not(None)
    return table.c.join_state != "pending"


def _hot_days(hot_days_of: HotDays, project_id: int) -> float:
    if isinstance(hot_days_of, int | float):
        return float(hot_days_of)
    if isinstance(hot_days_of, Mapping):
        return float(hot_days_of.get(project_id, DEFAULT_HOT_DAYS))
    return float(hot_days_of(project_id))


# -- recovery --------------------------------------------------------------------------------


def recover(engine: Engine, lake: Lake) -> int:
    """Delete staged files and partition files the manifest does not list; returns how many.
    Call it with the lake lock held (:func:`tier` does)."""
    with engine.connect() as conn:
        listed = set(conn.execute(sa.select(models.lake_files.c.path)).scalars())
    removed = 0
    for prefix in (_STAGING, *ENTITIES):
        for path in lake.list(prefix):
            if prefix == _STAGING or (path.endswith(".parquet") and path not in listed):
                if lake.delete(path):
                    removed += 1
                    log.info("lake: deleted %s, left by an interrupted run", path)
    return removed


# -- tiering ---------------------------------------------------------------------------------


class _Conflict(Exception):
    pass


def tier(
    engine: Engine,
    lake: Lake,
    *,
    now: dt.datetime | None = None,
    hot_days_of: HotDays = DEFAULT_HOT_DAYS,
    file_rows: int = 250_000,
    fail_at: str | None = None,
    on_step: Hook | None = None,
    wait: bool = False,
    time_budget_seconds: float | None = None,
) -> TierReport:
    """Move settled rows older than each project's hot window to the lake (see the module
    docstring for the protocol).

    Parameters
    ----------
    engine, lake
        The hot store and the lake.
    now
        The time the hot windows end at (default: now).
    hot_days_of
        Each project's hot window in days: a callable of the project id, a mapping (missing
        projects get :data:`DEFAULT_HOT_DAYS`) or one number for all.
    file_rows
        Most rows in one file.
    fail_at, on_step
        Test hooks (see the module docstring).
    wait
        Wait for the lake lock; without it a run that finds the lock taken returns at once
        with ``busy`` set.
    time_budget_seconds
        Stop starting new files after this long (the next run continues).
    """
    if file_rows <= 0:
        raise ValueError(f"file_rows must be positive, not {file_rows}")
    now = utc(now) if now is not None else utcnow()
    hook = _hook(fail_at, on_step)
    report = TierReport()
    deadline = None if time_budget_seconds is None else time.monotonic() + time_budget_seconds
    with lake_lock(engine, wait=wait) as mine:
        if not mine:
            report.busy = True
            return report
        hook("recover")
        report.recovered = recover(engine, lake)
        with engine.connect() as conn:
            projects = list(
                conn.execute(sa.select(models.projects.c.id).order_by(models.projects.c.id))
                .scalars()
                .all()
            )
        for project_id in projects:
            cutoff = now - dt.timedelta(days=_hot_days(hot_days_of, project_id))
            for entity in ENTITIES:
                while True:
                    if deadline is not None and time.monotonic() > deadline:
                        report.unfinished = True
                        return report
                    if not _tier_chunk(
                        engine, lake, project_id, entity, cutoff, file_rows, hook, report
                    ):
                        break
    return report


def _tier_chunk(
    engine: Engine,
    lake: Lake,
    project_id: int,
    entity: str,
    cutoff: dt.datetime,
    file_rows: int,
    hook: Hook,
    report: TierReport,
) -> bool:
    """Move one file's rows; returns whether to look for more of this project and entity."""
    t = table_of(entity)
    due = sa.and_(t.c.project_id == project_id, t.c.ts < cutoff, _settled(entity, t))
    hook("read")
    with engine.connect() as conn:
        first = conn.execute(sa.select(sa.func.min(t.c.ts)).where(due)).scalar()
        if first is None:
            return False
        day = utc(first).date()
        start = dt.datetime.combine(day, dt.time(), dt.UTC)
        end = min(start + dt.timedelta(days=1), cutoff)
        rows = conn.execute(
            sa.select(*t.c)
            .where(due, t.c.ts >= start, t.c.ts < end)
            .order_by(t.c.ts, t.c.id)
            .limit(file_rows)
        ).all()
    if not rows:
        return True  # they moved or changed meanwhile: look again
    data = to_arrow(entity, rows)
    staged = stage(lake, data, hook=hook)
    final = partition_path(entity, project_id, day, staged.file_id)
    hook("move")
    lake.move(staged.path, final)
    ids: list[str] = data.column("id").to_pylist()
    try:
        with engine.begin() as conn:
            _delete_exactly(conn, entity, project_id, ids, staged.checksum)
            manifest.publish(conn, [_manifest_row(entity, project_id, day, final, staged, data)])
            hook("commit")
    except _Conflict:
        lake.delete(final)
        report.conflicts += 1
        log.info(
            "lake: %s of project %d on %s changed while tiered; retried later",
            entity,
            project_id,
            day,
        )
        return False
    hook("done")
    report.files += 1
    report.rows += staged.rows
    report.by_entity[entity] = report.by_entity.get(entity, 0) + staged.rows
    return True


def _delete_exactly(
    conn: Connection, entity: str, project_id: int, ids: list[str], digest: str
) -> None:
    """Delete the rows ``ids`` and check they are exactly the file's rows (else roll back)."""
    t = table_of(entity)
    deleted: dict[str, Any] = {}
    for start in range(0, len(ids), _CHUNK):
        part = ids[start : start + _CHUNK]
        result = conn.execute(
            t.delete().where(t.c.project_id == project_id, t.c.id.in_(part)).returning(*t.c)
        )
        for row in result:
            deleted[row.id] = row
    if len(deleted) != len(ids) or set(deleted) != set(ids):
        raise _Conflict
    if checksum(to_arrow(entity, [deleted[i] for i in ids])) != digest:
        raise _Conflict


def _manifest_row(
    entity: str, project_id: int, day: dt.date, path: str, staged: Staged, data: pa.Table
) -> dict[str, Any]:
    return {
        "project_id": project_id,
        "entity": entity,
        "day": day,
        "path": path,
        "rows": staged.rows,
        "bytes": staged.bytes,
        "checksum": staged.checksum,
        "schema_version": SCHEMA_VERSION,
        "min_ts": _ts_bound(data, pc.min),
        "max_ts": _ts_bound(data, pc.max),
        "created_at": utcnow(),
    }


class Tierer:
    """The ``tier`` job: a tiering run in the worker.

    Parameters
    ----------
    engine, lake
        The hot store and the lake.
    hot_days_of
        Each project's hot window in days (see :func:`tier`).
    file_rows
        Most rows in one file.
    time_budget_seconds
        A run stops starting new files after this long (keep it under the job lease).
    """

    def __init__(
        self,
        engine: Engine,
        lake: Lake,
        *,
        hot_days_of: HotDays = DEFAULT_HOT_DAYS,
        file_rows: int = 250_000,
        time_budget_seconds: float = 45.0,
    ) -> None:
        self.engine = engine
        self.lake = lake
        self.hot_days_of = hot_days_of
        self.file_rows = file_rows
        self.time_budget_seconds = time_budget_seconds

    def __call__(self, job: object = None) -> None:
        """The ``tier`` job handler."""
        self.run()

    def run(self, *, now: dt.datetime | None = None) -> TierReport:
        """One tiering run; returns at once when another worker is tiering."""
        report = tier(
            self.engine,
            self.lake,
            now=now,
            hot_days_of=self.hot_days_of,
            file_rows=self.file_rows,
            time_budget_seconds=self.time_budget_seconds,
        )
        if report.files or report.recovered or report.conflicts:
            log.info(
                "lake: moved %d rows in %d files (%s); %d stray files deleted, %d conflicts",
                report.rows,
                report.files,
                report.by_entity,
                report.recovered,
                report.conflicts,
            )
        return report


# -- reading, retention, erasure -------------------------------------------------------------


def read_file(lake: Lake, file: manifest.LakeFile) -> pa.Table:
    """The rows of a published file, verified against its manifest row."""
    return read_verified(lake, file.path, rows=file.rows, digest=file.checksum)


def drop_before(
    engine: Engine,
    lake: Lake,
    project_id: int,
    before_day: dt.date,
    *,
    fail_at: str | None = None,
) -> int:
    """Cold retention: remove the project's files of days before ``before_day`` (manifest
    rows first, in one transaction, then the files); returns how many rows they held."""
    hook = _hook(fail_at, None)
    f = models.lake_files
    with lake_lock(engine):
        with engine.begin() as conn:
            files = conn.execute(
                sa.select(f.c.id, f.c.path, f.c.rows).where(
                    f.c.project_id == project_id, f.c.day < before_day
                )
            ).all()
            if manifest.unpublish(conn, [r.id for r in files]) != len(files):
                raise LakeError("the lake's manifest changed during retention; run it again")
            hook("commit")
        hook("cleanup")
        for row in files:
            lake.delete(row.path)
    return sum(int(r.rows) for r in files)


def rewrite(
    engine: Engine,
    lake: Lake,
    file: manifest.LakeFile,
    keep: Callable[[pa.Table], pa.Table],
    *,
    fail_at: str | None = None,
    on_step: Hook | None = None,
) -> tuple[int, manifest.LakeFile | None]:
    """Rewrite a published file with the rows ``keep`` returns (erasure).

    The kept rows go through the same verified publish as tiering (staging, read back,
    checksum, move to a new name); ONE transaction swaps the manifest rows, then the old file
    is deleted. When ``keep`` removes every row the file is unpublished and deleted; when it
    removes none nothing changes. Returns the rows removed and the file now holding the kept
    rows (``None`` when none are kept). A crash at any point leaves the old file listed and
    intact, or the new one listed (the old one is then garbage for recovery)."""
    hook = _hook(fail_at, on_step)
    with lake_lock(engine):
        hook("read")
        old = read_file(lake, file)
        kept = keep(old)
        if not isinstance(kept, pa.Table) or kept.num_rows > old.num_rows:
            raise ValueError("keep must return a table holding some of the file's rows")
        kept = kept.cast(arrow_schema(file.entity)).replace_schema_metadata(None)
        removed = old.num_rows - kept.num_rows
        if removed == 0:
            return 0, file
        new_row: dict[str, Any] | None = None
        final: str | None = None
        if kept.num_rows:
            staged = stage(lake, kept, hook=hook)
            final = partition_path(file.entity, file.project_id, file.day, staged.file_id)
            hook("move")
            lake.move(staged.path, final)
            new_row = _manifest_row(file.entity, file.project_id, file.day, final, staged, kept)
        try:
            with engine.begin() as conn:
                if manifest.unpublish(conn, [file.id]) != 1:
                    raise _Conflict
                new_ids = manifest.publish(conn, [new_row]) if new_row is not None else []
                hook("commit")
        except _Conflict:
            if final is not None:
                lake.delete(final)
            raise LakeError(f"lake file {file.path} is no longer published") from None
        hook("cleanup")
        lake.delete(file.path)
    if new_row is None:
        return removed, None
    return removed, manifest.LakeFile(id=new_ids[0], **new_row)


def _ts_bound(table: pa.Table, bound: Callable[[Any], pa.Scalar]) -> dt.datetime:
    value = bound(table.column("ts")).as_py()
    if not isinstance(value, dt.datetime):
        raise LakeError("a lake file's rows have no event times")
    return utc(value)
