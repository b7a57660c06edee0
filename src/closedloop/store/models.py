"""Tables of the hot store (SQLAlchemy Core).

The migrations in ``store/migrations/versions`` create exactly these tables; a test compares
them. Filterable scalars are columns; each event's whole body is kept as JSON text in ``body``.
Timestamps are stored in UTC.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "users",
    "ui_sessions",
    "memberships",
    "login_failures",
    "ab_tests",
    "analysis_state",
    "api_keys",
    "cluster_members",
    "clusters",
    "drift_alarms",
    "drift_streams",
    "embedding_cache",
    "erased_users",
    "event_ids",
    "export_files",
    "export_users",
    "feedback",
    "firings",
    "interactions",
    "jobs",
    "kb_entries",
    "lake_files",
    "metadata",
    "projects",
    "prompt_labels",
    "prompts",
    "reindex_flags",
    "review_tasks",
    "rules",
    "sessions",
    "signals",
    "vectors",
    "webhook_deliveries",
    "webhook_endpoints",
]

metadata = sa.MetaData()

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Ts = sa.DateTime(timezone=True)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("cors_origins", sa.Text, nullable=False, server_default="[]"),
    sa.Column("created_at", Ts, nullable=False),
    # The project's PII policy (JSON of :class:`closedloop.enrich.privacy.PiiPolicy`) and the
    # key of its keyed-hash pseudonyms.
    sa.Column("pii", sa.Text, nullable=False, server_default="{}"),
    sa.Column("pii_secret", sa.String(64), nullable=True),
    # The project's retention (JSON of :class:`closedloop.store.retention.Retention`).
    sa.Column("retention", sa.Text, nullable=False, server_default="{}"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "project_id", sa.Integer, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False
    ),
    sa.Column("kind", sa.String(8), nullable=False),
    sa.Column("lookup", sa.String(32), nullable=False, unique=True),
    sa.Column("key_hash", sa.String(64), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("revoked_at", Ts, nullable=True),
)

# The id ledger: one row per accepted event id, kept for the replay window even after the
# event's row leaves the hot store. Its primary key is what makes ingest effectively-once.
event_ids = sa.Table(
    "event_ids",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("event_id", sa.String(128), primary_key=True),
    sa.Column("type", sa.String(16), nullable=False),
    sa.Column("received_at", Ts, nullable=False),
)

interactions = sa.Table(
    "interactions",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("ts", Ts, nullable=False),
    sa.Column("received_at", Ts, nullable=False),
    sa.Column("session_id", sa.String(128)),
    sa.Column("user_id", sa.String(128)),
    sa.Column("model_name", sa.String(256)),
    sa.Column("model_version", sa.String(256)),
    sa.Column("model_provider", sa.String(256)),
    sa.Column("prompt_name", sa.String(256)),
    sa.Column("prompt_version", sa.String(256)),
    sa.Column("latency_ms", sa.Float),
    sa.Column("tokens_input", sa.Integer),
    sa.Column("tokens_output", sa.Integer),
    sa.Column("cost_usd", sa.Float),
    sa.Column("body", sa.Text, nullable=False),
    # Written by the enrichment job; ``enriched_at IS NULL`` marks an interaction to (re)do.
    sa.Column("quality", sa.Float),
    sa.Column("quality_basis", sa.String(16)),
    sa.Column("enrichment", sa.Text),
    sa.Column("enriched_at", Ts),
    sa.Index("ix_interactions_project_ts", "project_id", "ts", "id"),
    sa.Index("ix_interactions_project_session", "project_id", "session_id"),
    sa.Index("ix_interactions_project_user", "project_id", "user_id"),
    # the embedding job's steady state reads what arrived lately
    sa.Index("ix_interactions_project_received", "project_id", "received_at"),
    sa.Index(
        "ix_interactions_unenriched",
        "project_id",
        "id",
        sqlite_where=sa.text("enriched_at IS NULL"),
        postgresql_where=sa.text("enriched_at IS NULL"),
    ),
)

feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("ts", Ts, nullable=False),
    sa.Column("received_at", Ts, nullable=False),
    sa.Column("interaction_id", sa.String(128), nullable=False),
    sa.Column("thumbs", sa.SmallInteger),
    sa.Column("rating", sa.Float),
    sa.Column("rating_min", sa.Float),
    sa.Column("rating_max", sa.Float),
    sa.Column("label", sa.String(256)),
    sa.Column("correction", sa.Text),
    sa.Column("comment", sa.Text),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("given_by", sa.String(128)),
    sa.Column("session_id", sa.String(128)),
    sa.Column("user_id", sa.String(128)),
    sa.Column("body", sa.Text, nullable=False),
    # pending (its interaction not seen yet), joined, or orphaned (with the reason)
    sa.Column("join_state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("orphan_reason", sa.String(32)),
    sa.Index("ix_feedback_project_interaction", "project_id", "interaction_id"),
    sa.Index("ix_feedback_project_ts", "project_id", "ts"),
    sa.Index("ix_feedback_project_received", "project_id", "received_at"),
    sa.Index(
        "ix_feedback_unjoined",
        "join_state",
        "received_at",
        sqlite_where=sa.text("join_state <> 'joined'"),
        postgresql_where=sa.text("join_state <> 'joined'"),
    ),
)

signals = sa.Table(
    "signals",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("ts", Ts, nullable=False),
    sa.Column("received_at", Ts, nullable=False),
    sa.Column("interaction_id", sa.String(128), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("session_id", sa.String(128)),
    sa.Column("user_id", sa.String(128)),
    sa.Column("body", sa.Text, nullable=False),
    # pending (its interaction not seen yet), joined, or orphaned (with the reason)
    sa.Column("join_state", sa.String(16), nullable=False, server_default="pending"),
    sa.Column("orphan_reason", sa.String(32)),
    sa.Index("ix_signals_project_interaction", "project_id", "interaction_id"),
    sa.Index("ix_signals_project_ts", "project_id", "ts"),
    # a signal rule reads one kind's signals past its cursor, in arrival order
    sa.Index("ix_signals_project_kind_received", "project_id", "kind", "received_at"),
    sa.Index(
        "ix_signals_unjoined",
        "join_state",
        "received_at",
        sqlite_where=sa.text("join_state <> 'joined'"),
        postgresql_where=sa.text("join_state <> 'joined'"),
    ),
)

# Session aggregates, kept by the enrichment job.
sessions = sa.Table(
    "sessions",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("session_id", sa.String(128), primary_key=True),
    sa.Column("user_id", sa.String(128)),
    sa.Column("first_ts", Ts, nullable=False),
    sa.Column("last_ts", Ts, nullable=False),
    sa.Column("turns", sa.Integer, nullable=False),
    sa.Column("feedback_count", sa.Integer, nullable=False),
    sa.Column("signal_count", sa.Integer, nullable=False),
    sa.Column("last_interaction_id", sa.String(128), nullable=False),
    sa.Column("abandoned", sa.Boolean),
    sa.Column("abandon_source", sa.String(16)),
    sa.Column("mean_quality", sa.Float),
    sa.Column("updated_at", Ts, nullable=False),
    sa.Index(
        "ix_sessions_undecided",
        "last_ts",
        sqlite_where=sa.text("abandoned IS NULL"),
        postgresql_where=sa.text("abandoned IS NULL"),
    ),
    sa.Index("ix_sessions_project_last_ts", "project_id", "last_ts"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("project_id", sa.Integer),
    sa.Column("payload", sa.Text, nullable=False, server_default="{}"),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_attempts", sa.Integer, nullable=False, server_default="5"),
    sa.Column("run_at", Ts, nullable=False),
    sa.Column("lease_until", Ts),
    sa.Column("leased_by", sa.String(128)),
    sa.Column("last_error", sa.Text),
    sa.Column("unique_key", sa.String(255), unique=True),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("finished_at", Ts),
    sa.Index("ix_jobs_state_run_at", "state", "run_at"),
)


# The lake's manifest: one row per published Parquet file. A file is part of the lake exactly
# when its row is here; the row is inserted in the same transaction that deletes the file's
# rows from the hot tables, so every row is in one tier or the other, never both or neither.
lake_files = sa.Table(
    "lake_files",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("entity", sa.String(16), nullable=False),
    sa.Column("day", sa.Date, nullable=False),
    # relative to the lake's root URL, so a lake can be moved or mounted elsewhere
    sa.Column("path", sa.String(512), nullable=False, unique=True),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("bytes", sa.BigInteger, nullable=False),
    sa.Column("checksum", sa.String(64), nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("min_ts", Ts, nullable=False),
    sa.Column("max_ts", Ts, nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Index("ix_lake_files_project_entity_day", "project_id", "entity", "day"),
)

# Embeddings of stored text (interaction inputs, corrections, comments), beside the hot rows.
# ``seq`` is the key in the approximate-nearest-neighbour index.
vectors = sa.Table(
    "vectors",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    # input (of an interaction), correction or comment (of feedback)
    sa.Column("kind", sa.String(16), nullable=False),
    # the interaction's id for an input, the feedback's id for a correction or comment
    sa.Column("ref_id", sa.String(128), nullable=False),
    sa.Column("interaction_id", sa.String(128), nullable=False),
    sa.Column("user_id", sa.String(128)),
    sa.Column("ts", Ts, nullable=False),
    sa.Column("dim", sa.Integer, nullable=False),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("text_hash", sa.String(64), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.UniqueConstraint("project_id", "model", "kind", "ref_id", name="uq_vectors_ref"),
    sa.Index("ix_vectors_project_model_seq", "project_id", "model", "seq"),
    sa.Index("ix_vectors_project_interaction", "project_id", "interaction_id"),
    sa.Index("ix_vectors_project_ts", "project_id", "ts"),
    # never reuse a deleted seq: the indexes follow the table by seq
    sqlite_autoincrement=True,
)

# Embeddings by the hash of their text and the model that made them: a text is embedded once.
embedding_cache = sa.Table(
    "embedding_cache",
    metadata,
    sa.Column("model", sa.String(128), primary_key=True),
    sa.Column("text_hash", sa.String(64), primary_key=True),
    sa.Column("vector", sa.LargeBinary, nullable=False),
    sa.Column("created_at", Ts, nullable=False),
)

# Erased end users, by a keyed hash of their stored id (never the id itself): events for them
# that arrive later are refused or dropped, as the project's retention says.
erased_users = sa.Table(
    "erased_users",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("user_key", sa.String(64), primary_key=True),
    sa.Column("erased_at", Ts, nullable=False),
)

# Files exported from the store (training sets, datasets) and, by keyed hash, whose rows each
# holds: erasure removes the files that held an erased user.
export_files = sa.Table(
    "export_files",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("url", sa.String(1024), nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("deleted_at", Ts),
    sa.Index("ix_export_files_project", "project_id"),
)

export_users = sa.Table(
    "export_users",
    metadata,
    sa.Column("export_id", BigId, primary_key=True),
    sa.Column("user_key", sa.String(64), primary_key=True),
    sa.Index("ix_export_users_user", "user_key"),
)

# -- analysis (migration 0004) ----------------------------------------------------------------

# Topics (kind ``topic``: every interaction's input) and issues (kind ``issue``: interactions
# with negative feedback), clustered incrementally; an id is never reused within a project and
# kind. ``state``: topics are ``open``; issues ``open``, ``growing`` or ``resolved``.
clusters = sa.Table(
    "clusters",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("keywords", sa.Text, nullable=False, server_default="[]"),
    sa.Column("examples", sa.Text, nullable=False, server_default="[]"),
    sa.Column("centroid", sa.LargeBinary, nullable=False),
    sa.Column("size", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("stats", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    sa.Column("last_seen_at", Ts, nullable=False),
)

# One row per clustered interaction and kind; ``cluster_id`` NULL while it waits in the pool of
# inputs no cluster has taken yet.
cluster_members = sa.Table(
    "cluster_members",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column("ref_id", sa.String(128), primary_key=True),
    sa.Column("cluster_id", sa.Integer),
    sa.Column("similarity", sa.Float),
    sa.Column("severity", sa.Float, nullable=False, server_default="1"),
    sa.Column("ts", Ts, nullable=False),
    sa.Column("assigned_at", Ts, nullable=False),
    sa.Index("ix_cluster_members_cluster", "project_id", "kind", "cluster_id", "ts"),
)

# The state of each quality-drift detector (one per segment and measure), between job runs.
drift_streams = sa.Table(
    "drift_streams",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("segment", sa.String(600), primary_key=True),
    sa.Column("measure", sa.String(32), primary_key=True),
    sa.Column("detector", sa.String(64), nullable=False),
    sa.Column("state", sa.LargeBinary, nullable=False),
    sa.Column("observations", sa.BigInteger, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
)

# Alarms: quality (a detector's change), input (embeddings), topic_mix and emerging.
drift_alarms = sa.Table(
    "drift_alarms",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("segment", sa.String(600), nullable=False),
    sa.Column("measure", sa.String(32), nullable=False),
    sa.Column("since", Ts, nullable=False),
    sa.Column("detected_at", Ts, nullable=False),
    sa.Column("before", sa.Text, nullable=False, server_default="{}"),
    sa.Column("after", sa.Text, nullable=False, server_default="{}"),
    sa.Column("details", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", Ts, nullable=False),
    sa.UniqueConstraint(
        "project_id", "kind", "segment", "measure", "since", name="uq_drift_alarms_change"
    ),
    sa.Index("ix_drift_alarms_project_detected", "project_id", "detected_at"),
)

# Watermarks and small state of the analysis job, per project.
analysis_state = sa.Table(
    "analysis_state",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
)

# -- act (migration 0005) ---------------------------------------------------------------------

# Rules (``spec``: the validated rule as JSON; ``state``: the rule's cursor and cooldowns) and
# their firings, each with a snapshot of its trigger, the metric before it (``baseline``) and
# its actions' results; ``dedup_key`` makes a trigger fire a rule once.
rules = sa.Table(
    "rules",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("source", sa.String(8), nullable=False, server_default="api"),
    sa.Column("state", sa.Text, nullable=False, server_default="{}"),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    sa.UniqueConstraint("project_id", "name", name="uq_rules_name"),
)

firings = sa.Table(
    "firings",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("rule_id", sa.Integer, nullable=False),
    sa.Column("rule_name", sa.String(128), nullable=False),
    sa.Column("dedup_key", sa.String(600), nullable=False),
    sa.Column("segment", sa.String(600), nullable=False),
    sa.Column("fired_at", Ts, nullable=False),
    sa.Column("dry_run", sa.Boolean, nullable=False),
    sa.Column("trigger", sa.Text, nullable=False, server_default="{}"),
    sa.Column("baseline", sa.Text, nullable=False, server_default="{}"),
    sa.Column("actions", sa.Text, nullable=False, server_default="[]"),
    sa.UniqueConstraint("project_id", "rule_id", "dedup_key", name="uq_firings_dedup"),
    sa.Index("ix_firings_project_fired", "project_id", "fired_at"),
)

# Signed webhooks: endpoints (their Standard Webhooks secret) and the durable outbox.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("secret", sa.String(128), nullable=False),
    sa.Column("format", sa.String(16), nullable=False, server_default="standard"),
    sa.Column("allow_private", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("enabled", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("created_at", Ts, nullable=False),
    sa.UniqueConstraint("project_id", "name", name="uq_webhook_endpoints_name"),
)

webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("endpoint_id", sa.Integer, nullable=False),
    sa.Column("msg_id", sa.String(64), nullable=False, unique=True),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("next_attempt_at", Ts, nullable=False),
    sa.Column("lease_until", Ts),
    sa.Column("last_status", sa.Integer),
    sa.Column("last_error", sa.Text),
    sa.Column("firing_id", BigId),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("delivered_at", Ts),
    sa.Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_project", "project_id", "created_at"),
)

# The human review queue; an answer becomes reviewer feedback (``feedback_id``).
review_tasks = sa.Table(
    "review_tasks",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("interaction_id", sa.String(128)),
    sa.Column("firing_id", BigId),
    sa.Column("priority", sa.Integer, nullable=False, server_default="0"),
    sa.Column("assignee", sa.String(128)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("answer", sa.Text),
    sa.Column("answered_by", sa.String(128)),
    sa.Column("feedback_id", sa.String(128)),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    sa.Column("answered_at", Ts),
    sa.Index("ix_review_tasks_queue", "project_id", "state", "priority"),
)

# The prompt registry: versions, labels (``production``, ``candidate``) and A/B tests.
prompts = sa.Table(
    "prompts",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("template", sa.Text, nullable=False),
    sa.Column("examples", sa.Text, nullable=False, server_default="[]"),
    sa.Column("config", sa.Text, nullable=False, server_default="{}"),
    sa.Column("source", sa.String(16), nullable=False, server_default="manual"),
    sa.Column("parent_version", sa.Integer),
    sa.Column("firing_id", BigId),
    sa.Column("created_at", Ts, nullable=False),
)

prompt_labels = sa.Table(
    "prompt_labels",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("label", sa.String(32), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
)

ab_tests = sa.Table(
    "ab_tests",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("prompt", sa.String(128), nullable=False),
    sa.Column("control_version", sa.Integer, nullable=False),
    sa.Column("candidate_version", sa.Integer, nullable=False),
    sa.Column("share", sa.Float, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("params", sa.Text, nullable=False, server_default="{}"),
    sa.Column("evidence", sa.Text, nullable=False, server_default="{}"),
    sa.Column("firing_id", BigId),
    sa.Column("started_at", Ts, nullable=False),
    sa.Column("ended_at", Ts),
    sa.Index("ix_ab_tests_prompt", "project_id", "prompt", "state"),
)

# Knowledge-base entries (from corrections or by hand) and documents flagged for re-indexing.
kb_entries = sa.Table(
    "kb_entries",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("project_id", sa.Integer, nullable=False),
    sa.Column("query", sa.Text, nullable=False),
    sa.Column("answer", sa.Text, nullable=False),
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("interaction_id", sa.String(128)),
    sa.Column("feedback_id", sa.String(128)),
    sa.Column("user_key", sa.String(64)),
    sa.Column("model", sa.String(128)),
    sa.Column("vector", sa.LargeBinary),
    sa.Column("active", sa.Boolean, nullable=False, server_default=sa.true()),
    sa.Column("firing_id", BigId),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("updated_at", Ts, nullable=False),
    sa.UniqueConstraint("project_id", "feedback_id", name="uq_kb_entries_feedback"),
    sa.Index("ix_kb_entries_project", "project_id", "active"),
)

reindex_flags = sa.Table(
    "reindex_flags",
    metadata,
    sa.Column("project_id", sa.Integer, primary_key=True),
    sa.Column("doc_id", sa.String(256), primary_key=True),
    sa.Column("negatives", sa.Integer, nullable=False),
    sa.Column("examples", sa.Text, nullable=False, server_default="[]"),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("first_flagged_at", Ts, nullable=False),
    sa.Column("last_flagged_at", Ts, nullable=False),
    sa.Column("notified_at", Ts),
)

# Dashboard users, their role in each project, their sessions, and failed sign-ins per account
# and per address (the login rate limit holds across processes and restarts).
users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("email", sa.String(254), nullable=False, unique=True),
    sa.Column("password_hash", sa.Text, nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("disabled_at", Ts),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column(
        "user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    ),
    sa.Column(
        "project_id",
        sa.Integer,
        sa.ForeignKey("projects.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
)

ui_sessions = sa.Table(
    "ui_sessions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("user_id", sa.Integer, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    sa.Column("csrf", sa.String(64), nullable=False),
    sa.Column("created_at", Ts, nullable=False),
    sa.Column("expires_at", Ts, nullable=False),
    sa.Index("ix_ui_sessions_user", "user_id"),
)

login_failures = sa.Table(
    "login_failures",
    metadata,
    sa.Column("bucket", sa.String(320), primary_key=True),
    sa.Column("window_start", Ts, nullable=False),
    sa.Column("failures", sa.Integer, nullable=False),
)
