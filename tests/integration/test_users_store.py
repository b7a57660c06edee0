"""Dashboard accounts in the hot store, on SQLite and PostgreSQL: creation, argon2id hashes,
authentication, disabling, roles, sessions, the sign-in rate limit and the 0006 migration."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import sqlalchemy as sa
from alembic import command

from closedloop.errors import AuthError, ConfigError, NotFound, RateLimited
from closedloop.runtime import Runtime
from closedloop.store import migrate, models
from closedloop.store.db import create_engine
from closedloop.store.users import LoginThrottle, Role, Users
from tests.conftest import Tenant

PASSWORD = "correct horse battery"
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def users(runtime: Runtime) -> Users:
    return Users(runtime.engine)


def _hash_of(runtime: Runtime, email: str) -> str:
    with runtime.engine.connect() as conn:
        found: str = conn.execute(
            sa.select(models.users.c.password_hash).where(models.users.c.email == email)
        ).scalar_one()
    return found


def test_create_normalizes_the_address_and_stores_an_argon2id_hash(
    runtime: Runtime, users: Users
) -> None:
    user = users.create("  Ann@Example.COM ", PASSWORD)
    assert user.email == "ann@example.com" and not user.disabled
    stored = _hash_of(runtime, "ann@example.com")
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored
    assert users.get("ANN@example.com").id == user.id


def test_create_refuses_a_taken_address_a_short_password_and_a_non_address(
    users: Users,
) -> None:
    users.create("ann@example.com", PASSWORD)
    with pytest.raises(ConfigError) as taken:
        users.create("ANN@example.com", "another long password")
    assert taken.value.field == "email" and "exists already" in str(taken.value)
    with pytest.raises(ConfigError) as short:
        users.create("bob@example.com", "short")
    assert short.value.field == "password" and "at least 10" in str(short.value)
    with pytest.raises(ConfigError) as bad:
        users.create("not an address", PASSWORD)
    assert bad.value.field == "email"
    assert [u.email for u in users.all()] == ["ann@example.com"]


def test_authenticate_says_the_same_for_a_wrong_password_and_an_unknown_address(
    users: Users,
) -> None:
    created = users.create("ann@example.com", PASSWORD)
    assert users.authenticate(" ANN@example.com", PASSWORD).id == created.id
    with pytest.raises(AuthError) as wrong:
        users.authenticate("ann@example.com", PASSWORD + "!")
    with pytest.raises(AuthError) as unknown:
        users.authenticate("nobody@example.com", PASSWORD)
    assert str(wrong.value) == str(unknown.value) == "the email or the password is wrong"


def test_a_disabled_account_is_refused_and_its_sessions_end(users: Users) -> None:
    user = users.create("ann@example.com", PASSWORD)
    token, _ = users.start_session(user, lifetime=HOUR)
    assert users.session(token) is not None
    users.set_disabled("ann@example.com", True)
    assert users.session(token) is None
    with pytest.raises(AuthError, match="disabled"):
        users.authenticate("ann@example.com", PASSWORD)
    assert users.get("ann@example.com").disabled
    users.set_disabled("ann@example.com", False)
    assert users.authenticate("ann@example.com", PASSWORD).id == user.id
    assert users.session(token) is None  # enabling again does not revive old sessions


def test_set_password_ends_the_sessions_and_only_the_new_password_works(
    runtime: Runtime, users: Users
) -> None:
    user = users.create("ann@example.com", PASSWORD)
    token, _ = users.start_session(user, lifetime=HOUR)
    before = _hash_of(runtime, "ann@example.com")
    with pytest.raises(ConfigError) as short:
        users.set_password("ann@example.com", "short")
    assert short.value.field == "password"
    assert users.session(token) is not None  # a refused change ends nothing
    users.set_password("ann@example.com", "a brand new passphrase")
    assert users.session(token) is None
    assert _hash_of(runtime, "ann@example.com") != before
    with pytest.raises(AuthError):
        users.authenticate("ann@example.com", PASSWORD)
    assert users.authenticate("ann@example.com", "a brand new passphrase").id == user.id
    with pytest.raises(NotFound):
        users.set_password("nobody@example.com", "a brand new passphrase")


def test_grant_replaces_the_role_and_revoke_removes_it(
    users: Users, tenant: Tenant, other_tenant: Tenant
) -> None:
    users.create("ann@example.com", PASSWORD)
    users.create("bob@example.com", PASSWORD)
    users.grant("ann@example.com", tenant.project_id, Role.VIEWER)
    users.grant("ann@example.com", tenant.project_id, Role.ADMIN)  # replaces, not a second row
    users.grant("ann@example.com", other_tenant.project_id, Role.REVIEWER)
    users.grant("bob@example.com", tenant.project_id, Role.VIEWER)
    ann = users.get("ann@example.com")
    assert [(m.project, m.role) for m in ann.memberships] == [
        ("acme", Role.ADMIN),
        ("globex", Role.REVIEWER),
    ]
    assert ann.role_in("acme") is Role.ADMIN and ann.role_in("initech") is None
    members = users.members(tenant.project_id)
    assert [(u.email, r) for u, r in members] == [
        ("ann@example.com", Role.ADMIN),
        ("bob@example.com", Role.VIEWER),
    ]
    assert [(u.email, r) for u, r in users.members(other_tenant.project_id)] == [
        ("ann@example.com", Role.REVIEWER)
    ]
    users.revoke("ann@example.com", tenant.project_id)
    assert users.get("ann@example.com").role_in("acme") is None
    assert [u.email for u, _ in users.members(tenant.project_id)] == ["bob@example.com"]
    with pytest.raises(NotFound):
        users.revoke("ann@example.com", tenant.project_id)
    with pytest.raises(NotFound):
        users.grant("nobody@example.com", tenant.project_id, Role.VIEWER)


def test_role_parse_names_the_choices() -> None:
    assert Role.parse(" Reviewer ") is Role.REVIEWER
    with pytest.raises(ConfigError) as bad:
        Role.parse("owner")
    assert bad.value.field == "role"
    assert "use one of viewer, reviewer, admin" in str(bad.value)


def test_a_session_belongs_to_its_own_user_among_several(
    users: Users, tenant: Tenant, other_tenant: Tenant
) -> None:
    """Session ids and user ids differ once there are several of each: the session must
    still name its own account and that account's roles."""
    ann = users.create("ann@example.com", PASSWORD)
    bob = users.create("bob@example.com", PASSWORD)
    users.grant("ann@example.com", tenant.project_id, Role.ADMIN)
    users.grant("bob@example.com", other_tenant.project_id, Role.VIEWER)
    tokens = [users.start_session(ann, lifetime=HOUR)[0] for _ in range(2)]
    bob_token, bob_started = users.start_session(bob, lifetime=HOUR)
    found = users.session(bob_token)
    assert found is not None
    assert found.id == bob_started.id and found.csrf == bob_started.csrf
    assert found.user.id == bob.id and found.user.email == "bob@example.com"
    assert [(m.project, m.role) for m in found.user.memberships] == [("globex", Role.VIEWER)]
    for token in tokens:
        mine = users.session(token)
        assert mine is not None and mine.user.email == "ann@example.com"
        assert mine.user.role_in("acme") is Role.ADMIN


def test_a_session_expires_and_end_session_ends_it(users: Users) -> None:
    user = users.create("ann@example.com", PASSWORD)
    short, _ = users.start_session(user, lifetime=dt.timedelta(milliseconds=50))
    token, started = users.start_session(user, lifetime=HOUR)
    assert started.csrf_ok(started.csrf) and not started.csrf_ok("x") and not started.csrf_ok(None)
    time.sleep(0.1)
    assert users.session(short) is None
    live = users.session(token)
    assert live is not None and live.csrf == started.csrf
    users.end_session(token)
    assert users.session(token) is None
    assert users.session("") is None and users.session("x" * 200) is None


def test_the_throttle_refuses_an_account_after_limit_failures_but_not_another(
    runtime: Runtime,
) -> None:
    throttle = LoginThrottle(runtime.engine, limit=3, window=600)
    for _ in range(3):
        throttle.check("ann@example.com", "10.0.0.1")
        throttle.failed("ann@example.com", "10.0.0.1")
    with pytest.raises(RateLimited) as limited:
        throttle.check("ANN@example.com", "10.0.0.9")  # the account's limit, from anywhere
    assert limited.value.retry_after > 0
    throttle.check("bob@example.com", "10.0.0.2")  # another account from another address


def test_the_per_address_limit_holds_across_accounts(runtime: Runtime) -> None:
    throttle = LoginThrottle(runtime.engine, limit=2, window=600)
    for k in range(8):  # 4 × limit, each account below its own limit
        throttle.check(f"u{k}@example.com", "10.0.0.1")
        throttle.failed(f"u{k}@example.com", "10.0.0.1")
    with pytest.raises(RateLimited):
        throttle.check("fresh@example.com", "10.0.0.1")
    throttle.check("fresh@example.com", "10.0.0.2")
    throttle.check("u0@example.com", "10.0.0.2")


def test_a_success_clears_the_account_and_the_window_ends(runtime: Runtime) -> None:
    throttle = LoginThrottle(runtime.engine, limit=2, window=600)
    throttle.failed("ann@example.com", None)
    throttle.succeeded("ann@example.com")
    throttle.failed("ann@example.com", None)
    throttle.check("ann@example.com", None)  # one failure since the success: below the limit
    throttle.failed("ann@example.com", None)
    with pytest.raises(RateLimited):
        throttle.check("ann@example.com", None)

    brief = LoginThrottle(runtime.engine, limit=2, window=0.2)
    for _ in range(2):
        brief.failed("bob@example.com", "10.0.0.3")
    with pytest.raises(RateLimited):
        brief.check("bob@example.com", "10.0.0.3")
    time.sleep(0.3)
    brief.check("bob@example.com", "10.0.0.3")
    brief.failed("bob@example.com", "10.0.0.3")  # a new window starts at one failure
    brief.check("bob@example.com", "10.0.0.3")


def test_migration_0006_upgrades_and_downgrades_cleanly(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        migrate.upgrade(engine, "0005")
        new = {"users", "memberships", "ui_sessions", "login_failures"}
        assert not new & set(sa.inspect(engine).get_table_names())
        migrate.upgrade(engine)
        assert new <= set(sa.inspect(engine).get_table_names())
        cfg = migrate.alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0005")
        assert not new & set(sa.inspect(engine).get_table_names())
        with engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        assert version == "0005"
        migrate.upgrade(engine)  # and up again
        users = Users(engine)
        users.create("ann@example.com", PASSWORD)
        assert users.authenticate("ann@example.com", PASSWORD).email == "ann@example.com"
    finally:
        engine.dispose()
