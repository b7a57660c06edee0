"""Semantic search over a project's inputs, corrections and comments (secret key)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request

from closedloop.ingest.deps import get_runtime, require_secret_key
from closedloop.store.db import utc
from closedloop.store.vectors.search import search as run_search
from closedloop.types import ProjectKey

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["search"])

Key = Annotated[ProjectKey, Depends(require_secret_key)]
Kind = Literal["input", "correction", "comment"]


@router.get(
    "/search",
    summary="Stored texts nearest in meaning to a query",
    description="Embeds `q` with the server's embedder and returns the nearest inputs, "
    "corrections and comments, best first, with their cosine similarity. Texts are embedded "
    "by a background job a few seconds after they arrive. The answer names the embedder: "
    "`lexical` means the sentence model is not installed and matching is by words.",
)
def search(
    request: Request,
    key: Key,
    q: Annotated[str, Query(min_length=1, max_length=2000, description="The query text.")],
    k: Annotated[int, Query(ge=1, le=100, description="How many hits (1-100).")] = 10,
    kind: Annotated[list[Kind] | None, Query(description="Only these kinds (repeatable).")] = None,
    since: Annotated[dt.datetime | None, Query(description="From this time (inclusive).")] = None,
    until: Annotated[dt.datetime | None, Query(description="Before this time.")] = None,
    model: Annotated[str | None, Query(max_length=256)] = None,
    model_version: Annotated[str | None, Query(max_length=256)] = None,
    prompt: Annotated[str | None, Query(max_length=256)] = None,
    prompt_version: Annotated[str | None, Query(max_length=256)] = None,
) -> dict[str, Any]:
    runtime = get_runtime(request)
    embedder = runtime.embedder()
    hits = run_search(
        runtime.engine,
        runtime.indexes,
        embedder,
        key.project_id,
        q,
        k=k,
        kinds=kind or None,
        since=utc(since),
        until=utc(until),
        model_name=model,
        model_version=model_version,
        prompt_name=prompt,
        prompt_version=prompt_version,
    )
    return {
        "embedder": {"name": embedder.name, "kind": embedder.kind},
        "hits": [hit.as_json() for hit in hits],
    }
