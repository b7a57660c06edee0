"""Rules, their firings, and the effect of each firing (secret key)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Annotated, Any

import pydantic
from fastapi import APIRouter, Body, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool

from closedloop.act import rules as rules_mod
from closedloop.act.actions import build_action
from closedloop.act.effect import effect_report, rule_summaries
from closedloop.act.engine import EngineStats, RulesFailed
from closedloop.act.rules import RuleError, RuleSpec, apply_rules, error_loc, parse_rules
from closedloop.errors import ConfigError, JobError
from closedloop.ingest.deps import NO_NUL, get_runtime, require_secret_key
from closedloop.runtime import Runtime
from closedloop.store.queries import instant
from closedloop.types import ProjectKey

__all__ = ["router"]

router = APIRouter(prefix="/v1", tags=["rules"])

Key = Annotated[ProjectKey, Depends(require_secret_key)]
_YAML_BODY = {"requestBody": {"content": {"application/yaml": {"schema": {"type": "string"}}}}}
RuleName = Annotated[str, Path(pattern=NO_NUL, max_length=128, description="The rule's name.")]


def _spec(runtime: Runtime, raw: Any) -> RuleSpec:
    try:
        spec = RuleSpec.model_validate(raw)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in error_loc(err))
        raise ConfigError(f"{where}: {err['msg']}", field=where or "body") from None
    kinds = runtime.action_kinds()
    for index, action in enumerate(spec.actions):
        build_action(action.type, action.params, None, kinds=kinds, field_name=f"actions[{index}]")
    return spec


def _problems(exc: RuleError) -> list[dict[str, Any]]:
    return [{"line": line, "field": field, "message": msg} for line, field, msg in exc.problems]


@router.get("/rules", summary="The project's rules")
def get_rules(request: Request, key: Key) -> dict[str, Any]:
    runtime = get_runtime(request)
    return {"rules": [r.to_json() for r in rules_mod.list_rules(runtime.engine, key.project_id)]}


@router.get("/rules/{name}", summary="One rule")
def get_rule(request: Request, key: Key, name: RuleName) -> dict[str, Any]:
    return rules_mod.get_rule(get_runtime(request).engine, key.project_id, name).to_json()


@router.put(
    "/rules/{name}",
    summary="Create or replace a rule",
    description="The body is the rule as YAML would write it (`when`, `actions`, `cooldown`, "
    "`dry_run`...), as JSON; its `name` may be left out. Cursors are kept when a rule is "
    "replaced.",
)
def put_rule(
    request: Request, key: Key, name: RuleName, body: Annotated[dict[str, Any], Body()]
) -> dict[str, Any]:
    runtime = get_runtime(request)
    if body.get("name", name) != name:
        raise ConfigError("the body's `name` differs from the path's", field="name")
    spec = _spec(runtime, {**body, "name": name})
    return rules_mod.put_rule(runtime.engine, key.project_id, spec).to_json()


@router.delete("/rules/{name}", status_code=204, summary="Delete a rule (its firings stay)")
def delete_rule(request: Request, key: Key, name: RuleName) -> None:
    rules_mod.delete_rule(get_runtime(request).engine, key.project_id, name)


async def _yaml_text(request: Request) -> str:
    raw = await request.body()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("send the rules file as UTF-8 YAML text", field="body") from None


@router.post(
    "/rules/check",
    summary="Validate a rules file (YAML body); every problem with its line",
    openapi_extra={
        "requestBody": {"content": {"application/yaml": {"schema": {"type": "string"}}}}
    },
)
async def check_rules(request: Request, key: Key) -> dict[str, Any]:
    runtime = get_runtime(request)
    text = await _yaml_text(request)
    try:
        specs = parse_rules(text, kinds=runtime.action_kinds())
    except RuleError as exc:
        return {"valid": False, "problems": _problems(exc)}
    return {"valid": True, "rules": [s.name for s in specs], "problems": []}


@router.post(
    "/rules/apply",
    summary="Apply a rules file (YAML body): create or replace its rules, delete the rules an "
    "earlier file applied that it no longer holds",
    openapi_extra={
        "requestBody": {"content": {"application/yaml": {"schema": {"type": "string"}}}}
    },
)
async def post_apply(request: Request, key: Key) -> dict[str, Any]:
    runtime = get_runtime(request)
    text = await _yaml_text(request)
    specs = parse_rules(text, kinds=runtime.action_kinds())
    return await run_in_threadpool(apply_rules, runtime.engine, key.project_id, specs)


@router.post(
    "/rules/{name}/test",
    summary="What the rule would fire on the stored data now, with its actions' dry runs",
)
def test_rule(request: Request, key: Key, name: RuleName) -> dict[str, Any]:
    runtime = get_runtime(request)
    rule = rules_mod.get_rule(runtime.engine, key.project_id, name)
    evaluation = runtime.rule_engine().evaluate(rule)
    body = {"rule": evaluation.rule, "triggers": evaluation.triggers}
    safe: dict[str, Any] = json.loads(json.dumps(body, default=str))
    return safe


@router.post(
    "/act",
    summary="Evaluate the project's rules now (the worker does it regularly)",
    description="`errors` names each rule that failed (the others still ran).",
)
def post_act(request: Request, key: Key) -> dict[str, Any]:
    engine = get_runtime(request).rule_engine()
    stats = EngineStats()
    try:
        stats = engine.run(key.project_id)
    except JobError as exc:
        stats = exc.stats if isinstance(exc, RulesFailed) else stats
    return {
        "errors": stats.errors,
        "skipped": stats.skipped,
        "rules": stats.rules,
        "fired": stats.fired,
        "cooled": stats.cooled,
        "actions_ok": stats.actions_ok,
        "actions_failed": stats.actions_failed,
    }


@router.get("/firings", summary="Rule firings, most recent first, with trigger and actions")
def get_firings(
    request: Request,
    key: Key,
    rule: Annotated[str | None, Query(max_length=128, description="Only this rule's.")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    return {"firings": rules_mod.firings(get_runtime(request).engine, key.project_id, rule, limit)}


@router.get(
    "/actions/report",
    summary="Each firing's metric before and after, against a control, with 95 % intervals",
    description="`method` says which control was used: `ab_holdout` (a prompt candidate "
    "against production over the same time), `diff_in_diff` (the segment against the "
    "dimension's other segments), `held_out` (a control firing, not acted on) or "
    "`before_after` (no control: liable to regression to the mean); `rules` compares each "
    "rule's treated firings with its held-out ones (`holdout`). `verdict`: improved, "
    "worsened, no clear change, or too early to tell.",
)
def get_report(
    request: Request,
    key: Key,
    rule: Annotated[str | None, Query(max_length=128, description="Only this rule's.")] = None,
    since: Annotated[dt.datetime | None, Query(description="Firings from this time.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    runtime = get_runtime(request)
    rows = effect_report(
        runtime.engine,
        runtime.analytics(),
        key.project_id,
        rule=rule,
        since=instant("since", since),
        limit=limit,
    )
    return {"firings": rows, "rules": rule_summaries(rows)}
