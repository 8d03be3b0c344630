"""DuckDB destination: DuckDB reads the Parquet files itself; every pending shard (up to
``BATCH_ROWS`` rows) merges in one statement and one transaction, on one connection.

Why batches: a DuckDB commit writes the table's new row groups and its primary-key
index, so one commit per shard costs far more than the merge itself.

DuckDB's own Python connection, not SQLAlchemy: the load is a handful of SQL
statements, and SQLAlchemy with duckdb-engine costs about 0.3 s of start-up a run.
"""

from __future__ import annotations

import os

from etl.errors import LoadError, TransientLoadError
from etl.load.base import Loader, LoadUnit, quote, sql_str
from etl.load.tables import upsert_sql
from etl.schema import Schema
from etl.storage import Folder

TRANSIENT = ("could not set lock", "conflicting lock", "transactioncontext error")
FILE, RANK = "_etl_file", "_etl_rank"  # prefixed: a field may well be called "filename"


def source_sql(urls: list[str], cols: list[str], ranked: bool) -> str:
    """``read_parquet`` over ``urls``; ``ranked``: with each row's file rank (its index in
    ``urls``) and ``file_row_number``, the order in which later rows win."""
    files = ", ".join(sql_str(u) for u in urls)
    if not ranked:
        return f"read_parquet([{files}], union_by_name = true)"
    if "file_index" not in cols:  # DuckDB's virtual column: the file's index in the list
        return (f"(SELECT *, file_index AS {RANK} FROM read_parquet([{files}], "
                f"union_by_name = true, file_row_number = true)) AS _etl_source")
    # a field called file_index hides the virtual column: rank the file names instead
    ranks = ", ".join(f"({sql_str(u)}, {i})" for i, u in enumerate(urls))
    return (f"read_parquet([{files}], union_by_name = true, filename = '{FILE}', "
            f"file_row_number = true) JOIN (VALUES {ranks}) AS _etl_order({FILE}, {RANK}) "
            f"USING ({FILE})")


def duplicate_key(exc: BaseException | None) -> bool:
    """A key repeated: in a statement, or at the commit of a key added in the same
    transaction (a TransactionException)."""
    import duckdb

    return isinstance(exc, duckdb.ConstraintException) or (
        isinstance(exc, duckdb.TransactionException)
        and "constraint violation" in str(exc).lower())


class DuckDBLoader(Loader):
    """Loads into a DuckDB file on one connection of DuckDB's own, kept for the run."""

    dialect = "duckdb"

    def __init__(self, path: str, config: dict | None = None):
        self.path, self.config = path, config or {}
        if path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        # opened at first use and kept for the whole run: each open and close of the file
        # costs a checkpoint; close() releases it (and the file lock)
        self.con = None

    def where(self) -> str:
        return self.path

    def _classify(self, exc: Exception) -> LoadError:
        text = str(exc)
        if any(t in text.lower() for t in TRANSIENT):
            return TransientLoadError(text, self.where())
        return LoadError(f"{text}; fix the cause, then rerun (nothing of this transaction "
                         "was committed)", self.where())

    def _run(self, fn):
        import duckdb

        try:
            if self.con is None:
                self.con = duckdb.connect(self.path, config=self.config)
            self.con.begin()
            try:
                result = fn(self.con)
                self.con.commit()
            except BaseException:
                try:
                    self.con.rollback()
                except duckdb.Error:
                    pass  # a failed statement or commit already ended the transaction
                raise
            return result
        except duckdb.Error as exc:
            raise self._classify(exc) from exc

    def _rows(self, conn, sql: str) -> list[tuple]:
        return conn.execute(sql).fetchall()

    def _execute(self, conn, sql: str) -> None:
        conn.execute(sql)

    def close(self) -> None:
        import duckdb

        con, self.con = self.con, None
        if con is not None:
            try:
                con.close()
            except duckdb.Error as exc:
                raise self._classify(exc) from exc

    def load(self, schema: Schema, out: str, units: tuple[LoadUnit, ...]) -> int:
        folder = Folder(out)
        # units in load order, a unit's files by name: the rank later rows win by
        urls = [folder.url(folder.join(f)) for u in units for f in sorted(f for f, _ in u.files)]
        try:
            return self._run(lambda con: self._merge(con, schema, folder, urls, units, False))
        except LoadError as exc:
            if not duplicate_key(exc.__cause__):
                raise
        # a key repeats within the batch: nothing was committed; again, newest row per key
        return self._run(lambda con: self._merge(con, schema, folder, urls, units, True))

    def _merge(self, con, schema: Schema, folder: Folder, urls: list[str],
               units: tuple[LoadUnit, ...], retry: bool) -> int:
        if not folder.local:  # DuckDB reads URLs through the same fsspec filesystem
            protocol = folder.fs.protocol
            if not con.filesystem_is_registered(
                    protocol[0] if isinstance(protocol, tuple) else protocol):
                con.register_filesystem(folder.fs)
        table = quote(schema.name)
        cols = present_columns(con, urls, schema)
        (empty,) = con.execute(
            f"SELECT count(*) = 0 FROM (SELECT 1 FROM {table} LIMIT 1)").fetchone()
        # ranking rows for the newest per key costs a window over every column: only when
        # some key repeats within the batch (files are immutable: this holds). Into an empty
        # table, a plain INSERT finds out by itself (a duplicate key fails it, and load()
        # runs it again with retry set); into a non-empty one, ON CONFLICT would quietly
        # keep the first of two new rows, so ask first.
        repeats = bool(schema.key) and (retry or not empty) and con.execute(
            f"SELECT count(*) > count(DISTINCT {quote(schema.key)}) "
            f"FROM {source_sql(urls, cols, False)}").fetchone()[0]
        # into an empty table keyed as etl made it: the rows go in unkeyed, and the key's
        # index is built once over them at the end (`etl load` of the bench's 590k rows:
        # 1.15-1.23 s against 1.21-1.31 s, interleaved); a repeated key then fails the
        # commit, and load() ranks the rows as above
        rekey = bool(empty) and bool(schema.key) and keyed_as_made(con, schema)
        if rekey:  # the same columns and types, without the key
            con.execute(f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM {table} LIMIT 0")
        con.execute(upsert_sql(
            schema, cols, source_sql(urls, cols, repeats), f"{RANK}, file_row_number",
            quote, empty=bool(empty), dedupe=bool(repeats), key_order=True))
        if rekey:
            con.execute(f"ALTER TABLE {table} ADD PRIMARY KEY ({quote(schema.key)})")
        for unit in units:
            self._record(con, schema, unit)
        return sum(n for u in units for _, n in u.files)


def keyed_as_made(con, schema: Schema) -> bool:
    """The table has the constraints etl made (the key, and the key's NOT NULL) and no
    index or constraint of anyone else's, so it can be made again without losing one."""
    where = f"table_name = {sql_str(schema.name)} AND schema_name = current_schema()"
    found = sorted((kind, tuple(names)) for kind, names in con.execute(
        "SELECT constraint_type, constraint_column_names FROM duckdb_constraints() "
        f"WHERE {where}").fetchall())
    (indexes,) = con.execute(f"SELECT count(*) FROM duckdb_indexes() WHERE {where}").fetchone()
    return not indexes and found == [("NOT NULL", (schema.key,)), ("PRIMARY KEY", (schema.key,))]


def present_columns(con, urls: list[str], schema: Schema) -> list[str]:
    """The schema's fields present in any of the files (older files may lack new fields),
    in schema order: DuckDB reads the footers itself, in parallel."""
    names = {r[0] for r in con.execute(
        f"DESCRIBE SELECT * FROM read_parquet([{', '.join(sql_str(u) for u in urls)}], "
        "union_by_name = true, hive_partitioning = false)").fetchall()}
    return [f.name for f in schema.fields if f.name in names]
