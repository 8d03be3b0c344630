"""Postgres destination: COPY into a temporary staging table, then one INSERT ... ON CONFLICT.

The password comes from the URL, ``PGPASSWORD`` or ``~/.pgpass`` (libpq reads
the last two itself) and is never printed: messages name host, port and database.
"""

from __future__ import annotations

import io

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import sqlalchemy as sa

from etl.errors import LoadError, TransientLoadError, UnreachableError
from etl.load.base import Loader, LoadUnit, quote, unit_columns
from etl.load.tables import upsert_sql
from etl.schema import Schema
from etl.storage import Folder

COPY_BATCH_ROWS = 65_536        # Parquet rows turned into CSV and sent per COPY write
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


def csv_bytes(batch: pa.RecordBatch, seq_start: int) -> bytes:
    """A record batch as COPY CSV (null unquoted-empty, empty string quoted) with a SEQ column."""
    cols, names = [], []
    for name, col in zip(batch.schema.names, batch.columns):
        if pa.types.is_list(col.type):
            col = pa.array([_pg_array(v) for v in col.to_pylist()], pa.string())
        if pa.types.is_string(col.type):  # Postgres text cannot hold NUL: documented rule
            col = pc.replace_substring(col, "\x00", "\ufffd")
        cols.append(col)
        names.append(name)
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
        super().__init__(url, sa.create_engine(
            url, poolclass=sa.pool.NullPool, connect_args={"connect_timeout": CONNECT_TIMEOUT}))
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

    def load(self, schema: Schema, out: str, units: tuple[LoadUnit, ...]) -> int:
        cols = [f.name for f in unit_columns(out, schema, units)]
        names = ", ".join(quote(c) for c in cols)

        def merge(conn):
            conn.execute(sa.text(f"CREATE TEMP TABLE {STAGE} ON COMMIT DROP AS SELECT {names} "
                                 f"FROM {quote(schema.name)} WITH NO DATA"))
            conn.execute(sa.text(f"ALTER TABLE {STAGE} ADD COLUMN {SEQ} bigint"))
            try:
                rows = self._copy(conn, out, units, cols, names)
            except psycopg.Error as exc:  # the raw cursor's errors, wrapped as SQLAlchemy would
                raw = conn.connection.driver_connection
                raise sa.exc.DBAPIError.instance(
                    "COPY", None, exc, psycopg.Error,
                    connection_invalidated=raw.closed or raw.broken) from exc
            conn.execute(sa.text(upsert_sql(schema, cols, STAGE, SEQ, quote)))
            for unit in units:
                self._record(conn, schema, unit)
            return rows
        return self._run(merge)

    @staticmethod
    def _copy(conn, out: str, units: tuple[LoadUnit, ...], cols: list[str], names: str) -> int:
        cursor = conn.connection.driver_connection.cursor()
        folder = Folder(out)
        seq = 0
        with cursor.copy(f"COPY {STAGE} ({names}, {SEQ}) FROM STDIN (FORMAT csv)") as copy:
            for rel, _ in (f for unit in units for f in unit.files):
                pf = pq.ParquetFile(folder.join(rel), filesystem=folder.arrow_fs)
                present = [c for c in cols if c in pf.schema_arrow.names]
                for batch in pf.iter_batches(COPY_BATCH_ROWS, columns=present):
                    if present != cols:  # an older file without a newer field: nulls
                        batch = _with_columns(batch, cols)
                    copy.write(csv_bytes(batch, seq))
                    seq += batch.num_rows
        return seq


def _with_columns(batch: pa.RecordBatch, cols: list[str]) -> pa.RecordBatch:
    arrays = [batch.column(c) if c in batch.schema.names else pa.nulls(batch.num_rows)
              for c in cols]
    return pa.RecordBatch.from_arrays(arrays, names=cols)
