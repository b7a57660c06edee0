"""Enrichment: join state of feedback and signals, quality with the interaction, sessions,
per-project PII policy.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Self-contained: it does not import the application's models.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("pii", sa.Text, nullable=False, server_default="{}"))
        batch.add_column(sa.Column("pii_secret", sa.String(64), nullable=True))
    # Every existing project gets its own pseudonym key (new ones get one when created).
    conn = op.get_bind()
    projects = sa.table("projects", sa.column("id", sa.Integer), sa.column("pii_secret"))
    for (project_id,) in conn.execute(sa.select(projects.c.id)).all():
        conn.execute(
            projects.update()
            .where(projects.c.id == project_id)
            .values(pii_secret=secrets.token_hex(32))
        )

    with op.batch_alter_table("interactions") as batch:
        batch.add_column(sa.Column("quality", sa.Float))
        batch.add_column(sa.Column("quality_basis", sa.String(16)))
        batch.add_column(sa.Column("enrichment", sa.Text))
        batch.add_column(sa.Column("enriched_at", Ts))
    op.create_index(
        "ix_interactions_unenriched",
        "interactions",
        ["project_id", "id"],
        sqlite_where=sa.text("enriched_at IS NULL"),
        postgresql_where=sa.text("enriched_at IS NULL"),
    )
    for table in ("feedback", "signals"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("join_state", sa.String(16), nullable=False, server_default="pending")
            )
            batch.add_column(sa.Column("orphan_reason", sa.String(32)))
        op.create_index(
            f"ix_{table}_unjoined",
            table,
            ["join_state", "received_at"],
            sqlite_where=sa.text("join_state <> 'joined'"),
            postgresql_where=sa.text("join_state <> 'joined'"),
        )

    op.create_table(
        "sessions",
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
    )
    op.create_index(
        "ix_sessions_undecided",
        "sessions",
        ["last_ts"],
        sqlite_where=sa.text("abandoned IS NULL"),
        postgresql_where=sa.text("abandoned IS NULL"),
    )
    op.create_index("ix_sessions_project_last_ts", "sessions", ["project_id", "last_ts"])


def downgrade() -> None:
    op.drop_table("sessions")
    for table in ("feedback", "signals"):
        op.drop_index(f"ix_{table}_unjoined", table_name=table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("orphan_reason")
            batch.drop_column("join_state")
    op.drop_index("ix_interactions_unenriched", table_name="interactions")
    with op.batch_alter_table("interactions") as batch:
        for column in ("enriched_at", "enrichment", "quality_basis", "quality"):
            batch.drop_column(column)
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("pii_secret")
        batch.drop_column("pii")
