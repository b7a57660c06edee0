"""Signing in to the dashboard over HTTP, the security headers of every /ui response, the
page dependencies (roles, CSRF, projects) and the JSON API's acceptance of a session, on
SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, Depends
from starlette.responses import HTMLResponse

from closedloop import make_event
from closedloop.ingest.app import create_app
from closedloop.runtime import Runtime
from closedloop.store.users import Role, Users
from closedloop.ui.session import Viewer, acting, viewer
from tests.conftest import Tenant
from tests.integration.ui_helpers import PASSWORD, add_user

COOKIE = "closedloop_session"
_LOGIN_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')

probe = APIRouter()


@probe.get("/p/{project}/probe")
def _probe_page(v: Annotated[Viewer, Depends(viewer)]) -> HTMLResponse:
    return HTMLResponse(f"<p>{v.email} is {v.role.value} of {v.project}</p>")


@probe.post("/p/{project}/probe")
def _probe_act(v: Annotated[Viewer, Depends(acting(Role.ADMIN))]) -> HTMLResponse:
    return HTMLResponse(f"<p>done by {v.email}</p>")


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """The app, plus a probe page and a probe action on the dashboard's own dependencies
    (so these tests do not depend on any project page being built)."""
    app = create_app(runtime=runtime)
    app.state.runtime = runtime
    app.include_router(probe, prefix="/ui")
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def _post_login(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, next_: str = ""
) -> httpx.Response:
    form = await client.get("/ui/login")
    assert form.status_code == 200
    found = _LOGIN_CSRF.search(form.text)
    assert found
    data = {"email": email, "password": password, "csrf_token": found.group(1), "next": next_}
    return await client.post("/ui/login", data=data)


async def _sign_in(client: httpx.AsyncClient, runtime: Runtime, email: str) -> str:
    """Sign in through the form (303 and the session cookie); the session's CSRF token."""
    client.cookies.clear()
    answer = await _post_login(client, email)
    assert answer.status_code == 303, answer.text
    token = client.cookies.get(COOKIE)
    assert token
    session = Users(runtime.engine).session(token)
    assert session is not None
    return session.csrf


def _cookie_header(response: httpx.Response) -> str:
    found = [h for h in response.headers.get_list("set-cookie") if h.startswith(COOKIE + "=")]
    assert len(found) == 1, response.headers.get_list("set-cookie")
    return found[0]


# -- the sign-in form --------------------------------------------------------------------------


async def test_the_login_form_refuses_a_missing_or_wrong_form_token(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com")
    data = {"email": "ann@example.com", "password": PASSWORD}
    missing = await client.post("/ui/login", data={**data, "csrf_token": "guess"})
    assert missing.status_code == 403 and "The form expired" in missing.text
    assert COOKIE not in client.cookies
    await client.get("/ui/login")  # the form's cookie is set, the token sent is another
    wrong = await client.post("/ui/login", data={**data, "csrf_token": "guess"})
    assert wrong.status_code == 403
    assert COOKIE not in client.cookies


async def test_a_wrong_password_answers_401_saying_so(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com")
    wrong = await _post_login(client, "ann@example.com", "not the password")
    assert wrong.status_code == 401
    assert "the email or the password is wrong." in wrong.text.lower()
    assert COOKIE not in client.cookies
    unknown = await _post_login(client, "nobody@example.com", "not the password")
    assert unknown.status_code == 401
    assert "the email or the password is wrong." in unknown.text.lower()


async def test_the_sixth_failure_answers_429_with_retry_after(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com")
    assert runtime.settings.ui_login_attempts == 5
    for _ in range(5):
        assert (await _post_login(client, "ann@example.com", "wrong password")).status_code == 401
    limited = await _post_login(client, "ann@example.com", PASSWORD)  # even the right one
    assert limited.status_code == 429
    assert int(limited.headers["retry-after"]) > 0
    assert "Too many failed sign-ins" in limited.text
    assert COOKIE not in client.cookies


async def test_signing_in_sets_an_httponly_lax_session_cookie(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com", "viewer")
    answer = await _post_login(client, "Ann@Example.com")
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/"
    cookie = _cookie_header(answer).lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/;" in cookie + ";"
    page = await client.get("/ui/p/acme/probe")
    assert page.status_code == 200 and "ann@example.com is viewer of acme" in page.text


@pytest.mark.parametrize(
    ("asked", "goes_to"),
    [
        ("/ui/p/acme/issues?state=open", "/ui/p/acme/issues?state=open"),
        ("https://evil.example/", "/ui/"),
        ("//evil.example", "/ui/"),
        ("//evil.example/ui/", "/ui/"),
        ("/ui/\\evil.example", "/ui/"),
        ("/v1/project", "/ui/"),
    ],
)
async def test_next_only_follows_dashboard_paths(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, asked: str, goes_to: str
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com")
    answer = await _post_login(client, "ann@example.com", next_=asked)
    assert answer.status_code == 303
    assert answer.headers["location"] == goes_to


async def test_a_page_without_a_session_redirects_to_the_login_with_next(
    client: httpx.AsyncClient, tenant: Tenant
) -> None:
    answer = await client.get("/ui/p/acme/probe")
    assert answer.status_code == 303
    assert answer.headers["location"] == "/ui/login?next=%2Fui%2Fp%2Facme%2Fprobe"


async def test_logout_needs_the_csrf_token_then_the_cookie_opens_nothing(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com")
    csrf = await _sign_in(client, runtime, "ann@example.com")
    token = client.cookies[COOKIE]
    refused = await client.post("/ui/logout")
    assert refused.status_code == 403
    refused = await client.post("/ui/logout", data={"csrf_token": "stale"})
    assert refused.status_code == 403
    assert Users(runtime.engine).session(token) is not None
    assert (await client.get("/ui/p/acme/probe")).status_code == 200

    out = await client.post("/ui/logout", data={"csrf_token": csrf})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert Users(runtime.engine).session(token) is None
    client.cookies.set(COOKIE, token)  # a copy of the old cookie
    again = await client.get("/ui/p/acme/probe")
    assert again.status_code == 303 and again.headers["location"].startswith("/ui/login")
    api = await client.get("/v1/project")
    assert api.status_code == 401


# -- headers of every /ui response ---------------------------------------------------------------


async def test_every_ui_response_carries_the_strict_csp_and_its_companions(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com")
    login = await client.get("/ui/login")
    missing = await client.get("/ui/no-such-page")
    static = await client.get("/ui/static/ui.css")
    await _sign_in(client, runtime, "ann@example.com")
    page = await client.get("/ui/p/acme/probe")
    other = await client.get("/ui/p/globex/probe")
    assert [r.status_code for r in (login, missing, static, page, other)] == [
        200,
        404,
        200,
        200,
        404,
    ]
    for r in (login, missing, static, page, other):
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "style-src 'self'" in csp, r.url
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, r.url
        assert "frame-ancestors 'none'" in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
    for r in (login, missing, page, other):
        assert r.headers["cache-control"] == "no-store", r.url
    assert "<html" in missing.text.lower()  # the dashboard's page, not the API's JSON
    assert "no-store" not in static.headers.get("cache-control", "")
    assert "content-security-policy" not in (await client.get("/v1/project")).headers


# -- page dependencies -------------------------------------------------------------------------


async def test_another_projects_pages_answer_404_not_403(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com")
    await _sign_in(client, runtime, "ann@example.com")
    assert (await client.get("/ui/p/acme/probe")).status_code == 200
    for path in ("/ui/p/globex/", "/ui/p/globex/probe", "/ui/p/nowhere/probe"):
        answer = await client.get(path)
        assert answer.status_code == 404, path


async def test_a_page_action_needs_the_role_and_the_csrf_token(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "vic@example.com", "viewer")
    add_user(runtime, tenant.project_id, "ann@example.com", "admin")
    csrf = await _sign_in(client, runtime, "vic@example.com")
    denied = await client.post("/ui/p/acme/probe", data={"csrf_token": csrf})
    assert denied.status_code == 403 and "needs the admin role" in denied.text
    csrf = await _sign_in(client, runtime, "ann@example.com")
    assert (await client.post("/ui/p/acme/probe")).status_code == 403
    assert (await client.post("/ui/p/acme/probe", data={"csrf_token": "x"})).status_code == 403
    evil = await client.post(
        "/ui/p/acme/probe",
        data={"csrf_token": csrf},
        headers={"origin": "https://evil.example"},
    )
    assert evil.status_code == 403
    done = await client.post("/ui/p/acme/probe", data={"csrf_token": csrf})
    assert done.status_code == 200 and "done by ann@example.com" in done.text
    by_header = await client.post("/ui/p/acme/probe", headers={"x-csrf-token": csrf})
    assert by_header.status_code == 200


async def test_a_non_ascii_csrf_token_is_refused_not_an_error(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com")
    await _sign_in(client, runtime, "ann@example.com")
    form = await client.post("/ui/p/acme/probe", data={"csrf_token": "\u00e9t\u00e9"})
    assert form.status_code == 403
    header = await client.put(
        "/v1/rules/x", json=_RULE, headers={b"x-csrf-token": "\u00e9t\u00e9".encode("latin-1")}
    )
    assert header.status_code == 403
    out = await client.post("/ui/logout", data={"csrf_token": "\u00e9t\u00e9"})
    assert out.status_code == 403


async def test_a_nul_in_the_sign_in_email_is_a_wrong_sign_in_not_an_error(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com")
    answer = await _post_login(client, "ann\x00@example.com")
    assert answer.status_code == 401 and "wrong" in answer.text
    assert COOKIE not in client.cookies


async def test_a_non_ascii_login_form_token_is_refused_not_an_error(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com")
    await client.get("/ui/login")
    data = {"email": "ann@example.com", "password": PASSWORD, "csrf_token": "\u00e9t\u00e9"}
    answer = await client.post("/ui/login", data=data)
    assert answer.status_code == 403
    assert COOKIE not in client.cookies


async def test_each_session_carries_its_own_users_role(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    """The first session of the second account has the id of the first account: it must
    still open the second account's role, not the first's."""
    add_user(runtime, tenant.project_id, "ann@example.com", "admin")
    add_user(runtime, tenant.project_id, "vic@example.com", "viewer")
    csrf = await _sign_in(client, runtime, "vic@example.com")
    page = await client.get("/ui/p/acme/probe")
    assert "vic@example.com is viewer of acme" in page.text
    denied = await client.post("/ui/p/acme/probe", data={"csrf_token": csrf})
    assert denied.status_code == 403
    put = await client.put("/v1/rules/x", json=_RULE, headers={"x-csrf-token": csrf})
    assert put.status_code == 403


# -- the JSON API with a session ---------------------------------------------------------------


async def test_the_api_opens_the_users_only_project_with_the_cookie(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    add_user(runtime, other_tenant.project_id, "gus@example.com", "viewer")
    await _sign_in(client, runtime, "gus@example.com")
    answer = await client.get("/v1/project")
    assert answer.status_code == 200, answer.text
    assert answer.json()["name"] == "globex" and answer.json()["id"] == other_tenant.project_id


async def test_a_user_of_two_projects_names_one_and_no_other(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    runtime.projects.create("initech")
    add_user(runtime, tenant.project_id, "ann@example.com", "admin")
    add_user(runtime, other_tenant.project_id, "ann@example.com", "viewer")
    await _sign_in(client, runtime, "ann@example.com")
    unnamed = await client.get("/v1/project")
    assert unnamed.status_code == 401 and "X-Closedloop-Project" in unnamed.json()["detail"]
    named = await client.get("/v1/project", headers={"x-closedloop-project": "globex"})
    assert named.status_code == 200 and named.json()["name"] == "globex"
    for project in ("initech", "nowhere"):
        answer = await client.get("/v1/project", headers={"x-closedloop-project": project})
        assert answer.status_code == 404, project


_RULES = b"rules:\n  - name: r\n    when: {drift: any}\n    actions: [{review: {}}]\n"
_RULE = {"when": {"drift": "any"}, "actions": [{"review": {}}]}


async def test_a_viewer_reads_but_may_not_write(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "vic@example.com", "viewer")
    csrf = await _sign_in(client, runtime, "vic@example.com")
    assert (await client.get("/v1/rules")).status_code == 200
    check = await client.post(
        "/v1/rules/check",
        content=_RULES,
        headers={"content-type": "application/yaml", "x-csrf-token": csrf},
    )
    assert check.status_code == 200, check.text  # checking a file reads: any role may
    put = await client.put("/v1/rules/x", json=_RULE, headers={"x-csrf-token": csrf})
    assert put.status_code == 403 and "admin role" in put.json()["detail"]
    nxt = await client.post(
        "/v1/review/next", json={"reviewer": "vic"}, headers={"x-csrf-token": csrf}
    )
    assert nxt.status_code == 403
    # an endpoint's URL may be a credential (Slack's are): only admins read webhooks
    assert (await client.get("/v1/webhooks")).status_code == 403
    assert (await client.get("/v1/webhooks/deliveries")).status_code == 403


async def test_a_reviewer_works_the_queue_but_may_not_change_rules(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "rae@example.com", "reviewer")
    csrf = await _sign_in(client, runtime, "rae@example.com")
    nxt = await client.post(
        "/v1/review/next", json={"reviewer": "rae@example.com"}, headers={"x-csrf-token": csrf}
    )
    assert nxt.status_code == 204, nxt.text  # allowed; the queue is empty
    put = await client.put("/v1/rules/x", json=_RULE, headers={"x-csrf-token": csrf})
    assert put.status_code == 403
    assert (await client.get("/v1/rules/x")).status_code == 404  # nothing was written


async def test_a_signed_in_reviewer_answers_as_themself_whatever_the_body_names(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    event = make_event("interaction", {"input": "q", "output": "a"}, id="i-who")
    r = await client.post("/v1/events", json={"events": [event]}, headers=tenant.headers())
    assert r.status_code == 200, r.text
    queued = await client.post(
        "/v1/review/tasks", json={"interaction_id": "i-who"}, headers=tenant.headers()
    )
    assert queued.status_code == 201, queued.text
    add_user(runtime, tenant.project_id, "rae@example.com", "reviewer")
    csrf = {"x-csrf-token": await _sign_in(client, runtime, "rae@example.com")}
    claimed = await client.post(
        "/v1/review/next", json={"reviewer": "ceo@example.com"}, headers=csrf
    )
    assert claimed.status_code == 200 and claimed.json()["assignee"] == "rae@example.com"
    task = claimed.json()["id"]
    answer = {"reviewer": "ceo@example.com", "label": "bad"}
    done = await client.post(f"/v1/review/tasks/{task}/answer", json=answer, headers=csrf)
    assert done.status_code == 200, done.text
    assert done.json()["answered_by"] == "rae@example.com"


async def test_an_admins_write_needs_the_csrf_token_and_the_same_origin(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com", "admin")
    csrf = await _sign_in(client, runtime, "ann@example.com")
    assert (await client.put("/v1/rules/x", json=_RULE)).status_code == 403
    stale = await client.put("/v1/rules/x", json=_RULE, headers={"x-csrf-token": "stale"})
    assert stale.status_code == 403 and "CSRF" in stale.json()["detail"]
    evil = await client.put(
        "/v1/rules/x",
        json=_RULE,
        headers={"x-csrf-token": csrf, "origin": "https://evil.example"},
    )
    assert evil.status_code == 403 and "another site" in evil.json()["detail"]
    assert (await client.get("/v1/rules/x")).status_code == 404
    own = {"x-csrf-token": csrf, "origin": "http://testserver"}
    done = await client.put("/v1/rules/x", json=_RULE, headers=own)
    assert done.status_code == 200, done.text
    assert (await client.get("/v1/rules/x")).status_code == 200


async def test_a_bearer_key_wins_over_the_cookie(
    client: httpx.AsyncClient, runtime: Runtime, tenant: Tenant, other_tenant: Tenant
) -> None:
    add_user(runtime, tenant.project_id, "ann@example.com", "admin")
    await _sign_in(client, runtime, "ann@example.com")
    keyed = await client.get("/v1/project", headers=other_tenant.headers())
    assert keyed.status_code == 200 and keyed.json()["name"] == "globex"
    bad = await client.get("/v1/project", headers={"authorization": "Bearer cl_sk_nope"})
    assert bad.status_code == 401  # a bad key is not rescued by the cookie
    # a key's write needs no CSRF token even with the cookie along
    put = await client.put("/v1/rules/x", json=_RULE, headers=other_tenant.headers())
    assert put.status_code == 200, put.text


async def test_a_page_that_fails_shows_the_dashboards_error_page_with_its_headers(
    runtime: Runtime, tenant: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from closedloop.ui.pages import overview

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug in a page")

    monkeypatch.setattr(overview, "overview_data", broken)
    app = create_app(runtime=runtime)
    app.state.runtime = runtime
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        add_user(runtime, tenant.project_id, "ann@example.com")
        await _sign_in(c, runtime, "ann@example.com")
        page = await c.get("/ui/p/acme/")
    assert page.status_code == 500
    assert page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "Something went wrong" in page.text and "a bug in a page" not in page.text
    assert 'href="/ui/p/acme/interactions"' in page.text, "the navigation stays"
