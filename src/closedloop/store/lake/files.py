"""The lake's storage: a root URL and its fsspec filesystem.

Paths given to :class:`Lake` are relative to its root (``feedback/project=7/day=.../x.parquet``),
as the manifest stores them, so a lake can be moved or mounted elsewhere. A local folder is the
default (created if missing); any fsspec URL works, e.g. ``s3://bucket/prefix`` with the s3
extra installed.

On a local folder a written file is flushed to disk (``fsync``) and a move is an atomic
``rename`` followed by an ``fsync`` of the folders, so a file the manifest lists survives a
power loss. On object stores a write is one upload and a move is a copy then a delete.

>>> import tempfile
>>> lake = Lake(tempfile.mkdtemp())
>>> lake.write("a/b.txt", lambda f: f.write(b"hi"))
2
>>> lake.move("a/b.txt", "c/d.txt")
>>> lake.list()
['c/d.txt']
>>> lake.delete("c/d.txt"), lake.delete("c/d.txt")
(True, False)
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
from collections.abc import Callable, Iterator, Mapping
from typing import IO, TYPE_CHECKING, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from closedloop.errors import ConfigError

if TYPE_CHECKING:
    from closedloop.settings import Settings

__all__ = ["Lake"]


class Lake:
    """The files of the lake under one root.

    Parameters
    ----------
    url
        A local folder (or ``file://`` URL) or any fsspec URL such as ``s3://bucket/prefix``.
    options
        fsspec storage options (credentials, ``client_kwargs``, ...).
    """

    def __init__(self, url: str, options: Mapping[str, Any] | None = None) -> None:
        self.url = url
        self.options = dict(options or {})
        try:
            fs, root = fsspec.core.url_to_fs(url, **self.options)
        except (ImportError, ValueError) as exc:
            raise ConfigError(
                f"lake_url {url!r} cannot be opened: {exc} (s3:// needs `pip install "
                "closedloop[s3]`; check CLOSEDLOOP_LAKE_URL and CLOSEDLOOP_LAKE_OPTIONS)"
            ) from exc
        self.fs: Any = fs
        self.root: str = str(root).rstrip("/")
        self.local = isinstance(fs, LocalFileSystem)
        if self.local:
            os.makedirs(self.root, exist_ok=True)

    @classmethod
    def from_settings(cls, settings: Settings) -> Lake:
        """The lake that ``settings`` name (``lake_url``, ``lake_options``)."""
        return cls(settings.resolved_lake_url(), settings.lake_options)

    def __repr__(self) -> str:
        return f"Lake({self.url!r})"

    # -- paths -------------------------------------------------------------------------------

    def full(self, path: str) -> str:
        """The filesystem path of ``path`` (relative to the root)."""
        path = path.strip("/")
        return f"{self.root}/{path}" if path else self.root

    def uri(self, path: str) -> str:
        """A URL of ``path`` that other readers understand (``s3://...``, ``file://...``)."""
        return str(self.fs.unstrip_protocol(self.full(path)))

    # -- files -------------------------------------------------------------------------------

    def write(self, path: str, writer: Callable[[IO[bytes]], object]) -> int:
        """Create ``path`` with what ``writer`` writes into the open file; returns its size.

        A local file is fsynced before this returns."""
        full = self.full(path)
        if self.local:
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "wb") as f:
                writer(f)
                f.flush()
                os.fsync(f.fileno())
                return f.tell()
        with self.fs.open(full, "wb") as f:
            writer(f)
            return int(f.tell())

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[IO[bytes]]:
        """``path`` opened for reading (binary)."""
        with self.fs.open(self.full(path), "rb") as f:
            yield f

    def size(self, path: str) -> int:
        """The size of ``path`` in bytes."""
        return int(self.fs.size(self.full(path)))

    def exists(self, path: str) -> bool:
        """Whether ``path`` exists."""
        if not self.local:
            self.fs.invalidate_cache()
        return bool(self.fs.exists(self.full(path)))

    def modified(self, path: str) -> dt.datetime | None:
        """When ``path`` was last written (UTC), if the store says."""
        info = self.fs.info(self.full(path))
        value = info.get("mtime", info.get("LastModified"))
        if isinstance(value, int | float):
            return dt.datetime.fromtimestamp(value, dt.UTC)
        if isinstance(value, dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        return None

    def move(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` (a local rename is atomic; an object store copies, then
        deletes)."""
        a, b = self.full(src), self.full(dst)
        if self.local:
            os.makedirs(os.path.dirname(b), exist_ok=True)
            os.replace(a, b)
            for folder in {os.path.dirname(a), os.path.dirname(b)}:
                _fsync_dir(folder)
        else:
            self.fs.mv(a, b)

    def delete(self, path: str) -> bool:
        """Delete ``path``; returns whether it existed."""
        try:
            self.fs.rm_file(self.full(path))
        except FileNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Every file under ``prefix``, as paths relative to the root, sorted."""
        if not self.local:
            self.fs.invalidate_cache()
        base = self.full(prefix)
        try:
            found = self.fs.find(base, withdirs=False)
        except FileNotFoundError:
            return []
        cut = len(self.root) + 1
        return sorted(str(p)[cut:] for p in found if str(p).startswith(self.root + "/"))


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows: folders cannot be opened
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
