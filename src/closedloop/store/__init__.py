"""Store: the hot relational tier (SQLite embedded, PostgreSQL in production)."""
