"""SQL over a project's rows in both tiers (secret key): one read-only DuckDB statement."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, Field

from closedloop.ingest.deps import get_runtime, require_secret_key
from closedloop.store.db import utc
from closedloop.store.olap import Analytics
from closedloop.types import ProjectKey

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["query"])

Key = Annotated[ProjectKey, Depends(require_secret_key)]


class QueryIn(BaseModel):
    """A query over the views ``interactions``, ``feedback``, ``signals`` (hot rows and the
    lake) and ``sessions`` (hot rows), which hold the caller's project only."""

    sql: str = Field(min_length=1, max_length=20_000, description="One SELECT statement.")
    params: list[Any] | None = Field(default=None, description="Values of `?` placeholders.")
    since: dt.datetime | None = Field(default=None, description="Rows from this time.")
    until: dt.datetime | None = Field(default=None, description="Rows before this time.")
    limit: int = Field(default=10_000, ge=1, le=100_000, description="Most rows answered.")


@router.post(
    "/query",
    summary="SQL over the project's hot rows and lake",
    description="Runs one read-only DuckDB SELECT over the views interactions, feedback, "
    "signals (hot rows and the lake together) and sessions. Other statements, file access "
    "and settings are refused with 400 naming `sql`.",
)
def run_query(request: Request, key: Key, body: QueryIn) -> dict[str, Any]:
    runtime = get_runtime(request)
    analytics = Analytics(
        runtime.engine, runtime.settings.resolved_lake_url(), runtime.settings.lake_options
    )
    table = analytics.arrow(
        body.sql,
        project_id=key.project_id,
        since=utc(body.since),
        until=utc(body.until),
        params=body.params,
    )
    rows = table.slice(0, body.limit).to_pylist()
    return {
        "columns": table.column_names,
        "data": jsonable_encoder(rows),
        "truncated": table.num_rows > body.limit,
    }
