"""SQL analytics over both tiers: one DuckDB view per entity, hot rows and lake files together.

Each query runs on a fresh in-memory DuckDB connection that holds nothing but the caller's
project. The hot rows it needs are staged as Arrow (only the columns the statement names and
only the rows of the time window, read in one snapshot with the manifest, so a row being tiered
is seen exactly once); the lake's rows are read from the Parquet files the manifest lists,
never by globbing. Remote lakes (S3 and any fsspec store) are reached through
``register_filesystem``: DuckDB extensions that download at run time are never used. Before the
statement runs the connection loses all other file access, so a query can neither read another
project's files nor write any.

>>> import sqlalchemy as sa
>>> from closedloop.store import migrate
>>> engine = sa.create_engine("sqlite://", poolclass=sa.pool.StaticPool)
>>> migrate.upgrade(engine)
>>> Analytics(engine, "/nonexistent").query("SELECT count(*) AS n FROM feedback", project_id=1)
   n
0  0
"""

from __future__ import annotations

import datetime as dt
import gc
import importlib
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import duckdb
import pyarrow as pa
import pyarrow.csv as pcsv
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from closedloop.errors import QueryError
from closedloop.store import models
from closedloop.store.db import utc
from closedloop.store.lake import layout, manifest
from closedloop.store.lake.files import Lake
from closedloop.store.lake.layout import arrow_type

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]  # no stubs installed

    from closedloop.settings import Settings

__all__ = ["VIEWS", "Analytics", "query"]

#: The views a query sees; ``sessions`` is hot only (the lake keeps no sessions).
VIEWS: tuple[str, ...] = ("interactions", "feedback", "signals", "sessions")

_TABLES: dict[str, sa.Table] = {
    "interactions": models.interactions,
    "feedback": models.feedback,
    "signals": models.signals,
    "sessions": models.sessions,
}
_TIME = {"interactions": "ts", "feedback": "ts", "signals": "ts", "sessions": "last_ts"}
# SQLite otherwise picks any index on project_id (by user, by session): scattered reads.
_SQLITE_INDEX = {
    "interactions": "ix_interactions_project_ts",
    "feedback": "ix_feedback_project_ts",
    "signals": "ix_signals_project_ts",
    "sessions": "ix_sessions_project_last_ts",
}
#: Stage PostgreSQL's hot rows through Apache Arrow ADBC (binary COPY decoded in C, Arrow out)
#: when ``adbc-driver-postgresql`` is installed; ``False`` forces the portable path (psycopg's
#: COPY). SQLite always takes the portable path: ``adbc-driver-sqlite`` links its own copy of
#: SQLite, and two copies in one process break each other's POSIX locks (opening or closing a
#: connection in one drops the WAL read locks the other holds; sqlite.org/howtocorrupt.html,
#: 2.2.1), so a checkpoint could reset the WAL under a reader of the stdlib's sqlite3.
USE_ADBC = True
_ALLOWED = (duckdb.StatementType.SELECT,)
_BATCH_ROWS = 65_536
_HELP = (
    "query the views interactions, feedback, signals (hot rows and the lake) and sessions "
    "(hot rows only) of one project with a single SELECT or WITH ... SELECT statement"
)


def _schema(view: str) -> pa.Schema:
    if view in layout.ENTITIES:
        return layout.arrow_schema(view)
    return pa.schema([pa.field(c.name, arrow_type(c)) for c in _TABLES[view].columns])


@dataclass(frozen=True, slots=True)
class _Window:
    since: dt.datetime | None
    until: dt.datetime | None

    def duck(self, column: str) -> str:
        """The window as a DuckDB predicate on ``column`` (``TRUE`` when unbounded)."""
        terms = []
        if self.since is not None:
            terms.append(f"{column} >= TIMESTAMPTZ '{self.since.isoformat()}'")
        if self.until is not None:
            terms.append(f"{column} < TIMESTAMPTZ '{self.until.isoformat()}'")
        return " AND ".join(terms) or "TRUE"


# -- which views and columns a statement needs ------------------------------------------------


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _needs(conn: duckdb.DuckDBPyConnection, sql: str) -> dict[str, tuple[str, ...]]:
    """The columns of each view ``sql`` reads: only the names it mentions, unless it asks for
    ``*``, ``COLUMNS(...)``, a natural join or a whole row (``SELECT f FROM feedback f``)."""
    everything = {v: tuple(c.name for c in _TABLES[v].columns) for v in VIEWS}
    rows = conn.sql("SELECT json_serialize_sql(?)", params=[sql]).fetchall()
    tree = json.loads(rows[0][0])
    if tree.get("error"):
        return everything
    names: set[str] = set()
    tables: dict[str, str] = {}  # alias or name -> view
    whole = False
    for node in _walk(tree):
        kind = node.get("class") or node.get("type")
        if kind == "STAR" or node.get("ref_type") == "NATURAL":
            whole = True
        elif kind == "COLUMN_REF":
            parts = [str(p).lower() for p in node.get("column_names", ())]
            names.update(parts)
            if len(parts) == 1:
                names.add("\0" + parts[0])  # a bare name may be a whole row
        elif kind == "BASE_TABLE":
            name = str(node.get("table_name", "")).lower()
            if name in everything and node.get("schema_name", "") in ("", "main"):
                tables[name] = name
                if node.get("alias"):
                    tables[str(node["alias"]).lower()] = name
        for using in node.get("using_columns", ()) or ():
            names.add(str(using).lower())
    whole = whole or any("\0" + alias in names for alias in tables)
    needed: dict[str, tuple[str, ...]] = {}
    for view in set(tables.values()):
        cols = everything[view]
        picked = cols if whole else tuple(c for c in cols if c in names)
        needed[view] = picked or ("project_id",)
    return needed


# -- staging the hot rows as Arrow ----------------------------------------------------------


@contextmanager
def _no_gc() -> Iterator[None]:
    """Millions of short-lived row tuples would trigger the cyclic collector again and again."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _sqlite_ts(values: Sequence[Any]) -> pa.Array:
    # SQLAlchemy stores UTC as naive text, 'YYYY-MM-DD HH:MM:SS.ffffff'.
    text = pa.array(values, pa.string())
    try:
        return text.cast(pa.timestamp("us")).cast(pa.timestamp("us", tz="UTC"))
    except pa.ArrowInvalid:
        pass
    try:  # every value with its offset ('+00:00')
        return text.cast(pa.timestamp("us", tz="UTC"))
    except pa.ArrowInvalid:  # some other writer, or a mix: parse one by one
        parsed = [
            None if v is None else utc(dt.datetime.fromisoformat(v)) for v in text.to_pylist()
        ]
        return pa.array(parsed, pa.timestamp("us", tz="UTC"))


def _sqlite_array(values: Sequence[Any], kind: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(kind):
        return _sqlite_ts(values)
    if pa.types.is_boolean(kind):
        return pa.array(values, pa.int8()).cast(pa.bool_())
    return pa.array(values, kind)


def _sqlite_rows(
    dbapi: Any, view: str, cols: Sequence[str], schema: pa.Schema, where: str, args: list[Any]
) -> pa.Table:
    select = ", ".join(f'"{c}"' for c in cols)
    cursor = dbapi.cursor()
    batches = []
    try:
        index = _SQLITE_INDEX[view]
        cursor.execute(f'SELECT {select} FROM "{view}" INDEXED BY {index} WHERE {where}', args)
        with _no_gc():
            while rows := cursor.fetchmany(_BATCH_ROWS):
                columns = list(zip(*rows, strict=True))
                arrays = [
                    _sqlite_array(v, schema.field(c).type)
                    for c, v in zip(cols, columns, strict=True)
                ]
                batches.append(pa.record_batch(arrays, schema=schema))
    finally:
        cursor.close()
    return pa.Table.from_batches(batches, schema=schema)


def _pg_rows(
    dbapi: Any, view: str, cols: Sequence[str], schema: pa.Schema, where: str, args: list[Any]
) -> pa.Table:
    exprs = []
    for c in cols:
        if pa.types.is_timestamp(schema.field(c).type):  # UTC text whatever the session's zone
            exprs.append(f"to_char(\"{c}\" AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')")
        else:
            exprs.append(f'"{c}"')
    statement = (
        f'COPY (SELECT {", ".join(exprs)} FROM "{view}" WHERE {where}) TO STDOUT (FORMAT CSV)'
    )
    data = bytearray()
    with dbapi.cursor() as cursor, cursor.copy(statement, args) as copy:
        for chunk in copy:
            data += chunk
    if not data:
        return schema.empty_table()
    types = {
        c: pa.timestamp("us") if pa.types.is_timestamp(f.type) else f.type
        for c, f in ((c, schema.field(c)) for c in cols)
    }
    table = pcsv.read_csv(
        pa.py_buffer(bytes(data)),
        read_options=pcsv.ReadOptions(column_names=list(cols)),
        parse_options=pcsv.ParseOptions(newlines_in_values=True),
        convert_options=pcsv.ConvertOptions(
            column_types=types,
            null_values=[""],  # NULL is unquoted and empty; an empty string is ""
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
    return table.cast(schema)


class _File(NamedTuple):
    """What a view needs of a manifest row."""

    path: str
    schema_version: int


class _Snapshot(Protocol):
    """One read snapshot of the hot store: the manifest and the hot rows as of one instant."""

    def files(self, view: str, project_id: int, window: _Window) -> list[_File]: ...

    def rows(
        self, view: str, cols: Sequence[str], schema: pa.Schema, project_id: int, window: _Window
    ) -> pa.Table: ...


def _hot_where(view: str, project_id: int, window: _Window, sqlite: bool) -> tuple[str, list[Any]]:
    column = _TIME[view]
    terms: list[str] = ["project_id = %s"]
    args: list[Any] = [project_id]
    for op, bound in ((">=", window.since), ("<", window.until)):
        if bound is not None:
            terms.append(f'"{column}" {op} %s')
            args.append(_sqlite_bound(bound) if sqlite else bound)
    where = " AND ".join(terms)
    return (where.replace("%s", "?"), args) if sqlite else (where, args)


def _sqlite_bound(bound: dt.datetime) -> str:
    # SQLite compares the stored text, written in this very format (UTC, no offset)
    return bound.strftime("%Y-%m-%d %H:%M:%S.%f")


@dataclass(slots=True)
class _PortableSnapshot:
    """The manifest through SQLAlchemy, the hot rows through the DB-API driver's cursor
    (sqlite3) or psycopg's COPY, on one connection inside one read transaction."""

    conn: sa.Connection
    sqlite: bool

    def files(self, view: str, project_id: int, window: _Window) -> list[_File]:
        found = manifest.published(
            self.conn, project_id, view, since=window.since, until=window.until
        )
        return [_File(f.path, f.schema_version) for f in found]

    def rows(
        self, view: str, cols: Sequence[str], schema: pa.Schema, project_id: int, window: _Window
    ) -> pa.Table:
        where, args = _hot_where(view, project_id, window, self.sqlite)
        read = _sqlite_rows if self.sqlite else _pg_rows
        return read(self.conn.connection.driver_connection, view, cols, schema, where, args)


@contextmanager
def _portable_snapshot(engine: Engine) -> Iterator[_Snapshot]:
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:  # one read snapshot for the manifest and the hot rows
            conn.exec_driver_sql("BEGIN")
        elif conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        try:
            yield _PortableSnapshot(conn, sqlite)
        finally:
            conn.rollback()


@dataclass(slots=True)
class _AdbcSnapshot:
    """The manifest and the hot rows through one ADBC PostgreSQL connection inside one
    ``REPEATABLE READ READ ONLY`` transaction (its snapshot is taken at the first statement).
    Statements carry no bound parameters (only ints, view names and timestamps this module
    formats), so the driver reads every result with binary ``COPY``."""

    cursor: Any

    def _where(self, project_id: int, window: _Window, since: str, until: str) -> str:
        terms = [f"project_id = {int(project_id)}"]
        if window.since is not None:
            terms.append(f'"{since}" >= TIMESTAMPTZ {_quote(window.since.isoformat())}')
        if window.until is not None:
            terms.append(f'"{until}" < TIMESTAMPTZ {_quote(window.until.isoformat())}')
        return " AND ".join(terms)

    def files(self, view: str, project_id: int, window: _Window) -> list[_File]:
        where = self._where(project_id, window, "max_ts", "min_ts")  # as manifest.published
        self.cursor.execute(
            f"SELECT path, schema_version FROM lake_files WHERE {where} "
            f"AND entity = {_quote(view)} ORDER BY day, id"
        )
        return [_File(str(path), int(version)) for path, version in self.cursor.fetchall()]

    def rows(
        self, view: str, cols: Sequence[str], schema: pa.Schema, project_id: int, window: _Window
    ) -> pa.Table:
        time = _TIME[view]
        where = self._where(project_id, window, time, time)
        select = ", ".join(f'"{c}"' for c in cols)
        self.cursor.execute(f'SELECT {select} FROM "{view}" WHERE {where}')
        table: pa.Table = self.cursor.fetch_arrow_table()
        # timestamptz arrives as timestamp[us, tz=UTC]; int4 becomes int64; the casts drop
        # the driver's field metadata
        arrays = [table.column(i).cast(schema.field(c).type) for i, c in enumerate(cols)]
        return pa.Table.from_arrays(arrays, schema=schema)


def _adbc_driver(engine: Engine) -> Any | None:
    """ADBC's PostgreSQL DB-API module, if installed and ``engine`` is on PostgreSQL."""
    if not USE_ADBC or engine.dialect.name != "postgresql":
        return None
    try:
        return importlib.import_module("adbc_driver_postgresql.dbapi")
    except ImportError:
        return None


def _libpq_uri(url: sa.URL) -> str:
    query = dict(url.query)
    query.setdefault("connect_timeout", "5")  # as create_engine gives psycopg
    plain = sa.URL.create(
        "postgresql",
        username=url.username,
        password=url.password,
        host=url.host,
        port=url.port,
        database=url.database,
        query=query,
    )
    return plain.render_as_string(hide_password=False)


@contextmanager
def _adbc_snapshot(engine: Engine, driver: Any) -> Iterator[_Snapshot]:
    conn = driver.connect(_libpq_uri(engine.url), autocommit=True)
    try:
        cursor = conn.cursor()
        try:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            yield _AdbcSnapshot(cursor)
            cursor.execute("ROLLBACK")  # after an error, closing the connection rolls back
        finally:
            cursor.close()
    finally:
        conn.close()


@contextmanager
def _snapshot(engine: Engine) -> Iterator[_Snapshot]:
    driver = _adbc_driver(engine)
    if driver is None:
        with _portable_snapshot(engine) as snapshot:
            yield snapshot
    else:
        with _adbc_snapshot(engine, driver) as snapshot:
            yield snapshot


# -- the lake --------------------------------------------------------------------------------


def _duck_paths(lake: Lake, relative: Sequence[str]) -> tuple[list[str], list[str]]:
    """The files as DuckDB reads them, and every spelling ``allowed_paths`` must list (DuckDB
    may add a slash after a remote protocol)."""
    if lake.local:
        paths = [lake.full(p) for p in relative]
        return paths, paths
    paths = [lake.uri(p) for p in relative]
    allowed = []
    for path in paths:
        protocol, rest = path.split("://", 1)
        allowed += [path, f"{protocol}://{rest.lstrip('/')}", f"{protocol}:///{rest.lstrip('/')}"]
    return paths, allowed


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class Analytics:
    """SQL over one project's hot rows and lake files, as one view per entity.

    Parameters
    ----------
    engine
        The hot store.
    lake_url
        The lake's root: a folder or an fsspec URL (``s3://bucket/prefix``).
    lake_options
        fsspec storage options of a remote lake.
    threads
        DuckDB threads per query (default: DuckDB's, one per core).
    """

    def __init__(
        self,
        engine: Engine,
        lake_url: str,
        lake_options: Mapping[str, Any] | None = None,
        *,
        threads: int | None = None,
    ) -> None:
        self.engine = engine
        self.lake_url = lake_url
        self.threads = threads
        self.lake = Lake(lake_url, lake_options)

    def query(
        self,
        sql: str,
        *,
        project_id: int,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        tables: Mapping[str, pa.Table] | None = None,
    ) -> pd.DataFrame:
        """Run one read-only statement; the result as a DataFrame (timestamps in UTC).

        ``tables`` are Arrow tables the statement may read by name beside the views (the
        caller's own data, such as topic assignments); their names must not be a view's.
        """
        with self._connect(sql, project_id, since, until, tables) as conn:
            return self._run(conn, sql, params).df()

    def arrow(
        self,
        sql: str,
        *,
        project_id: int,
        since: dt.datetime | None = None,
        until: dt.datetime | None = None,
        params: Sequence[Any] | Mapping[str, Any] | None = None,
        tables: Mapping[str, pa.Table] | None = None,
    ) -> pa.Table:
        """Run one read-only statement; the result as an Arrow table (``tables``: as in
        :meth:`query`)."""
        with self._connect(sql, project_id, since, until, tables) as conn:
            table: pa.Table = self._run(conn, sql, params).to_arrow_table()
            return table

    @staticmethod
    def _run(
        conn: duckdb.DuckDBPyConnection,
        sql: str,
        params: Sequence[Any] | Mapping[str, Any] | None,
    ) -> duckdb.DuckDBPyRelation:
        try:
            relation = conn.sql(sql, params=params)
        except duckdb.Error as exc:
            raise QueryError(f"the query failed: {exc}; {_HELP}") from exc
        if relation is None:  # pragma: no cover - only SELECT statements get here
            raise QueryError(f"the statement returned nothing; {_HELP}")
        return relation

    @contextmanager
    def _connect(
        self,
        sql: str,
        project_id: int,
        since: dt.datetime | None,
        until: dt.datetime | None,
        tables: Mapping[str, pa.Table] | None = None,
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        if not isinstance(project_id, int) or isinstance(project_id, bool):
            raise ValueError(f"project_id must be an int, not {project_id!r}")
        clash = set(tables or ()) & set(VIEWS)
        if clash:
            raise ValueError(f"tables may not shadow the views {sorted(clash)}")
        window = _Window(utc(since), utc(until))
        conn = duckdb.connect(":memory:")
        try:
            conn.execute("SET python_enable_replacements = false")
            conn.execute("SET TimeZone = 'UTC'")
            if self.threads is not None:
                conn.execute(f"SET threads = {int(self.threads)}")
            self._check(conn, sql)
            allowed = self._stage(conn, _needs(conn, sql), project_id, window)
            for name, table in (tables or {}).items():
                conn.register(name, table)
            conn.execute(f"SET allowed_paths = [{', '.join(map(_quote, allowed))}]")
            conn.execute("SET enable_external_access = false")
            conn.execute("SET lock_configuration = true")
            yield conn
        finally:
            conn.close()

    @staticmethod
    def _check(conn: duckdb.DuckDBPyConnection, sql: str) -> None:
        try:
            statements = conn.extract_statements(sql)
        except duckdb.Error as exc:
            raise QueryError(f"the query does not parse: {exc}; {_HELP}") from exc
        if len(statements) != 1:
            raise QueryError(f"send exactly one statement, not {len(statements)}; {_HELP}")
        kind = statements[0].type
        if kind not in _ALLOWED:
            name = getattr(kind, "name", str(kind))
            raise QueryError(f"only reads are allowed: {name} statements are refused; {_HELP}")

    def _stage(
        self,
        conn: duckdb.DuckDBPyConnection,
        needs: Mapping[str, Sequence[str]],
        project_id: int,
        window: _Window,
    ) -> list[str]:
        """Create the views ``needs`` names; return the files they may read."""
        staged: dict[str, tuple[pa.Table, list[_File]]] = {}
        with _snapshot(self.engine) as snapshot:
            for view, cols in needs.items():
                files: list[_File] = []
                if view in layout.ENTITIES:
                    files = snapshot.files(view, project_id, window)
                schema = _schema(view)
                schema = pa.schema([schema.field(c) for c in cols])
                staged[view] = (snapshot.rows(view, cols, schema, project_id, window), files)
        allowed: list[str] = []
        if any(files for _, files in staged.values()) and not self.lake.local:
            conn.register_filesystem(self.lake.fs)
        for view, (hot, files) in staged.items():
            cols = ", ".join(f'"{c}"' for c in hot.column_names)
            conn.register(f"_hot_{view}", hot)
            body = f"SELECT {cols} FROM _hot_{view}"
            if files:
                paths, spellings = _duck_paths(self.lake, [f.path for f in files])
                allowed += spellings
                mixed = len({f.schema_version for f in files}) > 1
                listed = ", ".join(map(_quote, paths))
                body += (
                    f" UNION ALL BY NAME SELECT {cols} FROM read_parquet([{listed}], "
                    f"union_by_name = {str(mixed).lower()}) WHERE project_id = {project_id} "
                    f"AND {window.duck(_TIME[view])}"
                )
            conn.execute(f'CREATE VIEW "{view}" AS {body}')
        return allowed


def query(
    sql: str,
    *,
    project: str | int,
    settings: Settings | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    params: Sequence[Any] | Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Run ``sql`` over a project's rows, hot and cold, and return a DataFrame.

    ``project`` is the project's name or id; ``settings`` default to the environment's.
    """
    from closedloop.settings import get_settings
    from closedloop.store.db import create_engine
    from closedloop.store.projects import Projects

    settings = settings or get_settings()
    engine = create_engine(settings.resolved_database_url())
    try:
        project_id = project if isinstance(project, int) else Projects(engine).get(project).id
        analytics = Analytics(engine, settings.resolved_lake_url(), settings.lake_options)
        return analytics.query(sql, project_id=project_id, since=since, until=until, params=params)
    finally:
        engine.dispose()
