"""The 0007 migration, on SQLite and PostgreSQL: it adds the index of the signals of one kind
in arrival order, and its downgrade removes it."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command

from closedloop.store import migrate
from closedloop.store.db import create_engine

INDEX = "ix_signals_project_kind_received"


def _signal_indexes(engine: sa.Engine) -> dict[str, list[str | None]]:
    return {ix["name"]: ix["column_names"] for ix in sa.inspect(engine).get_indexes("signals")}


def test_migration_0007_adds_the_signals_kind_index_and_its_downgrade_drops_it(
    database_url: str,
) -> None:
    engine = create_engine(database_url)
    try:
        migrate.upgrade(engine, "0006")
        assert INDEX not in _signal_indexes(engine)
        migrate.upgrade(engine)
        assert _signal_indexes(engine)[INDEX] == ["project_id", "kind", "received_at"]
        cfg = migrate.alembic_config()
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0006")
        assert INDEX not in _signal_indexes(engine)
        assert "ix_signals_project_ts" in _signal_indexes(engine)  # the others stay
        with engine.connect() as conn:
            version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        assert version == "0006"
        migrate.upgrade(engine)  # and up again
        assert INDEX in _signal_indexes(engine)
    finally:
        engine.dispose()
