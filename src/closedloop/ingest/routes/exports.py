"""Dataset exports: fine-tuning JSONL, preference pairs, Parquet (secret key).

A caller-supplied ``url`` must be a folder under the server's export directory (a relative
path is taken from it) or an object-store URL (``s3://``, ``gs://``, ...) outside the lake: a
free local path would let an API caller write anywhere on the server's disk. The CLI, run by
the operator, may write anywhere.
"""

from __future__ import annotations

from typing import Annotated, Any

import pydantic
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Query, Request
from starlette.concurrency import run_in_threadpool

from closedloop.act.dataset_formats import ExportKind, check_url, project_url
from closedloop.act.datasets import ExportFilters, export_dataset
from closedloop.errors import ActionError
from closedloop.ingest.deps import get_runtime, require_secret_key
from closedloop.ingest.problems import problem
from closedloop.store import models
from closedloop.store.db import utc
from closedloop.types import ProjectKey

__all__ = ["ExportRequest", "router"]

router = APIRouter(prefix="/v1", tags=["exports"])

Key = Annotated[ProjectKey, Depends(require_secret_key)]


class ExportRequest(ExportFilters):
    """An export to make now: its kind, where it goes, and the filters of its rows."""

    kind: ExportKind = pydantic.Field(description="finetune, dpo or parquet.")
    url: str | None = pydantic.Field(
        default=None,
        max_length=1000,
        description="A folder under the export directory or an s3:// (gs://, ...) URL; "
        "default <export_dir>/<project>/<kind>-<timestamp>.",
    )
    validation_share: float = pydantic.Field(default=0.1, ge=0, le=1)
    dedupe: bool = True
    include_positive: bool = False
    system: str | None = pydantic.Field(default=None, max_length=100_000)
    salt: str = pydantic.Field(default="closedloop", min_length=1, max_length=64)


@router.post(
    "/exports",
    status_code=201,
    summary="Export a dataset (fine-tuning JSONL, DPO pairs or Parquet)",
    description="Writes train and validation files (split by a hash of the interaction id) "
    "of the project's interactions with their corrections and edits, from the hot store and "
    "the lake, records them (erasing a user deletes the files that held them) and answers "
    "the files, rows per split, users, and skipped rows by reason. Texts are stored redacted, "
    "so exports hold only redacted text.",
    responses={502: {"description": "The export's URL could not be written."}},
)
async def post_export(request: Request, key: Key, body: ExportRequest) -> Any:
    runtime = get_runtime(request)
    settings = runtime.settings
    export_dir = settings.resolved_export_dir()
    root = settings.export_url or str(export_dir.resolve())
    url = check_url(
        project_url(root, key.project_name, body.url, body.kind),
        export_dir,
        lake_url=settings.resolved_lake_url(),
        storage_options=settings.lake_options,
    )
    filters = ExportFilters.model_validate(body.model_dump(include=set(ExportFilters.model_fields)))

    def run() -> dict[str, Any]:
        return export_dataset(
            runtime.analytics(),
            key.project_id,
            kind=body.kind,
            url=url,
            filters=filters,
            export_dir=export_dir,
            validation_share=body.validation_share,
            salt=body.salt,
            dedupe=body.dedupe,
            include_positive=body.include_positive,
            system=body.system,
            storage_options=settings.lake_options if url and "://" in url else None,
        ).to_json()

    try:
        return await run_in_threadpool(run)
    except ActionError as exc:
        return problem(502, "Bad gateway", f"{exc}; check the url and its credentials", field="url")


@router.get(
    "/exports",
    summary="Exported files of the project, newest first",
    description="Every recorded export file: id, kind, url, rows, created_at and deleted_at "
    "(set when an erasure deleted it).",
)
def get_exports(
    request: Request,
    key: Key,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    runtime = get_runtime(request)
    f = models.export_files
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.select(f.c.id, f.c.kind, f.c.url, f.c.rows, f.c.created_at, f.c.deleted_at)
            .where(f.c.project_id == key.project_id)
            .order_by(f.c.id.desc())
            .limit(limit)
        ).all()
    return {
        "exports": [
            {
                "id": r.id,
                "kind": r.kind,
                "url": r.url,
                "rows": r.rows,
                "created_at": utc(r.created_at).isoformat(),
                "deleted_at": utc(r.deleted_at).isoformat() if r.deleted_at else None,
            }
            for r in rows
        ]
    }
