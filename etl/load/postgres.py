"""Postgres destination: COPY straight into the table when a batch's rows are all new,
else COPY into a temporary staging table, then one INSERT ... ON CONFLICT.

Pending shards load together, up to ``BATCH_ROWS`` rows per transaction (as on
DuckDB). Most shards bring keys the table has never seen; for them the merge is a
plain COPY into the table, half the server's work of staging and merging. Whether
the keys are new is found by trying: the COPY runs inside a savepoint, and the first
key already in the table or repeated within the batch (a unique violation) rolls it
back and takes the staging path instead. A failed COPY still reads the whole batch, so
a batch whose first keys are already in the table (a shard ingested again) is staged
at once.

The password comes from the URL, ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads
the last two itself) and is never printed: messages name host, port and database.
"""

from __future__ import annotations

import io

import psycopg
import psycopg.errors
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa
from psycopg.copy import QueuedLibpqWriter

from etl.errors import LoadError, TransientLoadError, UnreachableError
from etl.load.base import Loader, LoadUnit, quote, unit_columns
from etl.load.tables import upsert_sql
from etl.schema import Schema
from etl.storage import Folder

COPY_BATCH_ROWS = 65_536        # Parquet rows turned into CSV and sent per COPY write
PROBE_KEYS = 10_000             # a shard's first keys looked up before COPYing it straight in
CONNECT_TIMEOUT = 10            # seconds
# SQLSTATE classes worth a retry: connection exceptions, serialization failure, deadlock
TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "57P01", "57P02", "57P03")
STAGE = "_etl_stage"
SEQ = "_etl_seq"  # the stage's row order column (prefixed: a field may be called _seq)


def _pg_array(values) -> str | None:
    if values is None:
        return None
    items = ("NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
             for v in values)
    return "{" + ",".join(items) + "}"


def csv_bytes(batch: pa.RecordBatch, seq_start: int | None) -> bytes:
    """A record batch as COPY CSV (null unquoted-empty, empty string quoted), with a SEQ
    column numbering rows from ``seq_start`` unless that is None.

    Timestamps are written as UTC wall-clock time without a zone (Arrow writes zoned ones
    about 15 times slower, most of the whole conversion): COPY them with TimeZone UTC.
    """
    cols, names = [], []
    for name, col in zip(batch.schema.names, batch.columns):
        if pa.types.is_list(col.type):
            col = pa.array([_pg_array(v) for v in col.to_pylist()], pa.string())
        # Postgres text cannot hold NUL (documented rule); looking costs a quarter of replacing
        if pa.types.is_string(col.type) and pc.any(pc.match_substring(col, "\x00")).as_py():
            col = pc.replace_substring(col, "\x00", "\ufffd")
        if pa.types.is_timestamp(col.type) and col.type.tz is not None:
            col = col.cast(pa.timestamp(col.type.unit))  # the same instants, stored as UTC
        cols.append(col)
        names.append(name)
    if seq_start is not None:
        cols.append(pa.array(range(seq_start, seq_start + batch.num_rows), pa.int64()))
        names.append(SEQ)
    buf = io.BytesIO()
    pacsv.write_csv(pa.Table.from_arrays(cols, names=names), buf,
                    pacsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buf.getvalue()


class PostgresLoader(Loader):
    """Loads into Postgres through SQLAlchemy with psycopg 3."""

    dialect = "postgresql"

    def __init__(self, url: sa.URL):
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        self.url = url
        self.engine = sa.create_engine(
            url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT})
        self.reached = False  # once connected, losing the server mid-load is worth retrying
        sa.event.listen(self.engine, "connect", lambda *_: setattr(self, "reached", True))

    def _classify(self, exc: sa.exc.DBAPIError) -> LoadError:
        state = getattr(exc.orig, "sqlstate", None) or ""
        raw = str(exc.orig).strip()
        text = raw.splitlines()[0] if raw else repr(exc.orig)
        # a connection lost mid-load is invalidated; one never made is not
        if exc.connection_invalidated or state.startswith(TRANSIENT_SQLSTATES):
            return TransientLoadError(text, self.where())
        if not state and isinstance(exc, sa.exc.OperationalError) and self.reached:
            return TransientLoadError(f"lost PostgreSQL at {self.where()}: {text}", self.where())
        if not state and isinstance(exc, sa.exc.OperationalError):  # could not connect at all
            return UnreachableError(f"cannot reach PostgreSQL at {self.where()}: {text}; is the "
                                    "server running and the URL right?", self.where())
        return LoadError(f"{text}; fix the cause, then rerun (nothing of this transaction was "
                         "committed)", self.where())

    def where(self) -> str:
        u = self.url
        return f"{u.host}:{u.port or 5432}/{u.database}" if u.host else str(u.database)

    def _run(self, fn):
        try:
            with self.engine.begin() as conn:
                return fn(conn)
        except sa.exc.DBAPIError as exc:
            raise self._classify(exc) from exc

    def _rows(self, conn, sql: str) -> list[tuple]:
        return [tuple(r) for r in conn.execute(sa.text(sql))]

    def _execute(self, conn, sql: str) -> None:
        conn.execute(sa.text(sql))

    def close(self) -> None:
        self.engine.dispose()

    def load(self, schema: Schema, out: str, units: tuple[LoadUnit, ...]) -> int:
        cols = [f.name for f in unit_columns(out, schema, units)]

        def merge(conn):
            try:
                rows = None if schema.key and _first_keys_there(conn, schema, out, units) \
                    else self._copy_new_rows(conn, schema, out, units, cols)
                if rows is None:
                    rows = self._stage_and_merge(conn, schema, out, units, cols)
            except psycopg.Error as exc:  # the raw cursor's errors, wrapped as SQLAlchemy would
                raw = conn.connection.driver_connection
                raise sa.exc.DBAPIError.instance(
                    "COPY", None, exc, psycopg.Error,
                    connection_invalidated=raw.closed or raw.broken) from exc
            for unit in units:
                self._record(conn, schema, unit)
            return rows
        return self._run(merge)

    def _copy_new_rows(self, conn, schema: Schema, out: str, units, cols: list[str]):
        """COPY straight into the table in a savepoint; None (rolled back) if a key is there.

        Into an empty table the primary key is dropped for the COPY and added back after
        it, in the same savepoint: one sorted index build instead of a B-tree insert per
        row (COPY into a keyed table took 2.5-3 times as long). Adding it back checks
        every key once, so a repeated key still rolls back to the staging path.
        """
        table = quote(schema.name)
        savepoint = conn.begin_nested()
        cursor = conn.connection.driver_connection.cursor()
        try:
            key = _droppable_primary_key(cursor, table)
            if key:
                cursor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {quote(key[0])}")
            rows = self._copy(conn, out, units, cols, table, False)
            if key:
                cursor.execute(f"ALTER TABLE {table} ADD CONSTRAINT {quote(key[0])} {key[1]}")
        except psycopg.errors.UniqueViolation:
            savepoint.rollback()
            return None
        savepoint.commit()
        return rows

    def _stage_and_merge(self, conn, schema: Schema, out: str, units, cols: list[str]) -> int:
        names = ", ".join(quote(c) for c in cols)
        conn.execute(sa.text(f"CREATE TEMP TABLE {STAGE} ON COMMIT DROP AS SELECT {names} "
                             f"FROM {quote(schema.name)} WITH NO DATA"))
        conn.execute(sa.text(f"ALTER TABLE {STAGE} ADD COLUMN {SEQ} bigint"))
        rows = self._copy(conn, out, units, cols, STAGE, True)
        conn.execute(sa.text(upsert_sql(schema, cols, STAGE, SEQ, quote)))
        return rows

    @staticmethod
    def _copy(conn, out: str, units: tuple[LoadUnit, ...], cols: list[str], table: str,
              seq: bool) -> int:
        """COPY the units' rows into ``table`` (with a SEQ row number if ``seq``); rows sent.

        A queued writer sends from a thread, so Parquet is read and turned into CSV
        while the server parses what was sent before.
        """
        conn.execute(sa.text("SET LOCAL TimeZone = 'UTC'"))  # csv_bytes writes UTC, zoneless
        cursor = conn.connection.driver_connection.cursor()
        folder = Folder(out)
        target = ", ".join([quote(c) for c in cols] + ([SEQ] if seq else []))
        sent = 0
        with cursor.copy(f"COPY {table} ({target}) FROM STDIN (FORMAT csv)",
                         writer=QueuedLibpqWriter(cursor)) as copy:
            for rel, _ in (f for unit in units for f in unit.files):
                pf = pq.ParquetFile(folder.join(rel), filesystem=folder.arrow_fs)
                present = [c for c in cols if c in pf.schema_arrow.names]
                for batch in pf.iter_batches(COPY_BATCH_ROWS, columns=present):
                    if present != cols:  # an older file without a newer field: nulls
                        batch = _with_columns(batch, cols)
                    copy.write(csv_bytes(batch, sent if seq else None))
                    sent += batch.num_rows
        return sent


def _droppable_primary_key(cursor, table: str) -> tuple[str, str] | None:
    """(name, definition) of the table's primary key when the table is empty and no
    foreign key refers to it; else None. Empty: taken as a hint, the key's return checks."""
    cursor.execute(
        "SELECT c.conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
        "WHERE c.conrelid = %s::regclass AND c.contype = 'p' "
        "AND NOT EXISTS (SELECT 1 FROM pg_constraint f WHERE f.confrelid = c.conrelid) "
        f"AND NOT EXISTS (SELECT 1 FROM {table})", (table,))
    return cursor.fetchone()


def _first_keys_there(conn, schema: Schema, out: str, units: tuple[LoadUnit, ...]) -> bool:
    """Whether any of the first ``PROBE_KEYS`` keys of the units is in the table already."""
    folder = Folder(out)
    pf = pq.ParquetFile(folder.join(units[0].files[0][0]), filesystem=folder.arrow_fs)
    batch = next(pf.iter_batches(PROBE_KEYS, columns=[schema.key]), None)
    if batch is None or batch.num_rows == 0:
        return False
    return bool(conn.execute(sa.text(
        f"SELECT EXISTS (SELECT 1 FROM {quote(schema.name)} WHERE {quote(schema.key)} "
        "= ANY(:keys))"), {"keys": batch.column(0).to_pylist()}).scalar())


def _with_columns(batch: pa.RecordBatch, cols: list[str]) -> pa.RecordBatch:
    arrays = [batch.column(c) if c in batch.schema.names else pa.nulls(batch.num_rows)
              for c in cols]
    return pa.RecordBatch.from_arrays(arrays, names=cols)
