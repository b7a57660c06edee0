"""Where the lake keeps each entity's rows, and their Parquet schema.

Rows are partitioned by project and by the UTC day of their event time, Hive style, so any
reader (DuckDB, Spark, pandas, Polars) can prune partitions::

    <root>/<entity>/project=<id>/day=<YYYY-MM-DD>/part-<file id>.parquet

Files are written first under ``<root>/_staging/`` (a leading underscore is hidden from Hive-style
readers) and only a file listed in the manifest (:mod:`closedloop.store.lake.manifest`) holds
rows of the lake. The schema is derived from the hot tables, so a column added there reaches
the lake with the next schema version.

>>> partition_path("feedback", 7, dt.date(2026, 11, 25), "abc")
'feedback/project=7/day=2026-11-25/part-abc.parquet'
>>> arrow_schema("signals").field("ts").type
TimestampType(timestamp[us, tz=UTC])
"""

from __future__ import annotations

import datetime as dt
import functools
from typing import Any

import pyarrow as pa
import sqlalchemy as sa

from closedloop.store import models

__all__ = [
    "ENTITIES",
    "SCHEMA_VERSION",
    "arrow_schema",
    "arrow_type",
    "partition_path",
    "staging_path",
    "table_of",
]

#: The entities that move from the hot store to the lake.
ENTITIES: tuple[str, ...] = ("interactions", "feedback", "signals")

#: Bumped whenever a lake file's columns change; written into each file's metadata.
SCHEMA_VERSION = 1

_TABLES = {
    "interactions": models.interactions,
    "feedback": models.feedback,
    "signals": models.signals,
}


def table_of(entity: str) -> sa.Table:
    """The hot table of ``entity``."""
    try:
        return _TABLES[entity]
    except KeyError:
        raise ValueError(f"entity {entity!r} is not in the lake: use one of {ENTITIES}") from None


def arrow_type(column: sa.Column[Any]) -> pa.DataType:
    """The Arrow type a hot column has in the lake (and in staged hot rows)."""
    kind = column.type
    if isinstance(kind, sa.DateTime):
        return pa.timestamp("us", tz="UTC")
    if isinstance(kind, sa.Boolean):
        return pa.bool_()
    if isinstance(kind, sa.SmallInteger):
        return pa.int16()
    if isinstance(kind, sa.Integer):
        return pa.int64()
    if isinstance(kind, sa.Float):
        return pa.float64()
    if isinstance(kind, sa.String | sa.Text):
        return pa.string()
    raise TypeError(f"column {column.name} has a type the lake does not map: {kind!r}")


@functools.cache
def arrow_schema(entity: str) -> pa.Schema:
    """The Parquet schema of ``entity``: its hot table's columns, in order."""
    table = table_of(entity)
    fields = [
        pa.field(col.name, arrow_type(col), nullable=bool(col.nullable) and not col.primary_key)
        for col in table.columns
    ]
    return pa.schema(fields, metadata={"closedloop.schema_version": str(SCHEMA_VERSION)})


def partition_path(entity: str, project_id: int, day: dt.date, file_id: str) -> str:
    """The path of a published file, relative to the lake's root."""
    table_of(entity)
    return f"{entity}/project={project_id}/day={day.isoformat()}/part-{file_id}.parquet"


def staging_path(file_id: str) -> str:
    """Where a file is written before it is verified and published."""
    return f"_staging/{file_id}.parquet"
