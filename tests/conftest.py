"""Shared fixtures: every store test runs on SQLite and on the real PostgreSQL.

PostgreSQL comes from ``CLOSEDLOOP_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); each test session creates fresh
databases on that server and drops them at the end. When the server cannot be reached the
PostgreSQL tests fail loudly: they are never skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from closedloop.ingest.app import create_app
from closedloop.runtime import Runtime
from closedloop.settings import Settings
from closedloop.store import migrate
from closedloop.store.db import create_engine

# Servers the tests start embed with the lexical fallback: loading the sentence model costs
# ~10 s and ~0.5 GB per process. The tests of the model itself ask for it by name.
os.environ.setdefault("CLOSEDLOOP_EMBEDDER", "lexical")

POSTGRES_ADMIN_URL = os.environ.get(
    "CLOSEDLOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BACKENDS = ["sqlite", "postgresql"]


class PostgresFactory:
    """Creates fresh databases on the test server and drops them at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.base = make_url(admin_url)
        self.created: list[str] = []
        try:
            with self.admin.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.OperationalError as exc:  # fail loudly, never skip
            raise RuntimeError(
                f"PostgreSQL is not reachable at {admin_url}: start it (see .ci/run) or set "
                "CLOSEDLOOP_TEST_POSTGRES_URL"
            ) from exc

    def new_url(self) -> str:
        name = f"cl_test_{uuid.uuid4().hex[:12]}"
        with self.admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return self.base.set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.admin.connect() as conn:
            for name in self.created:
                conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.admin.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresFactory]:
    factory = PostgresFactory(POSTGRES_ADMIN_URL)
    yield factory
    factory.drop_all()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database URL of the parametrised backend."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'closedloop.db'}"
    factory: PostgresFactory = request.getfixturevalue("postgres")
    return factory.new_url()


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    """A migrated engine on a fresh database."""
    eng = create_engine(database_url)
    migrate.upgrade(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Settings of an isolated server on a fresh database."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        auth_cache_seconds=0,
        run_worker=False,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """A started runtime (migrated, committer running)."""
    rt = Runtime.build(settings, load_plugins=False)
    rt.start()
    yield rt
    rt.stop()


@dataclass
class Tenant:
    """A project with its keys."""

    name: str
    project_id: int
    public_key: str
    secret_key: str

    def headers(self, kind: str = "secret") -> dict[str, str]:
        key = self.secret_key if kind == "secret" else self.public_key
        return {"authorization": f"Bearer {key}"}


@pytest.fixture
def tenant(runtime: Runtime) -> Tenant:
    project, public, secret = runtime.projects.create("acme")
    return Tenant("acme", project.id, public, secret)


@pytest.fixture
def other_tenant(runtime: Runtime) -> Tenant:
    project, public, secret = runtime.projects.create("globex")
    return Tenant("globex", project.id, public, secret)


@pytest.fixture
async def client(runtime: Runtime) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app through httpx's ASGI transport (runtime already started)."""
    app = create_app(runtime=runtime)
    app.state.runtime = runtime  # the runtime is started by its fixture, not the lifespan
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c
