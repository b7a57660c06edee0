"""Metrics per segment, drift alarms, issues and topics (secret key)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from closedloop.analyze import read
from closedloop.analyze.metrics import metrics as compute_metrics
from closedloop.analyze.tracker import topic_table
from closedloop.ingest.deps import get_runtime, require_secret_key
from closedloop.store.queries import instant
from closedloop.types import ProjectKey

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["analysis"])

Key = Annotated[ProjectKey, Depends(require_secret_key)]
Bucket = Literal["hour", "day", "week"]
AlarmKind = Literal["quality", "input", "topic_mix", "emerging"]
IssueState = Literal["open", "growing", "resolved"]


@router.get(
    "/metrics",
    summary="Quality measures per segment, with 95 % confidence intervals",
    description="One row per segment (and time bucket) and measure: `value`, `low`, `high` "
    "(Wilson for rates, Student's t for means; null when undefined) and `n`, what it was "
    "computed from. `by`: `all`, `model`, `prompt`, `topic`, `tag` or `cohort:KEY` (a "
    "metadata key, dotted for nested ones). Reads the hot store and the lake.",
)
async def get_metrics(
    request: Request,
    key: Key,
    by: Annotated[str, Query(max_length=80, description="The segment dimension.")] = "all",
    since: Annotated[dt.datetime | None, Query(description="Interactions from this time.")] = None,
    until: Annotated[dt.datetime | None, Query(description="Interactions before this.")] = None,
    bucket: Annotated[Bucket | None, Query(description="Split the window by time.")] = None,
    measure: Annotated[
        list[str] | None, Query(max_length=20, description="Only these measures (repeatable).")
    ] = None,
) -> dict[str, Any]:
    runtime = get_runtime(request)

    def run() -> Any:
        topics = topic_table(runtime.engine, key.project_id) if by == "topic" else None
        return compute_metrics(
            runtime.analytics(),
            key.project_id,
            by=by,
            since=instant("since", since),
            until=instant("until", until),
            bucket=bucket,
            measures=measure,
            topics=topics,
        )

    frame = await run_in_threadpool(run)
    return {"by": by, "bucket": bucket, "rows": read.frame_json(frame)}


@router.get(
    "/drift",
    summary="Drift alarms, most recent first",
    description="Quality alarms (a segment's thumbs or rating dropped: before and after with "
    "95 % intervals, and `since`, the estimated change point) and input alarms (`input`: "
    "the embedding distribution moved; `topic_mix`: the topic shares moved; `emerging`: "
    "more inputs far from every known topic).",
)
def get_drift(
    request: Request,
    key: Key,
    kind: Annotated[AlarmKind | None, Query(description="Only this kind.")] = None,
    since: Annotated[dt.datetime | None, Query(description="Detected from this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    runtime = get_runtime(request)
    found = read.alarms(
        runtime.engine, key.project_id, kind=kind, since=instant("since", since), limit=limit
    )
    return {"alarms": found}


@router.get(
    "/issues",
    summary="Issues: negative feedback clustered, ranked by impact",
    description="Each issue's keywords (class-based TF-IDF), representative examples, size, "
    "state (`open`, `growing`, `resolved`) and `stats`: recent and prior counts, severity, "
    "growth and impact = recent x severity x growth, with an `explanation`.",
)
def get_issues(
    request: Request,
    key: Key,
    state: Annotated[IssueState | None, Query(description="Only this state.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    runtime = get_runtime(request)
    found = read.clusters(runtime.engine, key.project_id, "issue", state=state, limit=limit)
    return {"issues": found}


@router.get(
    "/issues/{issue_id}",
    summary="One issue with its most recent interactions",
    responses={404: {"description": "No such issue in this project."}},
)
def get_issue(
    request: Request,
    key: Key,
    issue_id: Annotated[int, Path(ge=1, le=2**31 - 1)],
    members: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    runtime = get_runtime(request)
    return read.issue(runtime.engine, key.project_id, issue_id, members=members)


@router.get(
    "/topics",
    summary="Topics of the inputs, largest first",
    description="The topic model over every interaction's input: keywords, size, examples.",
)
def get_topics(
    request: Request,
    key: Key,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    runtime = get_runtime(request)
    return {"topics": read.clusters(runtime.engine, key.project_id, "topic", limit=limit)}


@router.post(
    "/analyze",
    summary="Bring embeddings, topics, issues and drift up to date now",
    description="What the worker does every minute, for this project, at once: embeds what "
    "is waiting, then runs the analysis job. Answers what it did.",
)
async def post_analyze(request: Request, key: Key) -> dict[str, Any]:
    runtime = get_runtime(request)

    def run() -> dict[str, Any]:
        embedded = runtime.embedding_job().run()
        stats = runtime.analyzer().run(key.project_id)
        return {
            "embedded": embedded.stored,
            "skipped": stats.skipped,
            "topics_opened": stats.topics_opened,
            "issues_opened": stats.issues_opened,
            "members": stats.members,
            "observations": stats.observations,
            "alarms": stats.alarms,
        }

    return await run_in_threadpool(run)
