"""Embedded mode: the SDK writes through the server's ingest path in its own process.

``Client(database_url="sqlite:///app.db", project="demo")`` needs no server: the background
thread builds a :class:`closedloop.runtime.Runtime` on that database (migrated, with the job
worker that enriches what it stores), creates the project if it is missing and hands each batch to
``runtime.ingestor.ingest`` - the same decode, validate, redact and group commit as
``POST /v1/events``. The server modules are imported only here, on first use, so the light
install still imports.
"""

from __future__ import annotations

import threading
from typing import Any

from closedloop.sdk._transport import SendOutcome, outcome_of

__all__ = ["EmbeddedTransport"]


class EmbeddedTransport:
    """Delivers batches to an in-process :class:`~closedloop.runtime.Runtime`.

    Parameters
    ----------
    database_url
        SQLAlchemy URL of the hot store (SQLite or PostgreSQL).
    project
        Project name; created when missing.
    settings
        Further :class:`~closedloop.settings.Settings` fields (``data_dir`` and the like).
    """

    def __init__(self, database_url: str, project: str, **settings: Any) -> None:
        self.database_url = database_url
        self.project = project
        self.settings = settings
        self._runtime: Any = None
        self._key: Any = None
        self._lock = threading.Lock()

    def _open(self) -> tuple[Any, Any]:
        with self._lock:
            if self._runtime is None:
                from closedloop.errors import NotFound
                from closedloop.runtime import Runtime
                from closedloop.settings import Settings
                from closedloop.types import ProjectKey

                # The worker runs the enrichment job here too: the same code as the server.
                # Not the embedding job: the app's process never loads the embedding model
                # (a `closedloop worker` beside it embeds).
                options: dict[str, Any] = {
                    "run_worker": True,
                    "embed_in_worker": False,
                    **self.settings,
                }
                settings = Settings(database_url=self.database_url, **options)
                runtime = Runtime.build(settings)
                runtime.start()
                try:
                    try:
                        project = runtime.projects.get(self.project)
                    except NotFound:
                        project, _public, _secret = runtime.projects.create(self.project)
                    keys = [k for k in runtime.projects.keys(self.project) if k.kind == "secret"]
                    self._key = ProjectKey(
                        project_id=project.id,
                        project_name=project.name,
                        kind="secret",
                        key_id=keys[0].id if keys else 0,
                        cors_origins=project.cors_origins,
                    )
                except BaseException:
                    runtime.stop()
                    raise
                self._runtime = runtime
            return self._runtime, self._key

    def send(self, events: list[bytes]) -> SendOutcome:
        """Ingest one batch and wait for its commit."""
        try:
            from closedloop.errors import ConfigError, IngestError, QueueFull, StorageUnavailable
        except ImportError as exc:
            return SendOutcome(
                kind="fatal",
                reason=f"embedded mode needs `pip install closedloop[server]` ({exc})",
            )
        try:
            runtime, key = self._open()
            result = runtime.ingestor.ingest(key, events)
        except (QueueFull, StorageUnavailable) as exc:
            return SendOutcome(kind="retry", reason=type(exc).__name__, retry_after=exc.retry_after)
        except (ConfigError, IngestError) as exc:
            return SendOutcome(kind="fatal", reason=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            return SendOutcome(kind="retry", reason=f"{type(exc).__name__}: {exc}")
        return outcome_of(
            [
                (r.status, f"{r.field}: {r.message}" if r.status == "rejected" else "")
                for r in result.results
            ]
        )

    def after_fork(self) -> None:
        """Forget the parent's runtime (its threads do not exist here); rebuilt on use."""
        runtime = self._runtime
        if runtime is not None:
            try:
                runtime.engine.dispose(close=False)  # leave the parent's connections alone
            except Exception:  # pragma: no cover - defensive
                pass
        self._runtime = None
        self._key = None
        self._lock = threading.Lock()

    def close(self) -> None:
        """Drain the write queue and close the database."""
        with self._lock:
            runtime, self._runtime = self._runtime, None
        if runtime is not None:
            runtime.stop()
