"""The prompt registry and its A/B tests.

``GET /v1/prompts/{name}/resolve`` takes the public or the secret key (it is what an app needs
to serve a prompt); everything else needs the secret key. Another project's prompt or test
answers 404.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from closedloop.act import ab
from closedloop.act import prompts as registry
from closedloop.act.candidates import build_candidate
from closedloop.errors import ConfigError, NotFound
from closedloop.ingest.deps import NO_NUL, get_runtime, require_key, require_secret_key
from closedloop.types import ProjectKey

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["prompts"])

Key = Annotated[ProjectKey, Depends(require_secret_key)]
AnyKey = Annotated[ProjectKey, Depends(require_key)]
Name = Annotated[
    str, Path(pattern=NO_NUL, min_length=1, max_length=128, description="The prompt's name.")
]
MAX_INT = 2**31 - 1


def _name(name: str) -> str:
    return registry.validate_name(name)


def _no_nul(field: str, value: str) -> str:
    if "\x00" in value:
        raise ConfigError(f"{field} must not contain NUL characters", field=field)
    return value


class Example(BaseModel):
    """One few-shot example."""

    model_config = ConfigDict(extra="forbid")

    input: Any = None
    output: Any


class NewPrompt(BaseModel):
    """A new version of a prompt."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=128, description="The prompt's name.")
    template: str = Field(min_length=1, max_length=100_000, description="The template.")
    examples: list[Example] = Field(default_factory=list, max_length=100)
    config: dict[str, Any] = Field(default_factory=dict, description="Model settings, free.")
    label: str | None = Field(default=None, max_length=32, description="Also point this at it.")


class NewLabel(BaseModel):
    """Point a label at a version."""

    model_config = ConfigDict(extra="forbid")

    label: str = Field(min_length=1, max_length=32, description="production, candidate, ...")
    version: int = Field(ge=1, le=MAX_INT)


class NewCandidate(BaseModel):
    """Build a candidate from corrections and start its A/B test."""

    model_config = ConfigDict(extra="forbid")

    issue_id: int | None = Field(default=None, ge=1, le=MAX_INT, description="Learn from it.")
    share: float = Field(default=0.2, gt=0, le=1, description="Traffic share of the candidate.")
    max_examples: int = Field(default=8, ge=1, le=100)


@router.get(
    "/prompts/{name}/resolve",
    summary="What to serve for a prompt: production and the running test's candidate",
    description="Public or secret key. `production` and, while an A/B test runs, `test` with "
    "its id, the candidate and its traffic share (the SDK assigns users stickily). Versions "
    "are strings, as interactions carry them.",
    responses={404: {"description": "No such prompt (or label) in this project."}},
)
def resolve(
    request: Request,
    key: AnyKey,
    name: Name,
    label: Annotated[str, Query(max_length=32, description="The label served.")] = "production",
) -> dict[str, Any]:
    engine = get_runtime(request).engine
    if not registry.LABEL_RE.match(label):
        raise ConfigError("label must be 1-32 lowercase letters, digits, '_' or '-'", field="label")
    return registry.resolve(engine, key.project_id, _name(name), label=label).to_json()


@router.post("/prompts", status_code=201, summary="Store a new version of a prompt")
def create(request: Request, key: Key, body: NewPrompt) -> dict[str, Any]:
    engine = get_runtime(request).engine
    version = registry.create_version(
        engine,
        key.project_id,
        _name(body.name),
        _no_nul("template", body.template),
        examples=[e.model_dump() for e in body.examples],
        config=body.config,
        label=body.label,
    )
    return {**version.to_json(), "labels": registry.labels(engine, key.project_id, body.name)}


@router.get("/prompts", summary="Every prompt name with its labels and latest version")
def list_prompts(request: Request, key: Key) -> dict[str, Any]:
    return {"prompts": registry.names(get_runtime(request).engine, key.project_id)}


@router.get(
    "/prompts/{name}",
    summary="One prompt: its versions, labels, and A/B tests with their evidence",
    responses={404: {"description": "No such prompt in this project."}},
)
def show(request: Request, key: Key, name: Name) -> dict[str, Any]:
    engine = get_runtime(request).engine
    found = registry.versions(engine, key.project_id, _name(name))
    if not found:
        raise NotFound(f"no prompt {name!r} in this project")
    return {
        "name": name,
        "labels": registry.labels(engine, key.project_id, name),
        "versions": [v.to_json() for v in found],
        "tests": ab.list_tests(engine, key.project_id, name),
    }


@router.post(
    "/prompts/{name}/labels",
    summary="Point a label (production, candidate, or your own) at a version",
    responses={404: {"description": "No such prompt version in this project."}},
)
def label(request: Request, key: Key, name: Name, body: NewLabel) -> dict[str, Any]:
    engine = get_runtime(request).engine
    registry.set_label(engine, key.project_id, _name(name), body.label, body.version)
    return {"name": name, "labels": registry.labels(engine, key.project_id, name)}


@router.post(
    "/prompts/{name}/candidates",
    status_code=201,
    summary="Build a candidate from corrections and start its A/B test",
    description="The production version plus the latest corrections (of the issue's "
    "interactions, or of the prompt's negatively rated ones) as few-shot examples, served to "
    "`share` of traffic (at most CLOSEDLOOP_AB_MAX_SHARE) until the sequential test decides.",
    responses={404: {"description": "No such prompt in this project."}},
)
async def candidate(request: Request, key: Key, name: Name, body: NewCandidate) -> dict[str, Any]:
    runtime = get_runtime(request)

    def run() -> dict[str, Any]:
        settings = runtime.settings
        if body.share > settings.ab_max_share:
            raise ConfigError(
                f"share must be at most {settings.ab_max_share} (CLOSEDLOOP_AB_MAX_SHARE)",
                field="share",
            )
        built = build_candidate(
            runtime.engine,
            key.project_id,
            _name(name),
            issue_id=body.issue_id,
            max_examples=body.max_examples,
        )
        test = ab.start_test(
            runtime.engine,
            key.project_id,
            name,
            built.version,
            share=body.share,
            settings=settings,
        )
        return {"candidate": built.to_json(), "test": test}

    return await run_in_threadpool(run)


@router.post(
    "/prompts/{name}/tests/{test_id}/{verb}",
    summary="Promote the test's candidate to production, or roll it back",
    responses={404: {"description": "No such test of this prompt in this project."}},
)
def end_test(
    request: Request,
    key: Key,
    name: Name,
    test_id: Annotated[int, Path(ge=1, le=MAX_INT)],
    verb: Literal["promote", "rollback"],
) -> dict[str, Any]:
    engine = get_runtime(request).engine
    act = ab.promote if verb == "promote" else ab.rollback
    test = act(engine, key.project_id, _name(name), test_id=test_id)
    return {"test": test, "labels": registry.labels(engine, key.project_id, name)}
