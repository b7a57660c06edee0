"""Signal rules: an index on the signals of one kind in arrival order, which an event rule on
a signal kind reads past its cursor on each run.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Self-contained: it does not import the application's models.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_signals_project_kind_received", "signals", ["project_id", "kind", "received_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_signals_project_kind_received", table_name="signals")
