"""Initial schema: projects, keys, the event id ledger, events, jobs.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Self-contained: it does not import the application's models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("cors_origins", sa.Text, nullable=False, server_default="[]"),
        sa.Column("created_at", Ts, nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column(
            "project_id",
            sa.Integer,
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("lookup", sa.String(32), nullable=False, unique=True),
        sa.Column("key_hash", sa.String(64), nullable=False),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("revoked_at", Ts, nullable=True),
    )
    op.create_table(
        "event_ids",
        sa.Column("project_id", sa.Integer, primary_key=True),
        sa.Column("event_id", sa.String(128), primary_key=True),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("received_at", Ts, nullable=False),
    )
    op.create_table(
        "interactions",
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
    )
    op.create_index("ix_interactions_project_ts", "interactions", ["project_id", "ts", "id"])
    op.create_index("ix_interactions_project_session", "interactions", ["project_id", "session_id"])
    op.create_index("ix_interactions_project_user", "interactions", ["project_id", "user_id"])
    op.create_table(
        "feedback",
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
    )
    op.create_index("ix_feedback_project_interaction", "feedback", ["project_id", "interaction_id"])
    op.create_index("ix_feedback_project_ts", "feedback", ["project_id", "ts"])
    op.create_table(
        "signals",
        sa.Column("project_id", sa.Integer, primary_key=True),
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("ts", Ts, nullable=False),
        sa.Column("received_at", Ts, nullable=False),
        sa.Column("interaction_id", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("session_id", sa.String(128)),
        sa.Column("user_id", sa.String(128)),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_index("ix_signals_project_interaction", "signals", ["project_id", "interaction_id"])
    op.create_index("ix_signals_project_ts", "signals", ["project_id", "ts"])
    op.create_table(
        "jobs",
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
    )
    op.create_index("ix_jobs_state_run_at", "jobs", ["state", "run_at"])


def downgrade() -> None:
    for table in ("jobs", "signals", "feedback", "interactions", "event_ids", "api_keys"):
        op.drop_table(table)
    op.drop_table("projects")
