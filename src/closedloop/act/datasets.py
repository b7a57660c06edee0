"""Dataset exports: chat fine-tuning JSONL, DPO preference pairs and Parquet, from the store.

:func:`export_dataset` reads a project's interactions with their feedback through
:class:`~closedloop.store.olap.Analytics` (the hot store and the Parquet lake together, so
history already moved to the lake is exported too), builds the rows of one format
(:mod:`closedloop.act.dataset_formats`), splits them into train and validation by a hash of
the interaction id (a re-export puts a row in the same split), drops duplicate (prompt,
target) pairs, writes the files through fsspec (a local folder or ``s3://...``) and records
each file with the stored user ids its rows came from
(:func:`closedloop.store.exports.record_export`), so erasing a user deletes it.

Every text comes from the store, where it was redacted at ingest: exports hold only redacted
text (``<EMAIL>`` where the user wrote an address), never what the app sent.

The target of a training row is the latest correction; without one, the text the user kept in
their latest ``edit`` signal (edits count as the user's feedback: a ``source`` of ``reviewer``
or ``evaluator`` leaves them out). :class:`ExportAction` runs an export when a rule fires.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import fsspec
import pyarrow as pa
import pydantic
import sqlalchemy as sa

from closedloop.act.actions import ActContext, ActionResult, Trigger
from closedloop.act.dataset_formats import (
    SPLITS,
    ExportKind,
    ExportRow,
    build_records,
    check_url,
    encode_records,
    project_url,
    remove_files,
    write_files,
)
from closedloop.errors import ConfigError, NotFound
from closedloop.store import models
from closedloop.store.db import utc, utcnow
from closedloop.store.exports import record_export

if TYPE_CHECKING:
    from closedloop.store.olap import Analytics

__all__ = [
    "ExportAction",
    "ExportFilters",
    "ExportParams",
    "ExportResult",
    "FeedbackSource",
    "export_dataset",
]

FeedbackSource = Literal["user", "reviewer", "evaluator", "any"]

_SUFFIX: dict[str, str] = {"finetune": "jsonl", "dpo": "jsonl", "parquet": "parquet"}


class ExportFilters(pydantic.BaseModel):
    """Which interactions an export takes (every field optional; all must hold)."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    since: dt.datetime | None = pydantic.Field(
        default=None, description="Interactions from this time."
    )
    until: dt.datetime | None = pydantic.Field(
        default=None, description="Interactions before this."
    )
    model: str | None = pydantic.Field(default=None, max_length=256, description="Model name.")
    model_version: str | None = pydantic.Field(default=None, max_length=256)
    prompt: str | None = pydantic.Field(default=None, max_length=256, description="Prompt name.")
    prompt_version: str | None = pydantic.Field(default=None, max_length=256)
    source: FeedbackSource = pydantic.Field(
        default="any", description="Whose feedback counts: user, reviewer, evaluator or any."
    )
    issue_id: int | None = pydantic.Field(
        default=None, ge=1, le=2**31 - 1, description="Only the interactions of this issue."
    )
    tags: list[str] = pydantic.Field(
        default_factory=list, max_length=32, description="Interactions with any of these tags."
    )
    min_rating: float | None = pydantic.Field(
        default=None,
        description="Only interactions whose latest rating (in its own scale) is at least this.",
    )

    @pydantic.field_validator("since", "until")
    @classmethod
    def _utc(cls, value: dt.datetime | None) -> dt.datetime | None:
        try:
            return utc(value)  # a naive time is UTC
        except OverflowError:  # year 1 at +01:00 has no UTC time
            raise ValueError("lies outside the representable range of times") from None

    @pydantic.model_validator(mode="after")
    def _window(self) -> ExportFilters:
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must lie before until")
        return self


@dataclass(frozen=True, kw_only=True)
class ExportResult:
    """What an export wrote (or, in a dry run or under ``min_rows``, would write)."""

    kind: ExportKind
    folder: str
    files: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    users: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    export_ids: tuple[int, ...] = ()
    written: bool = False

    @property
    def total(self) -> int:
        """Rows in all splits."""
        return sum(self.rows.values())

    def to_json(self) -> dict[str, Any]:
        """The result as the API answers it."""
        return {
            "kind": self.kind,
            "folder": self.folder,
            "files": dict(self.files),
            "rows": dict(self.rows),
            "total": self.total,
            "users": self.users,
            "skipped": dict(self.skipped),
            "export_ids": list(self.export_ids),
            "written": self.written,
        }


# -- reading -------------------------------------------------------------------------------

_SQL = """
WITH fb AS (
    SELECT interaction_id,
        arg_max(correction, (ts, id)) FILTER (WHERE correction IS NOT NULL) AS correction,
        arg_max(thumbs, (ts, id)) FILTER (WHERE thumbs IS NOT NULL) AS thumbs,
        arg_max(rating, (ts, id)) FILTER (WHERE rating IS NOT NULL) AS rating,
        arg_max((rating - rating_min) / nullif(rating_max - rating_min, 0), (ts, id))
            FILTER (WHERE rating IS NOT NULL) AS rating_norm,
        list(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL) AS fb_users,
        list(DISTINCT given_by) FILTER (WHERE given_by IS NOT NULL) AS fb_givers
    FROM feedback WHERE {source}
    GROUP BY interaction_id
), ed AS (
    SELECT interaction_id, arg_max(body, (ts, id)) AS edit_body,
        list(DISTINCT user_id) FILTER (WHERE user_id IS NOT NULL) AS ed_users
    FROM signals WHERE kind = 'edit' AND {edits}
    GROUP BY interaction_id
)
SELECT i.id, i.ts, i.session_id, i.user_id, i.model_name, i.model_version, i.prompt_name,
    i.prompt_version, i.body, i.quality, fb.correction, fb.thumbs, fb.rating, fb.rating_norm,
    fb.fb_users, fb.fb_givers, ed.edit_body, ed.ed_users
FROM interactions i
LEFT JOIN fb ON fb.interaction_id = i.id
LEFT JOIN ed ON ed.interaction_id = i.id
WHERE {where}
ORDER BY i.ts, i.id
"""


def _issue_members(analytics: Analytics, project_id: int, issue_id: int) -> pa.Table:
    c, m = models.clusters, models.cluster_members
    with analytics.engine.connect() as conn:
        found = conn.execute(
            sa.select(c.c.id).where(
                c.c.project_id == project_id, c.c.kind == "issue", c.c.id == issue_id
            )
        ).first()
        if found is None:
            raise NotFound(f"no issue {issue_id} in this project; see GET /v1/issues")
        ids = conn.execute(
            sa.select(m.c.ref_id).where(
                m.c.project_id == project_id, m.c.kind == "issue", m.c.cluster_id == issue_id
            )
        ).scalars()
        return pa.table({"id": pa.array(sorted(ids), pa.string())})


def _read(analytics: Analytics, project_id: int, filters: ExportFilters) -> list[ExportRow]:
    where = ["TRUE"]
    params: dict[str, Any] = {}
    for column, name in (
        ("model_name", "model"),
        ("model_version", "model_version"),
        ("prompt_name", "prompt"),
        ("prompt_version", "prompt_version"),
    ):
        value = getattr(filters, name)
        if value is not None:
            where.append(f"i.{column} = ${name}")
            params[name] = value
    if filters.since is not None:
        where.append("i.ts >= $since")
        params["since"] = filters.since
    if filters.until is not None:
        where.append("i.ts < $until")
        params["until"] = filters.until
    if filters.min_rating is not None:
        where.append("fb.rating >= $min_rating")
        params["min_rating"] = filters.min_rating
    tables: dict[str, pa.Table] = {}
    if filters.issue_id is not None:
        tables["issue_members"] = _issue_members(analytics, project_id, filters.issue_id)
        where.append("i.id IN (SELECT id FROM issue_members)")
    source = "TRUE"
    if filters.source != "any":
        source = "source = $source"
        params["source"] = filters.source
    sql = _SQL.format(
        source=source,
        edits="TRUE" if filters.source in ("user", "any") else "FALSE",
        where=" AND ".join(where),
    )
    # feedback is read from a day before the window (a client's clock may run behind), and
    # after it: the correction may come long after the answer
    try:
        since = filters.since - dt.timedelta(days=1) if filters.since is not None else None
    except OverflowError:  # a day before the first representable time: no lower bound
        since = None
    table = analytics.arrow(
        sql, project_id=project_id, since=since, params=params, tables=tables or None
    )
    wanted = set(filters.tags)
    rows = []
    for r in table.to_pylist():
        body = json.loads(r["body"])
        tags = tuple(str(t) for t in body.get("tags", ()))
        if wanted and not wanted.intersection(tags):
            continue
        edit = json.loads(r["edit_body"]) if r["edit_body"] is not None else {}
        users = {r["user_id"], *(r["fb_users"] or ()), *(r["fb_givers"] or ())}
        users.update(r["ed_users"] or ())
        rows.append(
            ExportRow(
                id=r["id"],
                input=body.get("input", ""),
                output=body.get("output"),
                ts=r["ts"],
                session_id=r["session_id"],
                user_id=r["user_id"],
                model_name=r["model_name"],
                model_version=r["model_version"],
                prompt_name=r["prompt_name"],
                prompt_version=r["prompt_version"],
                correction=r["correction"],
                edited_text=edit.get("text"),
                thumbs=r["thumbs"],
                rating=r["rating"],
                rating_norm=r["rating_norm"],
                quality=r["quality"],
                tags=tags,
                user_ids=frozenset(u for u in users if u),
            )
        )
    return rows


def _default_folder(export_dir: Path | str, project: str, kind: str) -> str:
    stamp = utcnow().strftime("%Y%m%dT%H%M%S%fZ")
    return str(Path(export_dir).resolve() / project / f"{kind}-{stamp}")


def _project(analytics: Analytics, project_id: int) -> tuple[str, str | None]:
    p = models.projects
    with analytics.engine.connect() as conn:
        row = conn.execute(sa.select(p.c.name, p.c.pii_secret).where(p.c.id == project_id)).first()
    if row is None:
        raise NotFound(f"no project with id {project_id}")
    return str(row.name), row.pii_secret


def export_dataset(
    analytics: Analytics,
    project_id: int,
    *,
    kind: ExportKind,
    url: str | None = None,
    filters: ExportFilters | None = None,
    export_dir: Path | str | None = None,
    validation_share: float = 0.1,
    salt: str = "closedloop",
    dedupe: bool = True,
    include_positive: bool = False,
    system: str | None = None,
    min_rows: int = 0,
    storage_options: Mapping[str, Any] | None = None,
    dry_run: bool = False,
) -> ExportResult:
    """Export one project's interactions as a dataset of ``kind`` (see the module).

    Parameters
    ----------
    analytics
        The hot store and the lake (the engine is ``analytics.engine``).
    url
        The folder to write ``train.<ext>`` and ``validation.<ext>`` into (a local path or
        an fsspec URL); default ``<export_dir>/<project>/<kind>-<UTC timestamp>``. Existing
        files are never overwritten.
    validation_share
        The share of interactions in the validation split, by a hash of the id and ``salt``.
    dedupe
        Drop rows whose normalised (prompt, target) pair came before (``finetune``, ``dpo``).
    include_positive
        ``finetune`` only: answers with a thumbs up or a high rating and no correction are
        their own target.
    system
        A system message for inputs that have none.
    min_rows
        Write nothing when fewer rows would be written (the result says how many).
    storage_options
        fsspec options of a remote ``url``.
    dry_run
        Count only; write and record nothing.
    """
    if kind not in _SUFFIX:
        raise ConfigError(f"kind must be one of {', '.join(_SUFFIX)}, not {kind!r}", field="kind")
    if not 0.0 <= validation_share <= 1.0:
        raise ConfigError("validation_share must lie in [0, 1]", field="validation_share")
    filters = filters or ExportFilters()
    name, secret = _project(analytics, project_id)
    if url is None:
        if export_dir is None:
            raise ConfigError("send url or export_dir: where the export goes", field="url")
        url = _default_folder(export_dir, name, kind)
    rows = _read(analytics, project_id, filters)
    built = build_records(
        rows,
        kind,
        validation_share=validation_share,
        salt=salt,
        dedupe=dedupe,
        include_positive=include_positive,
        system=system,
    )
    counts: dict[str, int] = {s: len(built.records[s]) for s in SPLITS}
    users = {u for split in SPLITS for row in built.rows[split] for u in row.user_ids}
    result = ExportResult(
        kind=kind,
        folder=url,
        rows=counts,
        users=len(users),
        skipped=dict(sorted(built.skipped.items())),
    )
    if dry_run or sum(counts.values()) < max(min_rows, 1):
        return result
    suffix = _SUFFIX[kind]
    payloads = {
        f"{split}.{suffix}": encode_records(kind, built.records[split], split)
        for split in SPLITS
        if built.records[split]
    }
    options = dict(storage_options or {})
    urls = write_files(url, payloads, options)
    files: dict[str, str] = {s: urls[f"{s}.{suffix}"] for s in SPLITS if f"{s}.{suffix}" in urls}
    try:
        with analytics.engine.begin() as conn:
            ids = tuple(
                record_export(
                    conn,
                    project_id,
                    kind=kind,
                    url=files[split],
                    rows=counts[split],
                    user_ids={u for row in built.rows[split] for u in row.user_ids},
                    secret=secret,
                )
                for split in SPLITS
                if split in files
            )
    except Exception:
        fs, _ = fsspec.core.url_to_fs(url, **options)
        remove_files(fs, [fsspec.core.url_to_fs(u, **options)[1] for u in files.values()])
        raise
    return ExportResult(
        kind=kind,
        folder=url,
        files=files,
        rows=counts,
        users=len(users),
        skipped=result.skipped,
        export_ids=ids,
        written=True,
    )


# -- the action ------------------------------------------------------------------------------


class ExportParams(pydantic.BaseModel):
    """The ``with:`` block of an ``export`` action."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True)

    kind: ExportKind = "finetune"
    url: str | None = pydantic.Field(
        None, description="A folder under the export directory, or an s3:// (...) URL."
    )
    window_days: float | None = pydantic.Field(
        None, gt=0, description="Only interactions of this many days before the firing."
    )
    model: str | None = None
    model_version: str | None = None
    prompt: str | None = None
    prompt_version: str | None = None
    source: FeedbackSource = "any"
    tags: list[str] = pydantic.Field(default_factory=list, max_length=32)
    min_rating: float | None = None
    issue_only: bool = pydantic.Field(
        default=True, description="When the trigger is an issue, only that issue's interactions."
    )
    validation_share: float = pydantic.Field(default=0.1, ge=0, le=1)
    dedupe: bool = True
    include_positive: bool = False
    system: str | None = None
    min_rows: int = pydantic.Field(
        default=1, ge=1, description="Skip the export below this many rows."
    )


class ExportAction:
    """Export a dataset when a rule fires (restricted to the trigger's issue or prompt)."""

    name: ClassVar[str] = "export"
    Params: ClassVar[type[pydantic.BaseModel]] = ExportParams

    def __init__(self, params: ExportParams, context: ActContext) -> None:
        self.params = params
        self.context = context

    @classmethod
    def _unit_test_params(cls) -> list[dict[str, Any]]:
        return [{"kind": "dpo"}, {"kind": "finetune", "validation_share": 0.2, "min_rows": 5}]

    def _filters(self, trigger: Trigger) -> ExportFilters:
        p = self.params
        prompt, prompt_version = p.prompt, p.prompt_version
        if prompt is None and trigger.prompt:
            prompt, _, version = trigger.prompt.partition("@")
            prompt_version = version or prompt_version
        since = None
        if p.window_days is not None:
            since = trigger.fired_at - dt.timedelta(days=p.window_days)
        return ExportFilters(
            since=since,
            model=p.model,
            model_version=p.model_version,
            prompt=prompt,
            prompt_version=prompt_version,
            source=p.source,
            issue_id=trigger.issue_id if p.issue_only else None,
            tags=list(p.tags),
            min_rating=p.min_rating,
        )

    def run(self, trigger: Trigger, *, dry_run: bool = False) -> ActionResult:
        """Export (or, in a dry run, count) the trigger's rows."""
        p, settings = self.params, self.context.settings
        export_dir = settings.resolved_export_dir()
        # rules come through the API too: the same limits (the project's own folder)
        name, _ = _project(self.context.analytics(), trigger.project_id)
        root = settings.export_url or str(export_dir.resolve())
        url = check_url(
            project_url(root, name, p.url, p.kind),
            export_dir,
            lake_url=settings.resolved_lake_url(),
            storage_options=settings.lake_options,
        )
        result = export_dataset(
            self.context.analytics(),
            trigger.project_id,
            kind=p.kind,
            url=url,
            filters=self._filters(trigger),
            export_dir=export_dir,
            validation_share=p.validation_share,
            dedupe=p.dedupe,
            include_positive=p.include_positive,
            system=p.system,
            min_rows=p.min_rows,
            storage_options=settings.lake_options if url and "://" in url else None,
            dry_run=dry_run,
        )
        if dry_run:
            summary = f"would export {result.total} {p.kind} rows from {result.users} users"
        elif not result.written:
            summary = f"only {result.total} {p.kind} rows (min_rows {p.min_rows}): nothing exported"
        else:
            summary = f"exported {result.total} {p.kind} rows to {result.folder}"
        return ActionResult(
            action=self.name, ok=True, summary=summary, details=result.to_json(), dry_run=dry_run
        )
