"""The parts of a running server, built from settings and wired together in one place."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine

from closedloop.act.ab import ABEvaluator
from closedloop.act.actions import ActContext, action_kinds
from closedloop.act.engine import RuleEngine
from closedloop.act.reindex import ReindexScanner
from closedloop.act.webhooks.outbox import WebhookSender
from closedloop.analyze.cluster import ClusterParams
from closedloop.analyze.drift.monitor import DriftParams
from closedloop.analyze.drift.registry import detector_factory
from closedloop.analyze.input_drift import InputDriftParams
from closedloop.analyze.job import AnalyzeParams, Analyzer
from closedloop.analyze.tracker import TrackerParams
from closedloop.embed.base import Embedder, load_embedder
from closedloop.embed.cache import EmbeddingCache
from closedloop.enrich.job import Enricher, EnrichParams, JoinStateCollector
from closedloop.enrich.measures import MeasureParams
from closedloop.enrich.redact import ProjectRedactors, load_redactors
from closedloop.enrich.sessions import SessionParams
from closedloop.errors import AuthError
from closedloop.ingest.committer import GroupCommitter
from closedloop.ingest.metrics import IngestMetrics
from closedloop.ingest.pipeline import Ingestor
from closedloop.plugins import get_plugin_manager
from closedloop.settings import Settings
from closedloop.store import migrate
from closedloop.store.db import create_engine
from closedloop.store.enforce import RetentionJob
from closedloop.store.erased import ErasedUsers
from closedloop.store.erasure import ErasureReceipt, erase_user
from closedloop.store.jobs import JobQueue
from closedloop.store.lake import manifest
from closedloop.store.lake.files import Lake
from closedloop.store.lake.tiering import Tierer
from closedloop.store.olap import Analytics
from closedloop.store.projects import Projects, hash_key
from closedloop.store.retention import Retention
from closedloop.store.vectors.index import IndexManager
from closedloop.store.vectors.job import EmbeddingJob, EmbedParams
from closedloop.types import ProjectKey
from closedloop.worker import BUILTIN_RECURRING, Recurring, Worker, builtin_handlers

__all__ = ["KeyCache", "Runtime", "tierer"]


class KeyCache:
    """Verified keys cached for ``ttl`` seconds, so a request costs no key lookup."""

    def __init__(self, projects: Projects, ttl: float) -> None:
        self.projects = projects
        self.ttl = ttl
        self._cache: dict[str, tuple[float, ProjectKey]] = {}
        self._origins: tuple[float, frozenset[str]] | None = None
        self._lock = threading.Lock()

    def cached(self, key: str) -> ProjectKey | None:
        """The verified key if it is cached and fresh; never touches the database."""
        hit = self._cache.get(hash_key(key))
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        return None

    def verify(self, key: str) -> ProjectKey:
        """The project a key opens (raises :class:`AuthError`)."""
        hit = self.cached(key)
        if hit is not None:
            return hit
        digest = hash_key(key)
        now = time.monotonic()
        verified = self.projects.verify(key)
        if self.ttl > 0:
            with self._lock:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[digest] = (now + self.ttl, verified)
        return verified

    def clear(self) -> None:
        """Forget every cached key (after a rotation or revocation in this process)."""
        with self._lock:
            self._cache.clear()
            self._origins = None

    def origins(self) -> frozenset[str]:
        """Every origin any project allows (for CORS preflights), cached for ``ttl``."""
        now = time.monotonic()
        if self._origins is not None and self._origins[0] > now:
            return self._origins[1]
        origins = frozenset(o for p in self.projects.all() for o in p.cors_origins)
        if self.ttl > 0:
            self._origins = (now + self.ttl, origins)
        return origins


def tierer(
    engine: Engine,
    lake: Lake,
    projects: Projects,
    settings: Settings,
    *,
    time_budget_seconds: float = 45.0,
) -> Tierer:
    """The tiering job, each project's hot window read from its retention."""
    return Tierer(
        engine,
        lake,
        hot_days_of=lambda project_id: Retention.stored(projects.retention(project_id)).hot_days,
        file_rows=settings.tier_file_rows,
        time_budget_seconds=time_budget_seconds,
    )


def analyze_params(settings: Settings) -> AnalyzeParams:
    """The analysis job's configuration from the settings."""
    return AnalyzeParams(
        drift=DriftParams(
            arl0=settings.drift_arl0,
            n_segments=settings.drift_streams,
            warmup=settings.drift_warmup,
            dispersion=settings.drift_dispersion,
        ),
        tracker=TrackerParams(
            cluster=ClusterParams(),
            negative_below=settings.negative_quality,
            window_days=settings.issue_window_days,
        ),
        input=InputDriftParams(alpha=settings.input_drift_alpha),
        input_every_seconds=settings.input_drift_interval_seconds,
    )


def _warm_redaction() -> None:
    from closedloop.enrich.pii import warm

    warm()


@dataclass
class Runtime:
    """Everything a server process runs; ``start()``/``stop()`` bracket its life."""

    settings: Settings
    engine: Engine
    metrics: IngestMetrics
    committer: GroupCommitter
    ingestor: Ingestor
    projects: Projects
    keys: KeyCache
    redactors: ProjectRedactors
    jobs: JobQueue
    enricher: Enricher
    lake: Lake
    indexes: IndexManager
    erased: ErasedUsers
    worker: Worker | None = None
    _worker_thread: threading.Thread | None = field(default=None, repr=False)
    _embedder: EmbeddingCache | None = field(default=None, repr=False)
    _embedder_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _embedding_job: EmbeddingJob | None = field(default=None, repr=False)
    _analyzer: Analyzer | None = field(default=None, repr=False)
    _rule_engine: RuleEngine | None = field(default=None, repr=False)
    load_plugins: bool = True

    @classmethod
    def build(cls, settings: Settings, *, load_plugins: bool = True) -> Runtime:
        """Build every part from ``settings`` (nothing starts yet)."""
        engine = create_engine(
            settings.resolved_database_url(), sqlite_synchronous=settings.sqlite_synchronous
        )
        metrics = IngestMetrics()
        committer = GroupCommitter(
            engine,
            max_queue_events=settings.write_queue_events,
            max_group_events=settings.group_commit_events,
            on_depth=metrics.queue_depth.set,
        )
        projects = Projects(engine)
        redactors = ProjectRedactors(
            projects.pii,
            ttl=settings.auth_cache_seconds,
            plugins=load_redactors(load_entrypoints=load_plugins),
        )
        erased = ErasedUsers(engine, ttl=settings.auth_cache_seconds)
        ingestor = Ingestor(committer, metrics, redactors=redactors, erased=erased)
        jobs = JobQueue(engine)
        lake = Lake.from_settings(settings)
        indexes = IndexManager(engine, settings.resolved_index_dir())
        metrics.registry.register(JoinStateCollector(engine))
        enricher = Enricher(
            engine,
            EnrichParams(
                join_wait_seconds=settings.join_wait_seconds,
                session=SessionParams(
                    measures=MeasureParams(rephrase_threshold=settings.rephrase_threshold),
                    abandon_after_seconds=settings.abandon_after_seconds,
                ),
            ),
            registry=metrics.registry,
        )
        runtime = cls(
            settings=settings,
            engine=engine,
            metrics=metrics,
            committer=committer,
            ingestor=ingestor,
            projects=projects,
            keys=KeyCache(projects, settings.auth_cache_seconds),
            redactors=redactors,
            jobs=jobs,
            enricher=enricher,
            lake=lake,
            indexes=indexes,
            erased=erased,
            load_plugins=load_plugins,
        )
        if settings.run_worker:
            runtime.worker = runtime._worker(load_plugins)
        return runtime

    def _worker(self, load_plugins: bool) -> Worker:
        """The in-process worker with every stage's job (the embedding job loads the model on
        its first run, through :meth:`embedding_job`)."""
        settings, engine = self.settings, self.engine
        handlers = builtin_handlers(engine, settings.replay_window_hours)
        handlers["enrich"] = self.enricher
        handlers["tier"] = tierer(engine, self.lake, self.projects, settings)
        handlers["retention"] = RetentionJob(engine, self.lake, self.indexes)
        handlers["analyze"] = self.analyzer()  # built now: a bad detector setting fails here
        handlers["act"] = lambda job: self.rule_engine()(job)
        handlers["webhooks"] = WebhookSender(engine, settings)
        handlers["reindex"] = ReindexScanner(engine, settings)
        handlers["ab"] = ABEvaluator(engine, settings)
        recurring = [
            *BUILTIN_RECURRING,
            Recurring(kind="enrich", every_seconds=settings.enrich_interval_seconds),
            Recurring(kind="analyze", every_seconds=settings.analyze_interval_seconds),
            Recurring(kind="act", every_seconds=settings.act_interval_seconds),
            Recurring(kind="webhooks", every_seconds=settings.webhook_interval_seconds),
            Recurring(kind="reindex", every_seconds=settings.act_interval_seconds),
            Recurring(kind="ab", every_seconds=settings.ab_interval_seconds),
            Recurring(kind="tier", every_seconds=settings.tier_interval_seconds),
            Recurring(kind="retention", every_seconds=settings.retention_interval_seconds),
        ]
        if settings.embed_in_worker:
            handlers["embed"] = lambda job: self.embedding_job()(job)
            recurring.append(Recurring(kind="embed", every_seconds=settings.embed_interval_seconds))
        for extra in get_plugin_manager(load_entrypoints=load_plugins).hook.register_job_handlers():
            handlers.update(extra)
        return Worker(
            self.jobs,
            handlers,
            recurring=tuple(recurring),
            lease_seconds=settings.job_lease_seconds,
            poll_seconds=settings.job_poll_seconds,
        )

    def embedder(self) -> Embedder:
        """The process's embedder (cached by text hash), chosen once; the model loads on first
        use."""
        with self._embedder_lock:
            if self._embedder is None:
                chosen = load_embedder(self.settings.embedder, self.settings.embed_model)
                self._embedder = EmbeddingCache(chosen, engine=self.engine)
            return self._embedder

    def embedding_job(self) -> EmbeddingJob:
        """The embedding job over this process's embedder."""
        embedder = self.embedder()
        with self._embedder_lock:
            if self._embedding_job is None:
                self._embedding_job = EmbeddingJob(
                    self.engine,
                    embedder,
                    EmbedParams(batch=self.settings.embed_batch_texts),
                    registry=self.metrics.registry,
                )
            return self._embedding_job

    def analyzer(self) -> Analyzer:
        """The analysis job (topics, issues, drift) over this process's embedder's vectors."""
        with self._embedder_lock:
            if self._analyzer is None:
                params = analyze_params(self.settings)
                self._analyzer = Analyzer(
                    self.engine,
                    lambda: self.embedder().name,
                    params,
                    detector=detector_factory(
                        self.settings.drift_detector,
                        warmup=params.drift.warmup,
                        drops=params.drift.drops,
                        dispersion=params.drift.dispersion,
                    ),
                )
            return self._analyzer

    def act_context(self) -> ActContext:
        """What actions are built with: this process's store, settings, embedder, analytics."""
        return ActContext(
            engine=self.engine,
            settings=self.settings,
            embedder=self.embedder,
            analytics=self.analytics,
        )

    def action_kinds(self) -> dict[str, Any]:
        """The action kinds by name: built in, and from plugins unless they are off."""
        return action_kinds(load_entrypoints=self.load_plugins)

    def rule_engine(self) -> RuleEngine:
        """The rules job over this process's store and actions."""
        with self._embedder_lock:
            if self._rule_engine is None:
                self._rule_engine = RuleEngine(
                    self.act_context(),
                    self.action_kinds(),
                    event_settle_seconds=self.settings.act_event_settle_seconds,
                )
            return self._rule_engine

    def analytics(self) -> Analytics:
        """SQL over both tiers of this store (:class:`~closedloop.store.olap.Analytics`)."""
        return Analytics(self.engine, self.settings.resolved_lake_url(), self.settings.lake_options)

    def erase_user(self, project_id: int, user_id: str) -> ErasureReceipt:
        """Erase one end user from every tier (see :mod:`closedloop.store.erasure`)."""
        receipt = erase_user(
            self.engine,
            self.lake,
            project_id,
            user_id,
            indexes=self.indexes,
            on_tombstone=lambda: self.erased.forget(project_id),
            # other processes see the tombstone within their cache's lifetime
            settle_seconds=self.settings.auth_cache_seconds,
        )
        self.erased.forget(project_id)
        with self._embedder_lock:
            if self._embedder is not None:  # its memory holds embeddings of the erased texts
                self._embedder.clear()
        return receipt

    def lake_summary(self, project_id: int) -> dict[str, object]:
        """Files, rows and bytes of the project's lake, per entity, and its retention."""
        with self.engine.connect() as conn:
            files = manifest.published(conn, project_id)
        entities: dict[str, dict[str, object]] = {}
        for entity in sorted({f.entity for f in files}):
            mine = [f for f in files if f.entity == entity]
            entities[entity] = {
                "files": len(mine),
                "rows": sum(f.rows for f in mine),
                "bytes": sum(f.bytes for f in mine),
                "first_day": min(f.day for f in mine).isoformat(),
                "last_day": max(f.day for f in mine).isoformat(),
            }
        policy = Retention.stored(self.projects.retention(project_id))
        return {"url": self.lake.uri(""), "entities": entities, "retention": policy.to_json()}

    def start(self) -> None:
        """Migrate (if configured), start the group committer and the in-process worker."""
        if self.settings.auto_migrate:
            migrate.upgrade(self.engine)
        self.committer.start()
        # The redactor's word lists take a second to load: in the background, so that the
        # first batches do not wait for them (and a start does not either).
        threading.Thread(target=_warm_redaction, name="closedloop-pii-warm", daemon=True).start()
        if self.worker is not None:
            self._worker_thread = self.worker.start_thread()

    def stop(self) -> None:
        """Drain the write queue, stop the worker, close the pool."""
        self.committer.stop()
        if self.worker is not None:
            self.worker.stop()
            if self._worker_thread is not None:
                self._worker_thread.join(10)
        self.indexes.save_all()
        self.engine.dispose()

    def verify(self, key: str) -> ProjectKey:
        """Verify a bearer key (cached)."""
        if not key:
            raise AuthError("send `Authorization: Bearer <key>` with a project key")
        return self.keys.verify(key)
