"""The prompts pages: every prompt with its labels and running A/B test, and one prompt's
versions, labels and tests with their evidence; admins promote a version to production or
roll back the running test, through the same registry functions as the API."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Form, Path, Request
from starlette.responses import RedirectResponse, Response

from closedloop.act import ab
from closedloop.act import prompts as registry
from closedloop.errors import ConfigError, NotFound
from closedloop.ingest.deps import NO_NUL, get_runtime
from closedloop.store.users import Role
from closedloop.ui.render import render
from closedloop.ui.session import Viewer, acting, viewer

__all__ = ["router"]

router = APIRouter()

MAX_INT = 2**31 - 1
Name = Annotated[str, Path(pattern=NO_NUL, min_length=1, max_length=128)]
Reader = Annotated[Viewer, Depends(viewer)]
Admin = Annotated[Viewer, Depends(acting(Role.ADMIN))]

#: The fixed messages a redirect's ``?done=`` code maps to (free text is never reflected).
DONE = {
    "promoted": "The version is now production.",
    "test_promoted": "The candidate won: it is now production and its test has ended.",
    "rolled_back": "The A/B test was rolled back: production stays, the candidate is off.",
}


def _arms(test: dict[str, Any]) -> list[dict[str, Any]]:
    """The two arms of a test with their version, samples and quality interval."""
    arms = (test.get("evidence") or {}).get("arms") or {}
    out = []
    for arm, version in (
        ("control", test["control_version"]),
        ("candidate", test["candidate_version"]),
    ):
        found = arms.get(arm) or {}
        out.append(
            {
                "arm": arm,
                "version": version,
                "n": int(found.get("n") or 0),
                "mean": found.get("mean"),
                "low": found.get("low"),
                "high": found.get("high"),
            }
        )
    return out


def _test_view(test: dict[str, Any]) -> dict[str, Any]:
    """A stored test with what the templates show of its evidence."""
    evidence = test.get("evidence") or {}
    return {
        **test,
        "arms": _arms(test),
        "difference": {
            "value": None,
            "low": None,
            "high": None,
            "kind": "",
            **(evidence.get("difference") or {}),
        },
        "p_value": evidence.get("p_value"),
        "decision": evidence.get("decision"),
        "updated_at": evidence.get("updated_at"),
        "reason": evidence.get("stopped_because"),
    }


@router.get("/p/{project}/prompts")
def prompts_page(request: Request, v: Reader) -> Response:
    """Every prompt name with its labels, its latest version and its running test."""
    engine = get_runtime(request).engine
    names = registry.names(engine, v.project_id)
    running: dict[str, dict[str, Any]] = {}
    for test in ab.list_tests(engine, v.project_id, state="running"):
        running.setdefault(test["prompt"], _test_view(test))
    return render(
        request,
        "prompts.html",
        v,
        active="prompts",
        title="Prompts",
        prompts=names,
        running=running,
    )


@router.get("/p/{project}/prompts/{name}")
def prompt_page(request: Request, v: Reader, name: Name, done: str = "") -> Response:
    """One prompt: versions (newest first), labels, the running test and past tests."""
    engine = get_runtime(request).engine
    found = registry.versions(engine, v.project_id, registry.validate_name(name))
    if not found:
        raise NotFound(f"no prompt {name!r} in this project")
    labels = registry.labels(engine, v.project_id, name)
    by_version: dict[int, list[str]] = {}
    for label, version in sorted(labels.items()):
        by_version.setdefault(version, []).append(label)
    tests = [_test_view(t) for t in ab.list_tests(engine, v.project_id, name)]
    running = next((t for t in tests if t["state"] == "running"), None)
    return render(
        request,
        "prompt.html",
        v,
        active="prompts",
        title=f"Prompt {name}",
        prompt=name,
        versions=list(reversed(found)),
        labels=labels,
        by_version=by_version,
        production=labels.get("production"),
        running=running,
        past=[t for t in tests if t["state"] != "running"],
        done=DONE.get(done, ""),
    )


def _back(v: Viewer, name: str, done: str) -> Response:
    target = f"/ui/p/{quote(v.project, safe='')}/prompts/{quote(name, safe='')}?done={done}"
    return RedirectResponse(target, status_code=303)


@router.post("/p/{project}/prompts/{name}/promote")
def promote(
    request: Request,
    v: Admin,
    name: Name,
    version: Annotated[int, Form(ge=1, le=MAX_INT)],
) -> Response:
    """Make ``version`` production: the running test's candidate wins its test
    (``ab.promote``); any other version moves the label by hand (``set_label``, which stops
    a running test)."""
    engine = get_runtime(request).engine
    registry.validate_name(name)
    labels = registry.labels(engine, v.project_id, name)
    if labels.get("production") == version:
        raise ConfigError(f"version: v{version} is production already", field="version")
    running = ab.list_tests(engine, v.project_id, name, state="running")
    if running and running[0]["candidate_version"] == version:
        ab.promote(engine, v.project_id, name, test_id=int(running[0]["id"]))
        return _back(v, name, "test_promoted")
    registry.set_label(engine, v.project_id, name, "production", version)
    return _back(v, name, "promoted")


@router.post("/p/{project}/prompts/{name}/rollback")
def rollback(
    request: Request,
    v: Admin,
    name: Name,
    test_id: Annotated[int | None, Form(ge=1, le=MAX_INT)] = None,
) -> Response:
    """End the running A/B test (``test_id``, or the prompt's running one): production
    stays, the candidate label goes (``ab.rollback``)."""
    engine = get_runtime(request).engine
    ab.rollback(engine, v.project_id, registry.validate_name(name), test_id=test_id)
    return _back(v, name, "rolled_back")
