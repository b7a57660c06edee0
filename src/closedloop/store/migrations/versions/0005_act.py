"""Act: rules and their firings, webhook endpoints and the delivery outbox, the review queue, the
prompt registry and its A/B tests, knowledge-base entries and re-indexing flags.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06

Self-contained: it does not import the application's models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "rules",
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
    op.create_table(
        "firings",
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
    )
    op.create_index("ix_firings_project_fired", "firings", ["project_id", "fired_at"])
    op.create_table(
        "webhook_endpoints",
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
    op.create_table(
        "webhook_deliveries",
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
    )
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries", ["state", "next_attempt_at"])
    op.create_index(
        "ix_webhook_deliveries_project", "webhook_deliveries", ["project_id", "created_at"]
    )
    op.create_table(
        "review_tasks",
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
    )
    op.create_index("ix_review_tasks_queue", "review_tasks", ["project_id", "state", "priority"])
    op.create_table(
        "prompts",
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
    op.create_table(
        "prompt_labels",
        sa.Column("project_id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("label", sa.String(32), primary_key=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("updated_at", Ts, nullable=False),
    )
    op.create_table(
        "ab_tests",
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
    )
    op.create_index("ix_ab_tests_prompt", "ab_tests", ["project_id", "prompt", "state"])
    op.create_table(
        "kb_entries",
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
    )
    op.create_index("ix_kb_entries_project", "kb_entries", ["project_id", "active"])
    op.create_table(
        "reindex_flags",
        sa.Column("project_id", sa.Integer, primary_key=True),
        sa.Column("doc_id", sa.String(256), primary_key=True),
        sa.Column("negatives", sa.Integer, nullable=False),
        sa.Column("examples", sa.Text, nullable=False, server_default="[]"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("first_flagged_at", Ts, nullable=False),
        sa.Column("last_flagged_at", Ts, nullable=False),
        sa.Column("notified_at", Ts),
    )


def downgrade() -> None:
    op.drop_table("reindex_flags")
    op.drop_index("ix_kb_entries_project", table_name="kb_entries")
    op.drop_table("kb_entries")
    op.drop_index("ix_ab_tests_prompt", table_name="ab_tests")
    op.drop_table("ab_tests")
    op.drop_table("prompt_labels")
    op.drop_table("prompts")
    op.drop_index("ix_review_tasks_queue", table_name="review_tasks")
    op.drop_table("review_tasks")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_project", table_name="webhook_deliveries")
    op.drop_table("webhook_deliveries")
    op.drop_table("webhook_endpoints")
    op.drop_index("ix_firings_project_fired", table_name="firings")
    op.drop_table("firings")
    op.drop_table("rules")
