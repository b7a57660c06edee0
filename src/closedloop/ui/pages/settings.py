"""The settings page (admins only): API keys (rotate, revoke), browser origins, retention,
PII redaction and members. Each form validates exactly as its API route does; a bad value
answers a 400 page naming the field."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal
from urllib.parse import quote

import msgspec
import sqlalchemy as sa
from fastapi import APIRouter, Depends, Form, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from closedloop.enrich.pii import ENTITY_TYPES
from closedloop.enrich.privacy import PiiPolicy
from closedloop.errors import ConfigError, ContractError, NotFound
from closedloop.ingest.deps import NO_NUL, get_runtime
from closedloop.runtime import Runtime
from closedloop.store import models
from closedloop.store.db import utc
from closedloop.store.retention import Retention
from closedloop.store.users import Role, Users
from closedloop.ui.render import render
from closedloop.ui.session import Viewer, acting, admin_page

__all__ = ["router"]

router = APIRouter()

AdminPage = Annotated[Viewer, Depends(admin_page)]
Admin = Annotated[Viewer, Depends(acting(Role.ADMIN))]
Email = Annotated[str, Form(min_length=1, max_length=254, pattern=NO_NUL)]
RoleName = Annotated[str, Form(min_length=1, max_length=16)]

#: The fixed messages a redirect's ``?done=`` code maps to (free text is never reflected).
DONE = {
    "revoked": "The key was revoked: requests with it now answer 401.",
    "origins": "The browser origins were saved.",
    "retention": "The retention was saved; the jobs apply it on their next run.",
    "pii": "The PII policy was saved; it applies to events received from now on.",
    "member_added": "The member was added.",
    "member_role": "The member's role was changed.",
    "member_removed": "The member was removed from the project.",
}
#: The choices of an entity type's mode on the form (``default``: the default mode; ``off``:
#: not looked for).
PII_CHOICES = ("default", "mask", "hash", "drop", "off")
_KINDS = ("secret", "public")


def _keys(runtime: Runtime, project_id: int) -> list[dict[str, Any]]:
    """The project's keys with when they were created and revoked (never their secret)."""
    k = models.api_keys
    with runtime.engine.connect() as conn:
        rows = conn.execute(
            sa.select(k.c.kind, k.c.lookup, k.c.created_at, k.c.revoked_at)
            .where(k.c.project_id == project_id)
            .order_by(k.c.revoked_at.is_not(None), k.c.kind.desc(), k.c.id.desc())
        ).all()
    return [
        {
            "kind": r.kind,
            "lookup": r.lookup,
            "created_at": utc(r.created_at),
            "revoked_at": utc(r.revoked_at),
        }
        for r in rows
    ]


@router.get("/p/{project}/settings")
def settings_page(request: Request, v: AdminPage, done: str = "") -> Response:
    """Keys, origins, retention, PII policy and members of the project."""
    runtime = get_runtime(request)
    keys = _keys(runtime, v.project_id)
    project = runtime.projects.get(v.project)
    retention = Retention.stored(runtime.projects.retention(v.project_id)).to_json()
    policy_json, _ = runtime.projects.pii(v.project_id)
    pii = PiiPolicy.from_json(policy_json or "{}")
    detected = set(pii.entities) if pii.entities is not None else set(ENTITY_TYPES)
    entities = [
        {
            "name": entity,
            "choice": "off" if entity not in detected else pii.modes.get(entity, "default"),
        }
        for entity in ENTITY_TYPES
    ]
    members = Users(runtime.engine).members(v.project_id)
    return render(
        request,
        "settings.html",
        v,
        active="settings",
        title="Settings",
        keys=keys,
        active_kinds={k["kind"] for k in keys if k["revoked_at"] is None},
        kinds=_KINDS,
        origins=project.cors_origins,
        retention=retention,
        days={
            f: "" if retention[f] is None else f"{retention[f]:g}"
            for f in ("hot_days", "cold_days", "vector_days")
        },
        pii=pii,
        entities=entities,
        pii_choices=PII_CHOICES,
        members=members,
        admins=sum(1 for _, role in members if role is Role.ADMIN),
        roles=[r.value for r in Role],
        done=DONE.get(done, ""),
    )


def _back(v: Viewer, done: str, anchor: str) -> Response:
    target = f"/ui/p/{quote(v.project, safe='')}/settings?done={done}#{anchor}"
    return RedirectResponse(target, status_code=303)


# -- keys ----------------------------------------------------------------------------------


@router.post("/p/{project}/settings/keys/rotate")
def rotate_key(
    request: Request, v: Admin, kind: Annotated[Literal["secret", "public"], Form()]
) -> Response:
    """Issue a new ``kind`` key (the old ones are revoked) and show it once."""
    runtime = get_runtime(request)
    key = runtime.projects.rotate(v.project, kind)
    runtime.keys.clear()
    return render(
        request, "key_shown.html", v, active="settings", title="New key", kind=kind, key=key
    )


@router.post("/p/{project}/settings/keys/revoke")
def revoke_key(
    request: Request, v: Admin, lookup: Annotated[str, Form(min_length=1, max_length=64)]
) -> Response:
    """Revoke this project's key whose visible prefix is ``lookup`` (another project's key
    is not found here)."""
    runtime = get_runtime(request)
    if not any(k.lookup == lookup for k in runtime.projects.keys(v.project)):
        raise NotFound(f"no key {lookup!r} in this project")
    runtime.projects.revoke(lookup)
    runtime.keys.clear()
    return _back(v, "revoked", "keys")


# -- origins, retention, PII -------------------------------------------------------------------


@router.post("/p/{project}/settings/origins")
def set_origins(
    request: Request, v: Admin, origins: Annotated[str, Form(max_length=20_000)] = ""
) -> Response:
    """Replace the browser origins allowed to use the public key (one per line)."""
    runtime = get_runtime(request)
    lines = tuple(line.strip() for line in origins.splitlines() if line.strip())
    try:
        runtime.projects.set_origins(v.project, lines)
    except ConfigError as exc:
        raise ConfigError(f"origins: {exc}", field="origins") from exc
    runtime.keys.clear()
    return _back(v, "origins", "origins")


def _days(field: str, value: str, *, required: bool = False) -> float | None:
    """A number of days from the form; empty is ``None`` (keep forever) unless required."""
    text = value.strip()
    if not text:
        if required:
            raise ContractError(field, "is required: a number of days, e.g. 30")
        return None
    try:
        return float(text)
    except ValueError:
        raise ContractError(field, f"{text!r} is not a number of days") from None


@router.post("/p/{project}/settings/retention")
def set_retention(
    request: Request,
    v: Admin,
    hot_days: Annotated[str, Form(max_length=32)] = "",
    cold_days: Annotated[str, Form(max_length=32)] = "",
    vector_days: Annotated[str, Form(max_length=32)] = "",
    erased_events: Annotated[str, Form(max_length=16)] = "refuse",
) -> Response:
    """Replace the retention, validated as ``PUT /v1/project/retention`` does."""
    runtime = get_runtime(request)
    body = {
        "hot_days": _days("hot_days", hot_days, required=True),
        "cold_days": _days("cold_days", cold_days),
        "vector_days": _days("vector_days", vector_days),
        "erased_events": erased_events,
    }
    policy = Retention.from_json(json.dumps(body))
    runtime.projects.set_retention(v.project_id, policy.encode())
    runtime.erased.forget(v.project_id)
    return _back(v, "retention", "retention")


@router.post("/p/{project}/settings/pii")
async def set_pii(request: Request, v: Admin) -> Response:
    """Replace the PII policy, built from the form and validated as ``PUT /v1/project/pii``
    does: one mode per entity type (``default``, a mode, or ``off``: not looked for)."""
    form = await request.form()

    def text(field: str, default: str = "") -> str:
        value = form.get(field, default)
        return value if isinstance(value, str) else default

    entities, modes = [], {}
    for entity in ENTITY_TYPES:
        choice = text(f"mode_{entity}", "default")
        if choice == "off":
            continue
        entities.append(entity)
        if choice != "default":
            modes[entity] = choice
    allowlist = [line.strip() for line in text("allowlist").splitlines() if line.strip()]
    body = {
        "enabled": text("enabled") == "on",
        "entities": None if len(entities) == len(ENTITY_TYPES) else entities,
        "modes": modes,
        "default_mode": text("default_mode", "mask"),
        "allowlist": allowlist,
        "ids": text("ids", "keep"),
    }
    policy = PiiPolicy.from_json(json.dumps(body))
    runtime = get_runtime(request)

    def store() -> None:
        runtime.projects.set_pii(v.project_id, msgspec.json.encode(policy).decode())
        runtime.redactors.forget(v.project_id)

    await run_in_threadpool(store)
    return _back(v, "pii", "pii")


# -- members -----------------------------------------------------------------------------------


def _roles(runtime: Runtime, project_id: int) -> dict[str, Role]:
    return {user.email: role for user, role in Users(runtime.engine).members(project_id)}


def _keep_an_admin(roles: dict[str, Role], email: str, new: Role | None, v: Viewer) -> None:
    """Refuse to leave the project without an admin."""
    if roles.get(email) is not Role.ADMIN or new is Role.ADMIN:
        return
    if sum(1 for role in roles.values() if role is Role.ADMIN) <= 1:
        who = "you are" if email == v.email else f"{email} is"
        raise ConfigError(
            f"email: {who} the last admin of {v.project!r}; make another member admin first",
            field="email",
        )


def _member(roles: dict[str, Role], email: str) -> str:
    address = email.strip().lower()
    if address not in roles:
        raise NotFound(f"{email!r} has no role in this project")
    return address


@router.post("/p/{project}/settings/members/add")
def add_member(request: Request, v: Admin, email: Email, role: RoleName) -> Response:
    """Give an existing account a role in the project."""
    runtime = get_runtime(request)
    users = Users(runtime.engine)
    chosen = Role.parse(role)
    try:
        account = users.get(email)
    except NotFound:
        raise ConfigError(
            f"email: no account {email.strip()!r}; create it first with "
            "`closedloop users create EMAIL`",
            field="email",
        ) from None
    _keep_an_admin(_roles(runtime, v.project_id), account.email, chosen, v)
    users.grant(account.email, v.project_id, chosen)
    return _back(v, "member_added", "members")


@router.post("/p/{project}/settings/members/role")
def change_role(request: Request, v: Admin, email: Email, role: RoleName) -> Response:
    """Change a member's role (never the last admin's away from admin)."""
    runtime = get_runtime(request)
    chosen = Role.parse(role)
    roles = _roles(runtime, v.project_id)
    address = _member(roles, email)
    _keep_an_admin(roles, address, chosen, v)
    Users(runtime.engine).grant(address, v.project_id, chosen)
    return _back(v, "member_role", "members")


@router.post("/p/{project}/settings/members/remove")
def remove_member(request: Request, v: Admin, email: Email) -> Response:
    """Take a member's role in the project away (never the last admin's)."""
    runtime = get_runtime(request)
    roles = _roles(runtime, v.project_id)
    address = _member(roles, email)
    _keep_an_admin(roles, address, None, v)
    Users(runtime.engine).revoke(address, v.project_id)
    return _back(v, "member_removed", "members")
