"""Dashboard test helpers: accounts with a role, signing in through the real form, the CSRF
token of a page."""

from __future__ import annotations

import re

import httpx

from closedloop.runtime import Runtime
from closedloop.store.users import Role, Users

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def add_user(runtime: Runtime, project_id: int, email: str, role: str = "admin") -> None:
    """Create ``email`` (password :data:`PASSWORD`) with ``role`` in the project; an existing
    account only gets the role."""
    users = Users(runtime.engine)
    try:
        users.get(email)
    except Exception:
        users.create(email, PASSWORD)
    users.grant(email, project_id, Role(role))


def csrf_of(html: str) -> str:
    """The CSRF token in a page's forms."""
    found = _CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


async def sign_in(
    client: httpx.AsyncClient, email: str, password: str = PASSWORD, *, page: str = "/ui/"
) -> str:
    """Sign in through the form; return the session's CSRF token, read off ``page`` (by
    default the home page, which opens the first project's overview)."""
    client.cookies.clear()
    form = await client.get("/ui/login")
    answer = await client.post(
        "/ui/login",
        data={"email": email, "password": password, "csrf_token": csrf_of(form.text)},
    )
    assert answer.status_code == 303, answer.text
    shown = await client.get(page, follow_redirects=True)
    assert shown.status_code == 200, shown.text
    return csrf_of(shown.text)
