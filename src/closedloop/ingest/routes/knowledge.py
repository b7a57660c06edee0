"""Knowledge-base entries, recall, and documents flagged for re-indexing (secret key)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from closedloop.act import knowledge, reindex
from closedloop.errors import ConfigError
from closedloop.events import LIMITS
from closedloop.ingest.deps import NO_NUL, get_runtime, require_secret_key
from closedloop.types import ProjectKey

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["knowledge"])

Key = Annotated[ProjectKey, Depends(require_secret_key)]
# Checked by the handlers, not pydantic: the app's validation handler drops a location part
# named "query" from the field it reports, and these fields are named so.
Text = str
DocId = Annotated[str, Path(pattern=NO_NUL, min_length=1, max_length=256)]
FlagState = Literal["flagged", "notified", "reindexed"]


class NewEntry(BaseModel):
    """A manual entry: what users ask, and the answer to give."""

    model_config = ConfigDict(extra="forbid")

    query: Text
    answer: Text


class RecallQuery(BaseModel):
    """What to look up."""

    model_config = ConfigDict(extra="forbid")

    query: Text
    k: int = Field(default=3, ge=1, le=50)
    min_score: float = Field(default=0.0, ge=-1.0, le=1.0)


def _no_nul(field: str, value: str) -> str:
    if "\x00" in value:
        raise ConfigError(f"{field} contains a NUL character; remove it", field=field)
    return value


def _text(field: str, value: str) -> str:
    if not value.strip() or len(value) > LIMITS.text_length:
        raise ConfigError(
            f"{field} must hold 1-{LIMITS.text_length} characters, not only spaces", field=field
        )
    return _no_nul(field, value)


@router.post("/knowledge", status_code=201, summary="Add a knowledge-base entry by hand")
async def add_entry(request: Request, key: Key, body: NewEntry) -> dict[str, Any]:
    runtime = get_runtime(request)

    def run() -> dict[str, Any]:
        entry_id = knowledge.add_entry(
            runtime.engine,
            runtime.embedder(),
            key.project_id,
            query=_text("query", body.query),
            answer=_text("answer", body.answer),
            source="manual",
        )
        return knowledge.get_entry(runtime.engine, key.project_id, entry_id).to_json()

    return await run_in_threadpool(run)


@router.get("/knowledge", summary="Knowledge-base entries, newest first")
def list_entries(
    request: Request,
    key: Key,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    include_inactive: Annotated[bool, Query(description="Also deactivated entries.")] = False,
) -> dict[str, Any]:
    found = knowledge.entries(
        get_runtime(request).engine,
        key.project_id,
        limit=limit,
        active=None if include_inactive else True,
    )
    return {"entries": [e.to_json() for e in found]}


@router.post(
    "/knowledge/recall",
    summary="The entries closest to a query",
    description="Cosine similarity of the query's embedding with each active entry's query, "
    "best first (`score` in [-1, 1]).",
)
async def recall(request: Request, key: Key, body: RecallQuery) -> dict[str, Any]:
    runtime = get_runtime(request)

    def run() -> list[Any]:
        return knowledge.recall(
            runtime.engine,
            runtime.embedder(),
            key.project_id,
            _text("query", body.query),
            k=body.k,
            min_score=body.min_score,
        )

    found = await run_in_threadpool(run)
    return {"entries": [r.to_json() for r in found]}


@router.delete(
    "/knowledge/{entry_id}",
    status_code=204,
    summary="Deactivate an entry (no longer recalled)",
    responses={404: {"description": "No such entry in this project."}},
)
def delete_entry(
    request: Request, key: Key, entry_id: Annotated[int, Path(ge=1, le=2**62)]
) -> Response:
    knowledge.deactivate(get_runtime(request).engine, key.project_id, entry_id)
    return Response(status_code=204)


@router.get("/knowledge/reindex", summary="Documents flagged for re-indexing")
def list_flags(
    request: Request,
    key: Key,
    state: Annotated[FlagState | None, Query(description="Only this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    found = reindex.flags(get_runtime(request).engine, key.project_id, state=state, limit=limit)
    return {"documents": found}


@router.post(
    "/knowledge/reindex/{doc_id}/done",
    summary="Record that a flagged document was re-indexed",
    responses={404: {"description": "The document is not flagged in this project."}},
)
def reindexed(request: Request, key: Key, doc_id: DocId) -> dict[str, Any]:
    return reindex.mark_reindexed(
        get_runtime(request).engine, key.project_id, _no_nul("doc_id", doc_id)
    )
