"""Rules & actions: the project's rules, their recent firings and each firing's effect
(before, after and against which control, as ``GET /v1/actions/report`` gives it), and the
webhook deliveries with a retry for the dead ones. Admins may enable or disable a rule and run
the rules now."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import quote

import sqlalchemy as sa
import yaml
from fastapi import APIRouter, Depends, Form, Path, Query, Request
from starlette.responses import RedirectResponse, Response

from closedloop.act import rules as rules_mod
from closedloop.act.effect import effect_report, rule_summaries
from closedloop.act.engine import EngineStats, RulesFailed
from closedloop.act.rules import StoredRule
from closedloop.act.webhooks.outbox import deliveries, retry
from closedloop.errors import JobError
from closedloop.ingest.deps import NO_NUL, get_runtime
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utc
from closedloop.store.users import Role
from closedloop.ui.render import render
from closedloop.ui.session import Viewer, acting, viewer

__all__ = ["router"]

router = APIRouter()

Admin = Annotated[Viewer, Depends(acting(Role.ADMIN))]
Reader = Annotated[Viewer, Depends(viewer)]
RuleName = Annotated[str, Path(pattern=NO_NUL, max_length=128)]
DeliveryState = Literal["pending", "sending", "delivered", "failed", "dead"]
STATES = ("pending", "sending", "delivered", "failed", "dead")
#: The fixed messages a ``?done=`` code maps to (free text is never reflected).
DONE = {
    "ran": ("ok", "The rules ran: new firings, if any, are listed below."),
    "ran_errors": ("warn", "The rules ran, but some failed; the worker's log names them."),
    "retried": ("ok", "The delivery is pending again: the sender will try it with fresh attempts."),
    "enabled": ("ok", "The rule is enabled: it is evaluated on the next run."),
    "disabled": ("ok", "The rule is disabled: it is no longer evaluated."),
}


_RULES_MEASURED = 20


def _base(v: Viewer) -> str:
    return f"/ui/p/{quote(v.project, safe='')}"


def condition_text(rule: StoredRule) -> str:
    """The condition in a few words: ``observed_quality < 0.8 by prompt over 3h``,
    ``feedback thumbs=down, source=user`` or ``signal edit, prompt=support``."""
    c = rule.spec.condition
    if c.kind == "metric":
        op, threshold = ("<", c.below) if c.below is not None else (">", c.above)
        return f"{c.metric} {op} {threshold:g} by {c.by} over {_duration(c.window)}"
    if c.kind == "drift":
        return f"{c.drift} drift alarm"
    if c.kind == "issue":
        return f"issue {' or '.join(c.issue)} (size ≥ {c.min_size})"
    flt = c.event
    if flt.signal is not None:  # only prompt and model narrow a signal rule
        narrowed = {"prompt": flt.prompt, "model": flt.model}
        return ", ".join(
            [f"signal {flt.signal}", *(f"{k}={v}" for k, v in narrowed.items() if v is not None)]
        )
    picked = {k: v for k, v in flt.model_dump().items() if v is not None}
    return "feedback " + ", ".join(f"{k}={v}" for k, v in picked.items())


def _duration(seconds: float) -> str:
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _set(data: Any) -> Any:
    """The spec without its unset (null) fields, as one would write it."""
    if isinstance(data, dict):
        return {k: _set(v) for k, v in data.items() if v is not None}
    if isinstance(data, list):
        return [_set(v) for v in data]
    return data


def _last_fired(runtime: Runtime, project_id: int) -> dict[str, Any]:
    f = models.firings
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.select(f.c.rule_name, sa.func.max(f.c.fired_at), sa.func.count())
            .where(f.c.project_id == project_id)
            .group_by(f.c.rule_name)
        )
        return {name: {"at": utc(at), "count": int(n)} for name, at, n in rows}


def _effects(
    runtime: Runtime, project_id: int, rule: str | None, limit: int
) -> list[dict[str, Any]]:
    """The effect of the latest ``limit`` live firings (each is measured now: keep it small)."""
    return effect_report(runtime.engine, runtime.analytics(), project_id, rule=rule, limit=limit)


def _rows(rules: list[StoredRule], fired: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "rule": r,
            "condition": condition_text(r),
            "actions": [a.type for a in r.spec.actions],
            "last": fired.get(r.spec.name),
        }
        for r in rules
    ]


@router.get("/p/{project}/rules")
def rules_page(
    request: Request,
    v: Reader,
    state: Annotated[DeliveryState | None, Query()] = None,
    done: str = "",
) -> Response:
    """Every rule, the recent firings with their effect, and the webhook deliveries."""
    runtime = get_runtime(request)
    rules = rules_mod.list_rules(runtime.engine, v.project_id)
    # the latest few of each rule, so one busy rule does not hide the others' effect
    effects = sorted(
        (
            e
            for r in rules[:_RULES_MEASURED]
            for e in _effects(runtime, v.project_id, r.spec.name, 3)
        ),
        key=lambda e: (e["fired_at"], e["firing_id"]),
        reverse=True,
    )
    return render(
        request,
        "rules.html",
        v,
        active="rules",
        title="Rules & actions",
        rules=_rows(rules, _last_fired(runtime, v.project_id)),
        firings=rules_mod.firings(runtime.engine, v.project_id, limit=10),
        effects=effects,
        verdicts={e["firing_id"]: e for e in effects},
        summaries=rule_summaries(effects),
        deliveries=deliveries(runtime.engine, v.project_id, state=state, limit=50),
        state=state or "",
        states=STATES,
        notice=DONE.get(done),
        base=_base(v),
    )


@router.get("/p/{project}/rules/{name}")
def rule_page(request: Request, v: Reader, name: RuleName, done: str = "") -> Response:
    """One rule: its spec, its firings and their effect."""
    runtime = get_runtime(request)
    rule = rules_mod.get_rule(runtime.engine, v.project_id, name)
    effects = _effects(runtime, v.project_id, name, limit=10)
    written = rule.spec.to_json()
    written["when"].pop("kind", None)  # implied by the condition's own key
    spec = yaml.safe_dump(_set(written), sort_keys=False, allow_unicode=True)
    return render(
        request,
        "rule.html",
        v,
        active="rules",
        title=f"Rule {name}",
        row=_rows([rule], _last_fired(runtime, v.project_id))[0],
        spec_text=spec,
        firings=rules_mod.firings(runtime.engine, v.project_id, name, limit=50),
        effects=effects,
        verdicts={e["firing_id"]: e for e in effects},
        summaries=rule_summaries(effects),
        notice=DONE.get(done),
        base=_base(v),
    )


@router.post("/p/{project}/rules/run")
def run_rules(
    request: Request, v: Admin, back: Annotated[str, Form(max_length=128)] = ""
) -> Response:
    """Evaluate the project's rules now (as ``POST /v1/act`` does)."""
    target = f"{_base(v)}/rules"
    if back and "\x00" not in back:
        rules_mod.get_rule(get_runtime(request).engine, v.project_id, back)  # only a known rule
        target += f"/{quote(back, safe='')}"
    engine = get_runtime(request).rule_engine()
    stats, failed = EngineStats(), False
    try:
        stats = engine.run(v.project_id)
    except JobError as exc:  # the rules that did not fail still ran
        stats, failed = (exc.stats if isinstance(exc, RulesFailed) else stats), True
    code = "ran_errors" if failed or stats.errors else "ran"
    return RedirectResponse(f"{target}?done={code}", status_code=303)


@router.post("/p/{project}/rules/{name}/enabled")
def set_enabled(
    request: Request, v: Admin, name: RuleName, enabled: Annotated[str, Form(max_length=8)] = ""
) -> Response:
    """Enable (``enabled=true``) or disable a rule; where it came from is kept."""
    engine = get_runtime(request).engine
    rule = rules_mod.get_rule(engine, v.project_id, name)
    on = enabled == "true"
    rules_mod.put_rule(
        engine, v.project_id, rule.spec.model_copy(update={"enabled": on}), source=rule.source
    )
    code = "enabled" if on else "disabled"
    return RedirectResponse(f"{_base(v)}/rules/{quote(name, safe='')}?done={code}", status_code=303)


@router.post("/p/{project}/webhooks/deliveries/{delivery_id}/retry")
def retry_delivery(
    request: Request, v: Admin, delivery_id: Annotated[int, Path(ge=1, le=2**62)]
) -> Response:
    """Send a failed or dead delivery again (as the API's retry does)."""
    retry(get_runtime(request).engine, v.project_id, delivery_id)
    return RedirectResponse(f"{_base(v)}/rules?done=retried#deliveries", status_code=303)
