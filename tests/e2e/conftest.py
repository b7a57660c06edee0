"""Fixtures of the end-to-end tests: real ``closedloop serve`` processes (see ``server.py``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

from tests.e2e.server import LiveServer, ProjectKeys

MakeServer = Callable[..., LiveServer]


@pytest.fixture
def live_servers(tmp_path: Path) -> Iterator[MakeServer]:
    """A factory of :class:`LiveServer` (not started); every one is killed at teardown."""
    made: list[LiveServer] = []

    def make(
        database_url: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        name: str = "server",
    ) -> LiveServer:
        server = LiveServer(tmp_path / name, database_url, env=env)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def live_server(live_servers: MakeServer, database_url: str) -> LiveServer:
    """A started server on a fresh database of the parametrised backend, with project acme."""
    server = live_servers(database_url)
    server.create_project("acme")
    server.start()
    return server


@pytest.fixture
def acme(live_server: LiveServer) -> ProjectKeys:
    """The keys of the live server's project."""
    return live_server.projects["acme"]
