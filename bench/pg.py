"""The Postgres load comparison: a throwaway cluster, the reference table, the CSV of the rows.

``etl load → Postgres`` is timed against ``psql \\copy`` of the same rows, exported
once as CSV from etl's Parquet, into an equivalent table: the DDL etl's own loader
creates (SQLAlchemy, primary key on the key). The cluster is the tests' own
(tests/pg.py: initdb + pg_ctl, trust auth, 127.0.0.1 only, fsync off; as root it runs
as the ``postgres`` user through ``runuser``), started for the run and stopped after.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from etl.schema import Schema

DATABASES = {"etl": "bench_etl", "copy": "bench_copy"}  # one per step: neither sees the other


def ddl(schema: Schema) -> str:
    """CREATE TABLE for the schema's table exactly as etl's Postgres loader makes it."""
    from etl.load.base import quote
    from etl.load.tables import table_ddl

    return table_ddl(schema, "postgresql", quote)


def psql_argv(port: int, database: str, command: str) -> tuple[str, ...]:
    """``psql`` running one command against the bench cluster, stopping at an error."""
    return ("psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
            "-p", str(port), "-U", "postgres", "-d", database, "-c", command)


def copy_command(table: str, columns: list[str], csv: Path) -> str:
    """psql's client-side COPY of a header-less CSV file into ``table``."""
    quoted = str(csv).replace("'", "''")
    names = ", ".join('"' + c.replace('"', '""') + '"' for c in columns)
    return f"\\copy {table} ({names}) FROM '{quoted}' WITH (FORMAT csv)"


def export_csv(parquet: Path, columns: list[str], csv: Path) -> int:
    """Write the rows of etl's Parquet as CSV (timestamps in UTC); return the rows."""
    import duckdb

    def lit(text) -> str:
        return "'" + str(text).replace("'", "''") + "'"

    source = f"read_parquet({lit(parquet / '*=*' / '*.parquet')})"  # not _rejects/
    tmp = csv.with_name(csv.name + ".tmp")
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.execute(f"COPY (SELECT {', '.join(columns)} FROM {source}) TO {lit(tmp)} "
                    "(FORMAT csv, HEADER false)")
        (rows,) = con.execute(f"SELECT count(*) FROM {source}").fetchone()
    os.replace(tmp, csv)
    return rows


def unavailable() -> str | None:
    """Why no cluster can run here, or None."""
    from tests.pg import pg_bindir

    if pg_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) are not installed"
    if shutil.which("psql") is None:
        return "psql is not installed"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root and runuser is missing: cannot start postgres"
    return None


def start_cluster():
    """A running ``tests.pg.PgServer`` with the two bench databases; ``.stop()`` it after."""
    import pwd

    from tests.pg import PgServer, free_port, pg_bindir

    user = "postgres" if os.geteuid() == 0 else None  # initdb and postgres refuse root
    root = tempfile.mkdtemp(prefix="etl-bench-pg-", dir="/tmp")
    os.chmod(root, 0o755)
    if user:
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    server = PgServer(pg_bindir(), root, free_port(), user)
    try:
        server.start()
        for name in DATABASES.values():
            server.execute(f"CREATE DATABASE {name}")
    except BaseException:
        server.stop()
        raise
    return server
