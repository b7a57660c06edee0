"""The dashboard's prompts and settings pages, on SQLite and PostgreSQL: promote and roll
back through the registry the API uses, keys shown once and revoked only within the project,
origins, retention, PII and members validated as the API does, roles and CSRF enforced."""

from __future__ import annotations

import re

import httpx
import pytest

from closedloop.act import ab
from closedloop.runtime import Runtime
from closedloop.store.users import Role, Users
from tests.conftest import Tenant
from tests.integration.ui_helpers import PASSWORD, add_user
from tests.integration.ui_helpers import sign_in as ui_sign_in

_NEW_KEY = re.compile(r'id="new-key"[^>]*>(cl_[ps]k_[A-Za-z0-9_-]+)<')


async def sign_in(client: httpx.AsyncClient, email: str, project: str = "acme") -> str:
    """Sign in through the form; the CSRF token off the prompts page (any role sees it)."""
    return await ui_sign_in(client, email, page=f"/ui/p/{project}/prompts")


async def _versions(client: httpx.AsyncClient, tenant: Tenant, *templates: str) -> None:
    for template in templates:
        made = await client.post(
            "/v1/prompts",
            json={"name": "support", "template": template},
            headers=tenant.headers(),
        )
        assert made.status_code == 201, made.text


async def _labels(client: httpx.AsyncClient, tenant: Tenant) -> dict[str, int]:
    shown = await client.get("/v1/prompts/support", headers=tenant.headers())
    assert shown.status_code == 200, shown.text
    labels: dict[str, int] = shown.json()["labels"]
    return labels


async def test_promote_and_roll_back_from_the_page(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await _versions(client, tenant, "v1 <script>alert(1)</script>", "v2 answer {q}")
    add_user(runtime, tenant.project_id, "admin@acme.test", "admin")
    csrf = await sign_in(client, "admin@acme.test")
    base = "/ui/p/acme/prompts/support"

    listing = await client.get("/ui/p/acme/prompts")
    assert 'href="/ui/p/acme/prompts/support"' in listing.text
    page = await client.get(base)
    assert page.status_code == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text  # the template, escaped
    assert "<script>alert(1)" not in page.text
    assert f'action="{base}/promote"' in page.text and "data-confirm=" in page.text

    promoted = await client.post(f"{base}/promote", data={"version": "2", "csrf_token": csrf})
    assert promoted.status_code == 303
    assert promoted.headers["location"].endswith(f"{base}?done=promoted")
    assert (await _labels(client, tenant))["production"] == 2
    again = await client.post(f"{base}/promote", data={"version": "2", "csrf_token": csrf})
    assert again.status_code == 400 and "version" in again.text
    missing = await client.post(f"{base}/promote", data={"version": "9", "csrf_token": csrf})
    assert missing.status_code == 404

    # back to v1 by hand
    back = await client.post(f"{base}/promote", data={"version": "1", "csrf_token": csrf})
    assert back.status_code == 303
    assert (await _labels(client, tenant))["production"] == 1

    # a running A/B test: rolled back from the page, production stays
    test = ab.start_test(
        runtime.engine, tenant.project_id, "support", 2, share=0.2, settings=runtime.settings
    )
    page = await client.get(base)
    assert f"Test #{test['id']}" in page.text and "Guard rails" in page.text
    rolled = await client.post(f"{base}/rollback", data={"csrf_token": csrf})
    assert rolled.status_code == 303 and rolled.headers["location"].endswith("done=rolled_back")
    [ended] = ab.list_tests(runtime.engine, tenant.project_id, "support")
    assert ended["state"] == "rolled_back"
    assert await _labels(client, tenant) == {"production": 1}
    none_running = await client.post(f"{base}/rollback", data={"csrf_token": csrf})
    assert none_running.status_code == 404

    # promoting the running test's candidate ends its test as promoted
    test = ab.start_test(
        runtime.engine, tenant.project_id, "support", 2, share=0.2, settings=runtime.settings
    )
    won = await client.post(f"{base}/promote", data={"version": "2", "csrf_token": csrf})
    assert won.headers["location"].endswith("done=test_promoted")
    assert ab.list_tests(runtime.engine, tenant.project_id, "support")[0]["state"] == "promoted"
    assert await _labels(client, tenant) == {"production": 2}
    page = await client.get(base)
    assert "Past A/B tests" in page.text and "rolled back" in page.text

    # no CSRF token: refused, nothing changes
    refused = await client.post(f"{base}/promote", data={"version": "1"})
    assert refused.status_code == 403
    assert (await _labels(client, tenant))["production"] == 2


async def test_a_viewer_sees_prompts_but_may_not_promote(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    await _versions(client, tenant, "one", "two")
    add_user(runtime, tenant.project_id, "viewer@acme.test", "viewer")
    csrf = await sign_in(client, "viewer@acme.test")
    page = await client.get("/ui/p/acme/prompts/support")
    assert page.status_code == 200 and "/promote" not in page.text
    for path, data in (("promote", {"version": "2"}), ("rollback", {})):
        answer = await client.post(
            f"/ui/p/acme/prompts/support/{path}", data={**data, "csrf_token": csrf}
        )
        assert answer.status_code == 403
    assert (await _labels(client, tenant))["production"] == 1


async def test_rotate_shows_the_key_once_and_revoke_stays_in_the_project(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "admin@acme.test", "admin")
    csrf = await sign_in(client, "admin@acme.test")
    settings = await client.get("/ui/p/acme/settings")
    assert settings.status_code == 200
    assert tenant.secret_key[:16] in settings.text and tenant.secret_key not in settings.text

    rotated = await client.post(
        "/ui/p/acme/settings/keys/rotate", data={"kind": "secret", "csrf_token": csrf}
    )
    assert rotated.status_code == 200
    assert rotated.headers["cache-control"] == "no-store"
    assert 'data-copy="#new-key"' in rotated.text and "will not be shown again" in rotated.text
    found = _NEW_KEY.search(rotated.text)
    assert found, rotated.text
    new = found.group(1)
    assert new.startswith("cl_sk_")
    bearer = {"authorization": f"Bearer {new}"}
    assert (await client.get("/v1/prompts", headers=bearer)).status_code == 200
    assert (await client.get("/v1/prompts", headers=tenant.headers())).status_code == 401

    # another project's key: not found here, and it keeps working
    foreign = await client.post(
        "/ui/p/acme/settings/keys/revoke",
        data={"lookup": other_tenant.secret_key[:16], "csrf_token": csrf},
    )
    assert foreign.status_code == 404
    assert (await client.get("/v1/prompts", headers=other_tenant.headers())).status_code == 200

    revoked = await client.post(
        "/ui/p/acme/settings/keys/revoke", data={"lookup": new[:16], "csrf_token": csrf}
    )
    assert revoked.status_code == 303 and revoked.headers["location"].endswith("done=revoked#keys")
    assert (await client.get("/v1/prompts", headers=bearer)).status_code == 401
    assert [k.revoked for k in runtime.projects.keys("acme") if k.kind == "secret"] == [True, True]

    # no CSRF token: nothing rotates
    before = runtime.projects.keys("acme")
    refused = await client.post("/ui/p/acme/settings/keys/rotate", data={"kind": "public"})
    assert refused.status_code == 403
    assert runtime.projects.keys("acme") == before
    assert (await client.get("/v1/prompts", headers=other_tenant.headers())).status_code == 200


async def test_origins_retention_and_pii(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "admin@acme.test", "admin")
    csrf = await sign_in(client, "admin@acme.test")
    url = "/ui/p/acme/settings"

    saved = await client.post(
        f"{url}/origins",
        data={"origins": "https://app.example.com/\n\n http://localhost:3000", "csrf_token": csrf},
    )
    assert saved.status_code == 303 and "done=origins" in saved.headers["location"]
    expected = ("https://app.example.com", "http://localhost:3000")
    assert runtime.projects.get("acme").cors_origins == expected
    bad = await client.post(f"{url}/origins", data={"origins": "ftp://x", "csrf_token": csrf})
    assert bad.status_code == 400 and "origins" in bad.text
    assert runtime.projects.get("acme").cors_origins == expected
    page = await client.get(url)
    assert "https://app.example.com\nhttp://localhost:3000</textarea>" in page.text

    kept = await client.post(
        f"{url}/retention",
        data={
            "hot_days": "7",
            "cold_days": "",
            "vector_days": "90",
            "erased_events": "drop",
            "csrf_token": csrf,
        },
    )
    assert kept.status_code == 303
    api = await client.get("/v1/project/retention", headers=tenant.headers())
    assert api.json() == {
        "hot_days": 7.0,
        "cold_days": None,
        "vector_days": 90.0,
        "erased_events": "drop",
    }
    wrong = await client.post(
        f"{url}/retention",
        data={"hot_days": "7", "cold_days": "3", "erased_events": "drop", "csrf_token": csrf},
    )
    assert wrong.status_code == 400 and "cold_days" in wrong.text
    assert (
        await client.get("/v1/project/retention", headers=tenant.headers())
    ).json() == api.json()

    policy = await client.post(
        f"{url}/pii",
        data={
            "enabled": "on",
            "default_mode": "mask",
            "ids": "hash",
            "mode_email": "hash",
            "mode_person": "off",
            "allowlist": "support@acme.test\n",
            "csrf_token": csrf,
        },
    )
    assert policy.status_code == 303
    pii = (await client.get("/v1/project/pii", headers=tenant.headers())).json()
    assert pii["modes"] == {"email": "hash"} and pii["ids"] == "hash"
    assert "person" not in pii["entities"] and "email" in pii["entities"]
    assert pii["allowlist"] == ["support@acme.test"] and pii["enabled"] is True
    bad_mode = await client.post(
        f"{url}/pii", data={"enabled": "on", "mode_email": "shred", "csrf_token": csrf}
    )
    assert bad_mode.status_code == 400 and "modes.email" in bad_mode.text
    assert (await client.get("/v1/project/pii", headers=tenant.headers())).json() == pii


async def test_members_and_the_last_admin(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "admin@acme.test", "admin")
    Users(runtime.engine).create("new@acme.test", PASSWORD)
    csrf = await sign_in(client, "admin@acme.test")
    url = "/ui/p/acme/settings/members"

    def roles() -> dict[str, Role]:
        return {u.email: r for u, r in Users(runtime.engine).members(tenant.project_id)}

    added = await client.post(
        f"{url}/add", data={"email": "New@acme.test", "role": "reviewer", "csrf_token": csrf}
    )
    assert added.status_code == 303
    assert roles()["new@acme.test"] is Role.REVIEWER
    changed = await client.post(
        f"{url}/role", data={"email": "new@acme.test", "role": "viewer", "csrf_token": csrf}
    )
    assert changed.status_code == 303 and roles()["new@acme.test"] is Role.VIEWER
    unknown = await client.post(
        f"{url}/add", data={"email": "ghost@acme.test", "role": "viewer", "csrf_token": csrf}
    )
    assert unknown.status_code == 400 and "email" in unknown.text

    # the last admin cannot demote or remove themself
    demote = await client.post(
        f"{url}/role", data={"email": "admin@acme.test", "role": "viewer", "csrf_token": csrf}
    )
    assert demote.status_code == 400 and "last admin" in demote.text
    leave = await client.post(
        f"{url}/remove", data={"email": "admin@acme.test", "csrf_token": csrf}
    )
    assert leave.status_code == 400 and "last admin" in leave.text
    assert roles()["admin@acme.test"] is Role.ADMIN

    removed = await client.post(
        f"{url}/remove", data={"email": "new@acme.test", "csrf_token": csrf}
    )
    assert removed.status_code == 303 and "new@acme.test" not in roles()
    gone = await client.post(f"{url}/remove", data={"email": "new@acme.test", "csrf_token": csrf})
    assert gone.status_code == 404


@pytest.mark.parametrize("role", ["reviewer", "viewer"])
async def test_only_admins_reach_the_settings(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, role: str
) -> None:
    add_user(runtime, tenant.project_id, "admin@acme.test", "admin")
    add_user(runtime, tenant.project_id, "someone@acme.test", role)
    csrf = await sign_in(client, "someone@acme.test")
    assert (await client.get("/ui/p/acme/settings")).status_code == 403
    before = (runtime.projects.keys("acme"), runtime.projects.get("acme"))
    posts = {
        "keys/rotate": {"kind": "secret"},
        "keys/revoke": {"lookup": tenant.secret_key[:16]},
        "origins": {"origins": "https://evil.example"},
        "retention": {"hot_days": "1"},
        "pii": {"enabled": ""},
        "members/add": {"email": "someone@acme.test", "role": "admin"},
        "members/role": {"email": "someone@acme.test", "role": "admin"},
        "members/remove": {"email": "admin@acme.test"},
    }
    for path, data in posts.items():
        answer = await client.post(f"/ui/p/acme/settings/{path}", data={**data, "csrf_token": csrf})
        assert answer.status_code == 403, path
    assert (runtime.projects.keys("acme"), runtime.projects.get("acme")) == before
    assert (await client.get("/v1/prompts", headers=tenant.headers())).status_code == 200
    members = {u.email: r for u, r in Users(runtime.engine).members(tenant.project_id)}
    assert members == {"admin@acme.test": Role.ADMIN, "someone@acme.test": Role(role)}
