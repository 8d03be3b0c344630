"""The loader protocol, and exactly-once loading of an ingest folder into a warehouse.

Exactly once = immutable Parquet files + a durable record of the files loaded
(``_etl_loads``, written in the same transaction as their rows) + an idempotent
merge (upsert by key). A batch of shards (every pending shard, up to ``BATCH_ROWS``
rows) loads in one transaction; a crash at any moment leaves either all of a
batch's rows and its records, or neither.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass

from etl import manifest
from etl.errors import ConfigError, LoadError, TransientLoadError, UnreachableError
from etl.schema import Field, Schema
from etl.storage import Folder

DEFAULT_DB = "duckdb:///data/warehouse.duckdb"
DUCKDB_PREFIX = "duckdb:///"
LOADS_TABLE = "_etl_loads"
RETRIES = 5              # attempts for a transient failure
BACKOFF = 0.5            # seconds before the first retry; doubles each time
BATCH_ROWS = 5_000_000   # rows per transaction where shards load together: bounds the
                         # work a crash throws away and the size of one merge. Together:
                         # a DuckDB commit costs more than its merge; into an empty Postgres
                         # table a batch is one COPY and one index build (psql's COPY into
                         # the keyed table took 1.3-1.6x as long; a transaction per shard
                         # left a B-tree insert per row to every shard after the first)
RECORD_ROWS = 500        # _etl_loads rows per INSERT statement


@dataclass(frozen=True)
class LoadUnit:
    """One ingested shard's Parquet files: they load together, in one transaction."""

    shard_id: str
    shard_path: str
    token: str                         # this ingest of the shard: fingerprint + time written
    files: tuple[tuple[str, int], ...]  # (path relative to the ingest folder, rows)

    def columns(self, out: str, schema: Schema) -> list[Field]:
        """The schema's fields present in these files (older files may lack new fields)."""
        import pyarrow.parquet as pq

        folder = Folder(out)
        present: set = set()
        for rel, _ in self.files:
            present |= set(pq.read_schema(folder.join(rel), filesystem=folder.arrow_fs).names)
        return [f for f in schema.fields if f.name in present]


def unit_columns(out: str, schema: Schema, units) -> list[Field]:
    """The schema's fields present in any file of ``units``, in schema order."""
    present = {f.name for u in units for f in u.columns(out, schema)}
    return [f for f in schema.fields if f.name in present]


def batches(units: list[LoadUnit], max_rows: int) -> list[tuple[LoadUnit, ...]]:
    """Consecutive units grouped up to ``max_rows`` rows each (0: one unit per batch).

    A unit is never split, so a unit larger than ``max_rows`` is a batch of its own.
    """
    out: list[tuple[LoadUnit, ...]] = []
    group: list[LoadUnit] = []
    rows = 0
    for unit in units:
        n = sum(r for _, r in unit.files)
        if group and (max_rows <= 0 or rows + n > max_rows):
            out.append(tuple(group))
            group, rows = [], 0
        group.append(unit)
        rows += n
    if group:
        out.append(tuple(group))
    return out


def load_units(out: str) -> list[LoadUnit]:
    """Every finished shard of an ingest folder with the files it published."""
    units = []
    for rec in manifest.read_all_manifests(out):
        if rec.get("status") == "ok" and rec.get("files"):
            token = f"{rec.get('fingerprint')}@{rec.get('written_at')}"
            files = tuple((f["path"], f["rows"]) for f in rec["files"])
            units.append(LoadUnit(rec["shard_id"], rec["path"], token, files))
    return units


def quote(name: str) -> str:
    """A SQL identifier, double-quoted (DuckDB and Postgres alike)."""
    return '"' + name.replace('"', '""') + '"'


def sql_str(text: str) -> str:
    """A SQL string literal, single-quoted (DuckDB and Postgres alike)."""
    return "'" + text.replace("'", "''") + "'"


class Loader(ABC):
    """A destination: prepare the table, load units exactly once, answer counts, close.

    Subclasses set ``dialect``. ``_run`` hands its function a
    connection in one transaction: SQLAlchemy's (Postgres) or DuckDB's own (DuckDB:
    no SQLAlchemy start-up, about 0.3 s a run).
    """

    dialect = ""

    @abstractmethod
    def _run(self, fn):
        """``fn(connection)`` in one transaction; driver errors become LoadErrors."""

    @abstractmethod
    def _rows(self, conn, sql: str) -> list[tuple]:
        """The rows of one query, on a connection ``_run`` gave."""

    @abstractmethod
    def _execute(self, conn, sql: str) -> None:
        """Run one statement, on a connection ``_run`` gave."""

    def prepare(self, schema: Schema) -> None:
        """Create the table (and ``_etl_loads``) if missing; add columns the schema gained."""
        from etl.load.tables import create_or_evolve

        self._run(lambda conn: create_or_evolve(
            lambda sql: self._execute(conn, sql), lambda sql: self._rows(conn, sql),
            schema, self.dialect, quote))

    @abstractmethod
    def load(self, schema: Schema, out: str, units: tuple[LoadUnit, ...]) -> int:
        """Merge the units' rows (later units win) and record their files, in one
        transaction; return rows read."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""

    @abstractmethod
    def where(self) -> str:
        """The database for messages: host and port or file, never the password."""

    def _table_names(self, conn) -> list[str]:
        return [r[0] for r in self._rows(conn, (
            "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE' "
            "AND table_schema = current_schema()"))]

    def loaded(self, prepared: bool = False) -> set[tuple[str, str]]:
        """The (file, token) pairs already loaded (``prepared``: _etl_loads surely exists)."""
        def read(conn):
            if not prepared and LOADS_TABLE not in self._table_names(conn):
                return set()
            return {tuple(r) for r in self._rows(conn, f"SELECT file, token FROM {LOADS_TABLE}")}
        return self._run(read)

    @staticmethod
    def _record(conn, schema: Schema, unit: LoadUnit) -> None:
        """Note the unit's files in _etl_loads (inside the loading transaction).

        Multi-row INSERTs, not executemany: DuckDB runs executemany row by row.
        ``conn`` is SQLAlchemy's (``:name`` parameters) or DuckDB's own (``$name``).
        """
        alchemy = hasattr(conn, "exec_driver_sql")
        mark = ":" if alchemy else "$"
        now = dt.datetime.now(dt.timezone.utc)
        for start in range(0, len(unit.files), RECORD_ROWS):
            chunk = unit.files[start:start + RECORD_ROWS]
            values = ", ".join(f"({mark}f{i}, {mark}token, {mark}shard, {mark}dataset, "
                               f"{mark}r{i}, {mark}at)" for i in range(len(chunk)))
            params = {"token": unit.token, "shard": unit.shard_path, "dataset": schema.name,
                      "at": now}
            for i, (f, n) in enumerate(chunk):
                params[f"f{i}"], params[f"r{i}"] = f, n
            sql = (f"INSERT INTO {LOADS_TABLE} (file, token, shard, dataset, rows, loaded_at) "
                   f"VALUES {values} ON CONFLICT DO NOTHING")
            if alchemy:
                import sqlalchemy as sa
                sql = sa.text(sql)
            conn.execute(sql, params)

    def count(self, table: str) -> int:
        """Rows in one table."""
        sql = f"SELECT count(*) FROM {quote(table)}"
        return self._run(lambda conn: self._rows(conn, sql)[0][0])

    def row_counts(self) -> dict[str, int]:
        """Rows per user table."""
        def count(conn):
            return {t: self._rows(conn, f"SELECT count(*) FROM {quote(t)}")[0][0]
                    for t in self._table_names(conn) if t != LOADS_TABLE}
        return self._run(count)


def _duckdb_file(url: str) -> str | None:
    """The file of a plain ``duckdb:///path`` URL (``:memory:`` when empty), read without
    importing SQLAlchemy; None for any other URL (SQLAlchemy parses those)."""
    if not url.startswith(DUCKDB_PREFIX) or any(c in url for c in "?#%"):
        return None
    return url[len(DUCKDB_PREFIX):] or ":memory:"


def open_loader(url: str) -> Loader:
    """The loader for a SQLAlchemy URL (``duckdb:///file`` or ``postgresql+psycopg://...``)."""
    from etl.load.duckdb import DuckDBLoader

    path = _duckdb_file(url)
    if path is not None:
        return DuckDBLoader(path)
    import sqlalchemy as sa
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError) as exc:  # ValueError: a port that is no number
        raise ConfigError(f"not a database URL: {exc}; expected duckdb:///path.duckdb or "
                          "postgresql+psycopg://user@host:port/db") from None
    if parsed.get_backend_name() == "duckdb":
        return DuckDBLoader(parsed.database or ":memory:", dict(parsed.query))
    if parsed.get_backend_name() == "postgresql":
        from etl.load.postgres import PostgresLoader
        return PostgresLoader(parsed)
    raise ConfigError(f"unsupported database {parsed.get_backend_name()!r}: use duckdb:/// or "
                      "postgresql+psycopg://")


def _unmade_duckdb_file(url: str) -> str | None:
    """The path of a DuckDB URL's file when it does not exist (connecting would create it)."""
    path = _duckdb_file(url)
    if path is None:
        import sqlalchemy as sa
        try:
            parsed = sa.make_url(url)
        except (sa.exc.ArgumentError, ValueError):
            return None  # open_loader says what is wrong
        path = parsed.database if parsed.get_backend_name() == "duckdb" else None
    if not path or path == ":memory:":
        return None
    return None if os.path.exists(path) else path


def with_retries(action, what: str, retries: int = RETRIES, backoff: float = BACKOFF):
    """Run ``action()``, retrying TransientLoadError with exponential backoff."""
    for attempt in range(1, retries + 1):
        try:
            return action()
        except TransientLoadError as exc:
            if attempt == retries:
                raise LoadError(f"{what} failed {retries} times, last: {exc.message}; nothing "
                                "of it was committed: rerun to retry") from exc
            time.sleep(backoff * 2 ** (attempt - 1))


def _load_batch(loader: Loader, schema: Schema, out: str, batch: tuple[LoadUnit, ...]) -> int:
    """Load a batch in one transaction; if the database refuses it, shard by shard.

    One refused shard must not hold back the others: the fallback commits the
    shards before it and stops at it with its own error, as loading shard by
    shard would. A batch that failed only transiently (retries used up) is not redone.
    """
    what = (f"loading {batch[0].shard_path}" if len(batch) == 1
            else f"loading {len(batch)} shards ({batch[0].shard_path} ...)")
    try:
        return with_retries(lambda: loader.load(schema, out, batch), what)
    except LoadError as exc:
        if len(batch) == 1 or isinstance(exc, UnreachableError) \
                or isinstance(exc.__cause__, TransientLoadError):
            raise
    return sum(with_retries(lambda u=unit: loader.load(schema, out, (u,)),
                            f"loading {unit.shard_path}") for unit in batch)


def run_load(out: str, schema: Schema, url: str = DEFAULT_DB,
             batch_rows: int | None = None) -> dict:
    """Load every finished shard of ``out`` not loaded yet; return the load report.

    ``batch_rows``: most rows per transaction (pending shards load together up to it;
    0: one shard per transaction); None: ``BATCH_ROWS``.
    """
    start = time.monotonic()
    units = load_units(out)
    loader = open_loader(url)
    try:
        with_retries(lambda: loader.prepare(schema), "preparing the table")
        done = with_retries(lambda: loader.loaded(prepared=True), "reading _etl_loads")
        todo = [u for u in units if not all((f, u.token) in done for f, _ in u.files)]
        rows = sum(_load_batch(loader, schema, out, batch)
                   for batch in batches(todo, BATCH_ROWS if batch_rows is None
                                        else batch_rows))
        table_rows = with_retries(lambda: loader.count(schema.name), "counting rows")
    finally:
        loader.close()
    return {"database": loader.where(), "table": schema.name,
            "files_loaded": sum(len(u.files) for u in todo),
            "files_already_loaded": sum(len(u.files) for u in units) - sum(len(u.files)
                                                                          for u in todo),
            "shards_loaded": len(todo), "rows_merged": rows,
            "table_rows": table_rows, "seconds": round(time.monotonic() - start, 3)}


def status(out: str, url: str | None, pending_inputs: list[str] | None = None) -> dict:
    """Shards done / failed / pending, files loaded / pending, rows per table."""
    records = manifest.read_all_manifests(out) if os.path.isdir(out) else []
    ok = [r for r in records if r.get("status") == "ok"]
    result = {"out": out, "shards_done": len(ok),
              "shards_failed": sorted(r["path"] for r in records if r.get("status") == "failed")}
    if pending_inputs is not None:
        from etl.job import shard_is_done
        from etl.shards import find_shards
        result["shards_pending"] = [s.path for s in find_shards(pending_inputs)
                                    if not s.is_stdin and not shard_is_done(out, s)]
    unmade = _unmade_duckdb_file(url) if url else None
    if unmade:  # look, never create: nothing is loaded yet
        files = [f for u in load_units(out) for f, _ in u.files] if os.path.isdir(out) else []
        result.update(database=f"{unmade} (does not exist yet)",
                      files_loaded=0, files_pending=len(files), rows={})
    elif url:
        loader = open_loader(url)
        try:
            done = loader.loaded()
            files = [(f, u.token) for u in load_units(out) for f, _ in u.files]
            result.update(database=loader.where(),
                          files_loaded=sum(f in done for f in files),
                          files_pending=sum(f not in done for f in files),
                          rows=loader.row_counts())
        finally:
            loader.close()
    return result
