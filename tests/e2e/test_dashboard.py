"""The dashboard in a real browser: Debian's chromium, driven by Playwright, against a real
``closedloop serve`` whose project holds the demo's sample and hostile text everywhere the API
accepts it (see ``xss_corpus.py``).

Every page is visited signed in through the form; none may alert, log an error (a CSP
violation is one) or throw, every payload shows as literal text and none becomes an element.
The flows: the review queue worked with the keyboard only, a prompt version promoted, a key
rotated, and what a reviewer and a viewer may not do. Screenshots of every page go to
``tests/artifacts/screenshots/`` (or ``$CLOSEDLOOP_ARTIFACTS/screenshots/``).

Never downloads a browser: without ``/usr/bin/chromium`` (``apt-get install chromium``) the
tests fail and say so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, Page, Response, sync_playwright

from closedloop.ui.app import CSP
from tests.conftest import PostgresFactory
from tests.e2e.conftest import MakeServer
from tests.e2e.dashboard_helpers import (
    ARGS,
    CHROMIUM,
    ENV,
    PROJECT,
    PROMPT,
    RULE,
    Account,
    Seeded,
    Watch,
    add_member,
    artifacts,
    create_user,
    csrf_of,
    hook,
    new_context,
    open_page,
    poll,
    seed,
    sign_in,
)
from tests.e2e.server import LiveServer
from tests.e2e.xss_corpus import FORBIDDEN, PAYLOADS, TEMPLATE

PASSWORD = "correct horse battery staple"
#: The pages of the navigation: (nav label, path under /ui/p/acme, the role it needs).
PAGES = (
    ("Overview", "/", "viewer"),
    ("Interactions", "/interactions", "viewer"),
    ("Issues", "/issues", "viewer"),
    ("Review", "/review", "reviewer"),
    ("Rules & actions", "/rules", "viewer"),
    ("Prompts", "/prompts", "viewer"),
    ("Settings", "/settings", "admin"),
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Seeded]]:
    """One server on SQLite with the seeded project acme and an account per role."""
    with LiveServer(tmp_path_factory.mktemp("dashboard"), env=ENV) as server:
        keys = server.create_project(PROJECT)
        accounts = [  # the first admin as an operator makes one; the others, faster
            create_user(server, "admin@example.com", "admin", PASSWORD),
            add_member(server, "reviewer@example.com", "reviewer", PASSWORD),
            add_member(server, "viewer@example.com", "viewer", PASSWORD),
        ]
        server.start()
        yield server, seed(server, keys, accounts)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: apt-get install chromium (never a download)")
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


def url(server: LiveServer, path: str = "/") -> str:
    """A page of project acme."""
    return f"{server.url}/ui/p/{PROJECT}{path}"


def shot(page: Page, name: str) -> Path:
    """A full-page screenshot into the artifacts folder."""
    path = artifacts() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def assert_inert(page: Page) -> None:
    """No payload became an element, and the template payload was not evaluated."""
    for selector in FORBIDDEN:
        assert page.locator(selector).count() == 0, f"{selector} exists on {page.url}"
    assert "49 words" not in page.inner_text("body"), f"{TEMPLATE} was evaluated on {page.url}"


def shown(page: Page) -> set[str]:
    """The payloads that the page shows as literal text."""
    text = page.inner_text("body")
    return {p for p in PAYLOADS if p in text}


def visit(page: Page, watch: Watch, target: str) -> Response:
    """Go to ``target``; check the answer's CSP and that the page stayed inert."""
    response = page.goto(target)
    assert response is not None
    assert response.headers.get("content-security-policy") == CSP, target
    page.wait_for_load_state("load")
    assert_inert(page)
    watch.check()
    return response


def test_the_sign_in_page_carries_the_csp_and_refuses_a_wrong_password(
    site: tuple[LiveServer, Seeded], browser: Browser
) -> None:
    server, seeded = site
    context = new_context(browser)
    page, watch = open_page(context)
    response = visit(page, watch, f"{server.url}/ui/login")
    assert response.status == 200
    for name in ("x-content-type-options", "x-frame-options", "referrer-policy"):
        assert response.headers.get(name), name
    page.fill("input[name=email]", seeded.accounts["admin"].email)
    page.fill("input[name=password]", "not the password at all")
    with watch.allowing("status of 401"):  # the refusal answers 401, which chromium logs
        page.click("button[type=submit]")
        page.wait_for_load_state()
    assert page.locator(".alert-error").count() == 1
    assert "/ui/login" in page.url
    shot(page, "login")
    sign_in(page, server.url, seeded.accounts["admin"])
    assert page.url.rstrip("/").endswith(f"/ui/p/{PROJECT}")
    watch.check()
    context.close()


def test_every_page_of_the_nav_renders_the_corpus_as_text(
    site: tuple[LiveServer, Seeded], browser: Browser
) -> None:
    server, seeded = site
    context = new_context(browser)
    page, watch = open_page(context)
    sign_in(page, server.url, seeded.accounts["admin"])
    nav = page.locator("nav.nav a")
    assert [a.strip() for a in nav.all_inner_texts()] == [label for label, _, _ in PAGES]
    seen: set[str] = set()
    failures: list[str] = []  # every page is visited and photographed, then the test fails
    for label, path, _ in PAGES:
        link = page.locator("nav.nav a", has_text=re.compile(f"^{re.escape(label)}$"))
        if link.count():  # an error page has no nav
            link.click()
        else:
            page.goto(url(server, path))
        page.wait_for_load_state("load")
        shot(page, label.split()[0].lower())
        try:
            assert page.url.endswith(f"/ui/p/{PROJECT}{path}"), page.url
            assert_inert(page)
            watch.check()
        except AssertionError as exc:
            failures.append(f"{label}: {exc}")
            watch.problems.clear()
        seen |= shown(page)
    assert not failures, "\n".join(failures)
    assert seen == set(PAYLOADS), f"never shown: {set(PAYLOADS) - seen}"
    context.close()


@contextlib.contextmanager
def signed_in(server: LiveServer, account: Account) -> Iterator[httpx.Client]:
    """An HTTP client signed in through the form (no browser)."""
    with httpx.Client(base_url=server.url, timeout=30) as client:
        form = client.get("/ui/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert token is not None
        signed = client.post(
            "/ui/login",
            data={"email": account.email, "password": account.password, "csrf_token": token[1]},
        )
        assert signed.status_code == 303, signed.text
        yield client


#: What a payload would be if a page did not escape it.
RAW = ("<script>alert(1)</script>", "<img src=x", "<svg onload", "<iframe", "<style>body")


def check_pages(server: LiveServer, seeded: Seeded) -> None:
    """Every page of the nav and the detail pages answer 200 with the CSP, the payloads
    escaped (never raw) in the HTML."""
    targets = [url(server, path) for _, path, _ in PAGES]
    targets += [target for _, target in detail_pages(server, seeded, every=False)]
    with signed_in(server, seeded.accounts["admin"]) as client:
        for target in targets:
            answer = client.get(target)
            assert answer.status_code == 200, (target, answer.status_code)
            assert answer.headers["content-security-policy"] == CSP, target
            for raw in RAW:
                assert raw not in answer.text, f"{raw} unescaped on {target}"
        missing = client.get(url(server, "/interactions/no-such-id"))
        assert missing.status_code == 404
        assert missing.headers["content-security-policy"] == CSP


def test_every_page_answers_with_the_csp_and_escaped_text(
    site: tuple[LiveServer, Seeded],
) -> None:
    server, seeded = site
    check_pages(server, seeded)
    with signed_in(server, seeded.accounts["admin"]) as client:
        page = client.get(url(server, f"/interactions/{seeded.hostile[0]}"))
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text


def test_every_page_answers_on_postgresql(
    live_servers: MakeServer, postgres: PostgresFactory
) -> None:
    server = live_servers(postgres.new_url(), env=ENV)
    keys = server.create_project(PROJECT)
    admin = add_member(server, "admin@example.com", "admin", PASSWORD)
    server.start()
    check_pages(server, seed(server, keys, [admin]))


def detail_pages(
    server: LiveServer, seeded: Seeded, *, every: bool = True
) -> list[tuple[str, str]]:
    """(screenshot name, URL) of the detail pages that show seeded text (of the hostile
    interactions, every one or only the first)."""
    with httpx.Client(base_url=server.url, headers=seeded.keys.headers(), timeout=30) as api:
        issues = api.get("/v1/issues", params={"limit": 1}).json()["issues"]
    found = [
        (f"interaction-{k}", url(server, f"/interactions/{i}"))
        for k, i in enumerate(seeded.hostile if every else seeded.hostile[:1])
    ]
    found += [
        ("rule", url(server, f"/rules/{RULE}")),
        ("prompt", url(server, f"/prompts/{PROMPT}")),
    ]
    if issues:
        found.append(("issue", url(server, f"/issues/{issues[0]['id']}")))
    return found


def test_the_detail_pages_render_the_corpus_as_text(
    site: tuple[LiveServer, Seeded], browser: Browser
) -> None:
    server, seeded = site
    context = new_context(browser)
    page, watch = open_page(context)
    sign_in(page, server.url, seeded.accounts["admin"])
    for name, target in detail_pages(server, seeded):
        response = visit(page, watch, target)
        assert response.status == 200, target
        text = page.inner_text("body")
        if name.startswith("interaction-"):
            k = int(name.rpartition("-")[2])
            payload = PAYLOADS[k]
            for expected in (f"question {k}: {payload}", f"answer {k}: {payload}", payload):
                assert expected in text, f"{expected!r} not shown on {target}"
            if k == 0:
                shot(page, "interaction-detail")
        else:
            if name in ("rule", "prompt"):
                assert shown(page) == set(PAYLOADS), (
                    f"{name}: never shown {set(PAYLOADS) - shown(page)}"
                )
            shot(page, f"{name}-detail")
    context.close()


def test_a_reviewer_works_three_tasks_with_the_keyboard_only(
    site: tuple[LiveServer, Seeded], browser: Browser
) -> None:
    server, seeded = site
    reviewer = seeded.accounts["reviewer"]
    context = new_context(browser)
    page, watch = open_page(context)
    sign_in(page, server.url, reviewer)
    visit(page, watch, url(server, "/review"))
    shot(page, "review-task")

    def task_id() -> int:
        title = page.inner_text("#task-title")
        found = re.search(r"#(\d+)", title)
        assert found, title
        return int(found[1])

    keys = page.keyboard
    first = task_id()
    keys.press("4")  # rating
    keys.press("g")  # label "good"
    keys.press("c")  # into the correction
    keys.press("Control+A")
    keys.type("The right answer, typed by the reviewer.")
    keys.press("Escape")  # out of the text area
    with page.expect_navigation(url=re.compile(r".*done=answered.*")):
        keys.press("Enter")  # answer
    assert_inert(page)
    second = task_id()
    assert second != first
    keys.press("2")
    keys.press("b")  # label "bad"
    with page.expect_navigation(url=re.compile(r".*done=answered.*")):
        keys.press("Enter")
    third = task_id()
    assert third not in (first, second)
    with page.expect_navigation(url=re.compile(r".*done=skipped.*")):
        keys.press("s")  # skip
    assert task_id() not in (first, second, third)
    assert_inert(page)
    watch.check()
    shot(page, "review-after")
    context.close()

    with httpx.Client(base_url=server.url, headers=seeded.keys.headers(), timeout=30) as api:
        done = {
            t["id"]: t
            for t in api.get("/v1/review/tasks", params={"state": "done"}).json()["tasks"]
        }
        skipped = api.get("/v1/review/tasks", params={"state": "skipped"}).json()["tasks"]
        feedback = api.get("/v1/feedback", params={"limit": 200}).json()["data"]
    assert {first, second} <= set(done), done
    assert third in {t["id"] for t in skipped}
    assert done[first]["answered_by"] == done[second]["answered_by"] == reviewer.email
    by_id = {f["id"]: f for f in feedback if f.get("source") == "reviewer"}
    one, two = by_id[done[first]["feedback_id"]], by_id[done[second]["feedback_id"]]
    assert (one["rating"], one["label"]) == (4, "good"), one
    assert one["correction"] == "The right answer, typed by the reviewer."
    assert (two["rating"], two["label"]) == (2, "bad"), two
    assert not two.get("correction"), "an untouched correction is not sent"


def test_a_reviewer_sees_no_settings_link_and_gets_403_there(
    site: tuple[LiveServer, Seeded], browser: Browser
) -> None:
    server, seeded = site
    context = new_context(browser)
    page, watch = open_page(context)
    sign_in(page, server.url, seeded.accounts["reviewer"])
    nav = [a.strip() for a in page.locator("nav.nav a").all_inner_texts()]
    assert nav == [label for label, _, role in PAGES if role != "admin"]
    assert page.locator("a[href$='/settings']").count() == 0
    with watch.allowing("status of 403"):
        response = page.goto(url(server, "/settings"))
        assert response is not None and response.status == 403
        assert response.headers["content-security-policy"] == CSP
        assert page.locator("#keys").count() == 0
        shot(page, "forbidden")
    watch.check()
    context.close()


def test_a_viewer_sees_no_action_and_a_crafted_post_is_refused(
    site: tuple[LiveServer, Seeded], browser: Browser
) -> None:
    server, seeded = site
    context = new_context(browser)
    page, watch = open_page(context)
    sign_in(page, server.url, seeded.accounts["viewer"])
    nav = [a.strip() for a in page.locator("nav.nav a").all_inner_texts()]
    assert nav == [label for label, _, role in PAGES if role == "viewer"]
    actions = "form[method=post]:not([action='/ui/logout']), button[data-confirm]"
    for _, target in [
        (p, url(server, p)) for _, p, role in PAGES if role == "viewer"
    ] + detail_pages(server, seeded, every=False):
        visit(page, watch, target)
        assert page.locator(actions).count() == 0, f"an action for a viewer on {target}"
    token = csrf_of(page)
    with watch.allowing("status of 403"):
        for path in ("/review", "/settings"):
            response = page.goto(url(server, path))
            assert response is not None and response.status == 403, path
    for path, form in (
        (f"/prompts/{PROMPT}/promote", {"version": "2"}),
        ("/settings/keys/rotate", {"kind": "secret"}),
        ("/rules/run", {}),
        (f"/review/{seeded.tasks[-1]}/skip", {}),
    ):
        answer = page.request.post(url(server, path), form={"csrf_token": token, **form})
        assert answer.status == 403, (path, answer.status)
    with httpx.Client(base_url=server.url, headers=seeded.keys.headers(), timeout=30) as api:
        assert api.get(f"/v1/prompts/{PROMPT}").json()["labels"]["production"] == 1
    watch.check()
    context.close()


def test_an_admin_promotes_a_prompt_version_from_its_page(
    site: tuple[LiveServer, Seeded], browser: Browser
) -> None:
    server, seeded = site
    context = new_context(browser)
    page, watch = open_page(context)
    sign_in(page, server.url, seeded.accounts["admin"])
    visit(page, watch, url(server, f"/prompts/{PROMPT}"))
    page.get_by_role("button", name="Promote to production").click()
    page.wait_for_url(re.compile(r".*done=.*"))
    (asked,) = watch.confirms  # the data-confirm question, accepted
    assert "v2" in asked and "production" in asked, asked
    assert_inert(page)
    assert TEMPLATE in page.inner_text("body")
    watch.check()
    with httpx.Client(base_url=server.url, headers=seeded.keys.headers(), timeout=30) as api:
        assert api.get(f"/v1/prompts/{PROMPT}").json()["labels"]["production"] == 2
        resolved = api.get(f"/v1/prompts/{PROMPT}/resolve").json()
    served = resolved["production"]
    assert (served["version"], served["template"]) == ("2", "Answer in {{7*7}} words or fewer.")
    visit(page, watch, url(server, "/prompts"))
    row = page.locator("tr", has_text=PROMPT)
    assert "v2" in row.locator("td").nth(1).inner_text()
    context.close()


def test_an_admin_retries_a_dead_webhook_delivery_from_the_rules_page(
    site: tuple[LiveServer, Seeded], browser: Browser
) -> None:
    server, seeded = site
    api = httpx.Client(base_url=server.url, headers=seeded.keys.headers(), timeout=30)

    def dead() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = api.get(
            "/v1/webhooks/deliveries", params={"state": "dead"}
        ).json()["deliveries"]
        return found

    poll(dead, 30, "a dead delivery")
    context = new_context(browser)
    page, watch = open_page(context)
    sign_in(page, server.url, seeded.accounts["admin"])
    visit(page, watch, url(server, "/rules"))
    page.select_option("#delivery-state", "dead")  # the filter submits itself
    page.wait_for_url(re.compile(r".*state=dead.*"))
    row = page.locator("#deliveries ~ .card tbody tr").first
    delivery = int(row.locator("td").first.inner_text().strip().lstrip("#"))
    with hook(seeded.hook_port) as receiver:  # the endpoint is back
        row.get_by_role("button", name="Retry").click()
        page.wait_for_url(re.compile(r".*done=retried.*"))
        assert_inert(page)
        watch.check()

        def delivered() -> bool:
            found = api.get("/v1/webhooks/deliveries", params={"state": "delivered"}).json()
            return delivery in {d["id"] for d in found["deliveries"]}

        poll(delivered, 30, f"delivery {delivery} delivered after the retry")
        assert receiver.received >= 1
    api.close()
    context.close()


def test_an_admin_rotates_the_secret_key_and_only_the_new_one_works(
    site: tuple[LiveServer, Seeded], browser: Browser
) -> None:
    server, seeded = site
    old = seeded.keys
    context = new_context(browser)
    page, watch = open_page(context)
    sign_in(page, server.url, seeded.accounts["admin"])
    visit(page, watch, url(server, "/settings"))
    page.get_by_role("button", name="Rotate secret key").click()
    page.wait_for_selector("#new-key")
    (asked,) = watch.confirms
    assert "secret key" in asked, asked
    new_key = page.inner_text("#new-key").strip()
    assert new_key and new_key != old.secret_key
    assert_inert(page)
    watch.check()
    shot(page, "key-shown")
    context.close()
    seeded.keys = dataclasses.replace(old, secret_key=new_key)

    def answer(key: str) -> int:
        return httpx.get(
            f"{server.url}/v1/project", headers={"authorization": f"Bearer {key}"}, timeout=30
        ).status_code

    assert poll(lambda: answer(old.secret_key) == 401, 30, "the old key's refusal")
    assert answer(new_key) == 200
