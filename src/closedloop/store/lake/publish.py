"""Verified lake files: write a table to staging, read it back, check it, move it in place.

A file is written as Parquet with zstd compression. Its key-value metadata holds the schema
version (``closedloop.schema_version``), its row count (``closedloop.rows``) and a checksum of
its rows (``closedloop.checksum``).

The checksum
    :func:`checksum` is a SHA-256 over the table's *content*, computed from Arrow the same way
    by the writer (over the table it is about to write) and by every verifier (over the table
    read back from the file, or the rows deleted from the hot store): the column names and
    types, the row count, then for each column its validity (one byte per row) and its values
    in a canonical encoding (fixed-width values as little-endian bytes with nulls as zero;
    text as its UTF-8 byte lengths followed by the bytes). It does not depend on chunking,
    row groups, buffer layout or Parquet encoding, so it verifies what a reader will see.

>>> import pyarrow as pa
>>> a = pa.table({"x": pa.array([1, None, 3]), "s": pa.array(["a", "bc", None])})
>>> b = pa.concat_tables([a.slice(0, 1), a.slice(1)])  # other chunks, same rows
>>> checksum(a) == checksum(b), checksum(a) == checksum(a.slice(1))
(True, False)
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from closedloop.errors import LakeError
from closedloop.store.lake.files import Lake
from closedloop.store.lake.layout import SCHEMA_VERSION, staging_path

__all__ = [
    "COMPRESSION",
    "META_CHECKSUM",
    "META_ROWS",
    "META_SCHEMA_VERSION",
    "Staged",
    "checksum",
    "read_verified",
    "stage",
]

COMPRESSION = "zstd"
META_SCHEMA_VERSION = b"closedloop.schema_version"
META_ROWS = b"closedloop.rows"
META_CHECKSUM = b"closedloop.checksum"

#: Called with a step's name at fixed points (test hooks; see :mod:`.tiering`).
Hook = Callable[[str], None]


def _no_hook(step: str) -> None:
    return None


def _fixed(arr: pa.Array, dtype: str) -> bytes:
    filled = pc.fill_null(arr, pa.scalar(0, type=arr.type)) if arr.null_count else arr
    values = filled.to_numpy(zero_copy_only=False)
    return bytes(np.ascontiguousarray(values.astype(dtype, copy=False)).tobytes())


def _column_bytes(arr: pa.Array) -> list[bytes | memoryview]:
    """The canonical encoding of one column: validity, then values."""
    kind = arr.type
    valid = arr.is_valid().to_numpy(zero_copy_only=False).astype("u1").tobytes()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        filled = pc.fill_null(arr, "") if arr.null_count else arr
        width = "<i4" if pa.types.is_string(kind) else "<i8"
        offsets_buf, data_buf = filled.buffers()[1:3]
        offsets = np.frombuffer(offsets_buf, dtype=width)[
            filled.offset : filled.offset + len(filled) + 1
        ]
        if len(offsets) == 0:
            offsets = np.zeros(1, dtype=width)
        start, end = int(offsets[0]), int(offsets[-1])
        text = memoryview(data_buf)[start:end] if data_buf is not None else b""
        lengths = np.diff(offsets).astype("<i8").tobytes()
        return [valid, lengths, text]
    if pa.types.is_timestamp(kind):
        return [valid, _fixed(arr.cast(pa.int64()), "<i8")]
    if pa.types.is_boolean(kind):
        return [valid, _fixed(arr.cast(pa.uint8()), "u1")]
    if pa.types.is_integer(kind):
        return [valid, _fixed(arr.cast(pa.int64()), "<i8")]
    if pa.types.is_floating(kind):
        return [valid, _fixed(arr.cast(pa.float64()), "<f8")]
    raise LakeError(f"the lake cannot checksum a column of type {kind}")


def checksum(table: pa.Table) -> str:
    """SHA-256 (hex) of ``table``'s names, types and rows, independent of its layout."""
    h = hashlib.sha256()
    h.update(f"rows={table.num_rows}\n".encode())
    for field, column in zip(table.schema, table.columns, strict=True):
        h.update(f"{field.name}:{field.type}\n".encode())
        arr = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
        for part in _column_bytes(arr):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
    return h.hexdigest()


@dataclass(frozen=True, kw_only=True)
class Staged:
    """A verified file in staging."""

    file_id: str
    path: str
    rows: int
    bytes: int
    checksum: str


def _write(f: IO[bytes], table: pa.Table, digest: str, hook: Hook) -> None:
    metadata = dict(table.schema.metadata or {})
    metadata.update(
        {
            META_SCHEMA_VERSION: str(SCHEMA_VERSION).encode(),
            META_ROWS: str(table.num_rows).encode(),
            META_CHECKSUM: digest.encode(),
        }
    )
    schema = table.schema.with_metadata(metadata)
    half = max(1, table.num_rows // 2)
    with pq.ParquetWriter(f, schema, compression=COMPRESSION) as writer:
        # Two row groups, with the ``write`` hook between them: a crash there leaves a
        # partial file behind, as a real one would.
        writer.write_table(table.slice(0, half))
        f.flush()
        hook("write")
        if table.num_rows > half:
            writer.write_table(table.slice(half))


def read_verified(lake: Lake, path: str, *, rows: int, digest: str) -> pa.Table:
    """Read ``path`` and check its schema version, row count and checksum (metadata and
    content); raise :class:`LakeError` on any difference."""
    try:
        with lake.open(path) as f:
            table = pq.read_table(f)
    except (OSError, pa.ArrowException) as exc:
        raise LakeError(f"lake file {path} cannot be read: {exc}") from exc
    meta = table.schema.metadata or {}
    version = meta.get(META_SCHEMA_VERSION, b"").decode()
    if version != str(SCHEMA_VERSION):
        raise LakeError(f"lake file {path} has schema version {version!r}, not {SCHEMA_VERSION}")
    if table.num_rows != rows or meta.get(META_ROWS) != str(rows).encode():
        raise LakeError(f"lake file {path} holds {table.num_rows} rows, expected {rows}")
    if meta.get(META_CHECKSUM) != digest.encode():
        raise LakeError(f"lake file {path} carries another checksum than expected")
    table = table.replace_schema_metadata(None)
    if checksum(table) != digest:
        raise LakeError(f"lake file {path} does not match its checksum")
    return table


def stage(lake: Lake, table: pa.Table, *, hook: Hook = _no_hook) -> Staged:
    """Write ``table`` to a new staging file, read it back and verify it.

    Hooks: ``write`` (after the first row group is flushed), ``verify`` (the file is complete,
    not yet read back). A file that fails verification is deleted, then :class:`LakeError`
    raised."""
    file_id = uuid.uuid4().hex
    path = staging_path(file_id)
    digest = checksum(table.replace_schema_metadata(None))
    size = lake.write(path, lambda f: _write(f, table, digest, hook))
    hook("verify")
    try:
        read_verified(lake, path, rows=table.num_rows, digest=digest)
    except LakeError:
        lake.delete(path)
        raise
    return Staged(file_id=file_id, path=path, rows=table.num_rows, bytes=size, checksum=digest)
