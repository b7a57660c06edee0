"""Read API: interactions with their feedback and signals, scoped by project."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request

from closedloop.events import FEEDBACK_KINDS
from closedloop.ingest.deps import get_runtime, require_secret_key
from closedloop.store import queries
from closedloop.types import ProjectKey

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["read"])

FeedbackKind = Literal["thumbs", "rating", "label", "correction", "comment"]
Key = Annotated[ProjectKey, Depends(require_secret_key)]
Limit = Annotated[int, Query(ge=1, le=500, description="Page size (1-500).")]
Cursor = Annotated[
    str | None, Query(max_length=1024, description="`next_cursor` of the last page.")
]
PathId = Annotated[str, Path(min_length=1, max_length=128, description="The event id.")]


@router.get("/interactions", summary="List interactions, newest first")
def list_interactions(
    request: Request,
    key: Key,
    since: Annotated[dt.datetime | None, Query(description="From this time (inclusive).")] = None,
    until: Annotated[dt.datetime | None, Query(description="Before this time.")] = None,
    model: Annotated[str | None, Query(max_length=256)] = None,
    model_version: Annotated[str | None, Query(max_length=256)] = None,
    prompt: Annotated[str | None, Query(max_length=256)] = None,
    prompt_version: Annotated[str | None, Query(max_length=256)] = None,
    user_id: Annotated[str | None, Query(max_length=128)] = None,
    session_id: Annotated[str | None, Query(max_length=128)] = None,
    feedback_kind: Annotated[
        FeedbackKind | None,
        Query(description=f"Has feedback of this kind: {', '.join(FEEDBACK_KINDS)}."),
    ] = None,
    feedback_value: Annotated[
        str | None, Query(max_length=256, description="Thumbs (-1/1), rating or label value.")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    filters = queries.InteractionFilter(
        since=since,
        until=until,
        model=model,
        model_version=model_version,
        prompt=prompt,
        prompt_version=prompt_version,
        user_id=user_id,
        session_id=session_id,
        feedback_kind=feedback_kind,
        feedback_value=feedback_value,
    )
    with get_runtime(request).engine.connect() as conn:
        page = queries.list_interactions(conn, key.project_id, filters, limit=limit, cursor=cursor)
    return {"data": page.data, "next_cursor": page.next_cursor}


@router.get("/interactions/{interaction_id}", summary="One interaction with feedback and signals")
def get_interaction(request: Request, key: Key, interaction_id: PathId) -> dict[str, Any]:
    with get_runtime(request).engine.connect() as conn:
        return queries.get_interaction(conn, key.project_id, interaction_id)


@router.get("/feedback", summary="List feedback, newest first")
def list_feedback(
    request: Request,
    key: Key,
    interaction_id: Annotated[str | None, Query(max_length=128)] = None,
    orphaned: Annotated[
        bool | None, Query(description="true: only feedback whose interaction has not arrived.")
    ] = None,
    limit: Limit = 50,
    cursor: Cursor = None,
) -> dict[str, Any]:
    with get_runtime(request).engine.connect() as conn:
        page = queries.list_feedback(
            conn,
            key.project_id,
            interaction_id=interaction_id,
            orphaned=orphaned,
            limit=limit,
            cursor=cursor,
        )
    return {"data": page.data, "next_cursor": page.next_cursor}


@router.get("/feedback/{feedback_id}", summary="One feedback event")
def get_feedback(request: Request, key: Key, feedback_id: PathId) -> dict[str, Any]:
    with get_runtime(request).engine.connect() as conn:
        return queries.get_feedback(conn, key.project_id, feedback_id)


@router.get("/signals/{signal_id}", summary="One signal event")
def get_signal(request: Request, key: Key, signal_id: PathId) -> dict[str, Any]:
    with get_runtime(request).engine.connect() as conn:
        return queries.get_signal(conn, key.project_id, signal_id)


@router.get("/sessions/{session_id}", summary="A session's aggregates")
def get_session(
    request: Request,
    key: Key,
    session_id: Annotated[str, Path(min_length=1, max_length=128, description="Session id.")],
) -> dict[str, Any]:
    with get_runtime(request).engine.connect() as conn:
        return queries.get_session(conn, key.project_id, session_id)


@router.get("/enrichment", summary="How far enrichment has come: waiting, pending, orphans")
def enrichment_status(request: Request, key: Key) -> dict[str, Any]:
    with get_runtime(request).engine.connect() as conn:
        return queries.enrichment_status(conn, key.project_id)


@router.get("/project", summary="The project the key opens")
def get_project(key: Key) -> dict[str, Any]:
    return {"id": key.project_id, "name": key.project_name, "cors_origins": list(key.cors_origins)}
