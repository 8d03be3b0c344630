"""DuckDB destination: DuckDB reads the Parquet files itself, one transaction per shard."""

from __future__ import annotations

import os

import sqlalchemy as sa

from etl.errors import LoadError, TransientLoadError
from etl.load.base import Loader, LoadUnit, quote
from etl.load.tables import upsert_sql
from etl.schema import Schema
from etl.storage import Folder

TRANSIENT = ("could not set lock", "conflicting lock", "transactioncontext error")


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class DuckDBLoader(Loader):
    """Loads into a DuckDB file through SQLAlchemy (duckdb-engine)."""

    dialect = "duckdb"

    def __init__(self, url: sa.URL):
        if url.database and url.database != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(url.database)), exist_ok=True)
        super().__init__(url, sa.create_engine(url, poolclass=sa.pool.NullPool))

    def _classify(self, exc: sa.exc.DBAPIError) -> LoadError:
        text = str(exc.orig)
        if any(t in text.lower() for t in TRANSIENT):
            return TransientLoadError(text, self.where())
        return LoadError(f"{text}; fix the cause, then rerun (nothing of this transaction "
                         "was committed)", self.where())

    def load_unit(self, schema: Schema, out: str, unit: LoadUnit) -> int:
        cols = [f.name for f in unit.columns(out, schema)]
        folder = Folder(out)
        files = ", ".join(_sql_str(folder.url(folder.join(f))) for f, _ in unit.files)
        # a named filename column: a field may well be called "filename"
        source = (f"read_parquet([{files}], union_by_name = true, filename = '_etl_file', "
                  f"file_row_number = true)")
        sql = upsert_sql(schema, cols, source, "_etl_file, file_row_number", quote)

        def merge(conn):
            if not folder.local:  # DuckDB reads URLs through the same fsspec filesystem
                raw = conn.connection.driver_connection
                protocol = folder.fs.protocol
                if not raw.filesystem_is_registered(
                        protocol[0] if isinstance(protocol, tuple) else protocol):
                    raw.register_filesystem(folder.fs)
            conn.execute(sa.text(sql))
            self._record(conn, schema, unit)
            return sum(n for _, n in unit.files)
        return self._run(merge)
