"""Analysis: topics and issues (clusters and their members), drift streams and alarms, and the
analysis job's watermarks.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Self-contained: it does not import the application's models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "clusters",
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
    op.create_table(
        "cluster_members",
        sa.Column("project_id", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(8), primary_key=True),
        sa.Column("ref_id", sa.String(128), primary_key=True),
        sa.Column("cluster_id", sa.Integer),
        sa.Column("similarity", sa.Float),
        sa.Column("severity", sa.Float, nullable=False, server_default="1"),
        sa.Column("ts", Ts, nullable=False),
        sa.Column("assigned_at", Ts, nullable=False),
    )
    op.create_index(
        "ix_cluster_members_cluster", "cluster_members", ["project_id", "kind", "cluster_id", "ts"]
    )
    op.create_table(
        "drift_streams",
        sa.Column("project_id", sa.Integer, primary_key=True),
        sa.Column("segment", sa.String(600), primary_key=True),
        sa.Column("measure", sa.String(32), primary_key=True),
        sa.Column("detector", sa.String(64), nullable=False),
        sa.Column("state", sa.LargeBinary, nullable=False),
        sa.Column("observations", sa.BigInteger, nullable=False),
        sa.Column("updated_at", Ts, nullable=False),
    )
    op.create_table(
        "drift_alarms",
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
    )
    op.create_index(
        "ix_drift_alarms_project_detected", "drift_alarms", ["project_id", "detected_at"]
    )
    op.create_table(
        "analysis_state",
        sa.Column("project_id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.Column("updated_at", Ts, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("analysis_state")
    op.drop_index("ix_drift_alarms_project_detected", table_name="drift_alarms")
    op.drop_table("drift_alarms")
    op.drop_table("drift_streams")
    op.drop_index("ix_cluster_members_cluster", table_name="cluster_members")
    op.drop_table("cluster_members")
    op.drop_table("clusters")
