"""Storage tiers: the lake's manifest, vectors and the embedding cache, retention per project,
erased users and the export registry.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Self-contained: it does not import the application's models.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

Ts = sa.DateTime(timezone=True)
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("retention", sa.Text, nullable=False, server_default="{}"))
    # the embedding job's steady state reads what arrived lately
    op.create_index(
        "ix_interactions_project_received", "interactions", ["project_id", "received_at"]
    )
    op.create_index("ix_feedback_project_received", "feedback", ["project_id", "received_at"])

    op.create_table(
        "lake_files",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("entity", sa.String(16), nullable=False),
        sa.Column("day", sa.Date, nullable=False),
        sa.Column("path", sa.String(512), nullable=False, unique=True),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("bytes", sa.BigInteger, nullable=False),
        sa.Column("checksum", sa.String(64), nullable=False),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("min_ts", Ts, nullable=False),
        sa.Column("max_ts", Ts, nullable=False),
        sa.Column("created_at", Ts, nullable=False),
    )
    op.create_index(
        "ix_lake_files_project_entity_day", "lake_files", ["project_id", "entity", "day"]
    )

    op.create_table(
        "vectors",
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("model", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref_id", sa.String(128), nullable=False),
        sa.Column("interaction_id", sa.String(128), nullable=False),
        sa.Column("user_id", sa.String(128)),
        sa.Column("ts", Ts, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("text_hash", sa.String(64), nullable=False),
        sa.Column("created_at", Ts, nullable=False),
        sa.UniqueConstraint("project_id", "model", "kind", "ref_id", name="uq_vectors_ref"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_vectors_project_model_seq", "vectors", ["project_id", "model", "seq"])
    op.create_index("ix_vectors_project_interaction", "vectors", ["project_id", "interaction_id"])
    op.create_index("ix_vectors_project_ts", "vectors", ["project_id", "ts"])

    op.create_table(
        "embedding_cache",
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column("text_hash", sa.String(64), primary_key=True),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("created_at", Ts, nullable=False),
    )

    op.create_table(
        "erased_users",
        sa.Column("project_id", sa.Integer, primary_key=True),
        sa.Column("user_key", sa.String(64), primary_key=True),
        sa.Column("erased_at", Ts, nullable=False),
    )

    op.create_table(
        "export_files",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("project_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("url", sa.String(1024), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
        sa.Column("created_at", Ts, nullable=False),
        sa.Column("deleted_at", Ts),
    )
    op.create_index("ix_export_files_project", "export_files", ["project_id"])
    op.create_table(
        "export_users",
        sa.Column("export_id", BigId, primary_key=True),
        sa.Column("user_key", sa.String(64), primary_key=True),
    )
    op.create_index("ix_export_users_user", "export_users", ["user_key"])


def downgrade() -> None:
    op.drop_index("ix_export_users_user", "export_users")
    op.drop_table("export_users")
    op.drop_index("ix_export_files_project", "export_files")
    op.drop_table("export_files")
    op.drop_table("erased_users")
    op.drop_table("embedding_cache")
    for name in ("ix_vectors_project_ts", "ix_vectors_project_interaction"):
        op.drop_index(name, "vectors")
    op.drop_index("ix_vectors_project_model_seq", "vectors")
    op.drop_table("vectors")
    op.drop_index("ix_lake_files_project_entity_day", "lake_files")
    op.drop_table("lake_files")
    op.drop_index("ix_feedback_project_received", "feedback")
    op.drop_index("ix_interactions_project_received", "interactions")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("retention")
