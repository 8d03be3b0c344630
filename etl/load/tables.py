"""Schema -> CREATE TABLE, additive evolution, and the upsert statement both loaders use.

Plain SQL for both databases, run on whatever connection the loader has (DuckDB's
own, or SQLAlchemy's for Postgres): no ORM metadata to build per run.
"""

from __future__ import annotations

from etl.load.base import LOADS_TABLE, sql_str
from etl.schema import Schema

# column type per schema type and database
COLUMN_TYPES = {
    "duckdb": {"string": "VARCHAR", "int64": "BIGINT", "int32": "INTEGER",
               "float64": "DOUBLE", "bool": "BOOLEAN", "timestamp": "TIMESTAMP WITH TIME ZONE",
               "date": "DATE", "list<string>": "VARCHAR", "json": "VARCHAR"},
    "postgresql": {"string": "TEXT", "int64": "BIGINT", "int32": "INTEGER",
                   "float64": "DOUBLE PRECISION", "bool": "BOOLEAN",
                   "timestamp": "TIMESTAMP WITH TIME ZONE", "date": "DATE",
                   "list<string>": "TEXT[]", "json": "JSONB"},
}


def table_ddl(schema: Schema, dialect: str, quote) -> str:
    """CREATE TABLE IF NOT EXISTS for the dataset (primary key on ``[dataset] key``)."""
    types = COLUMN_TYPES[dialect]
    cols = ", ".join(f"{quote(f.name)} {types[f.type]}" for f in schema.fields)
    key = f", PRIMARY KEY ({quote(schema.key)})" if schema.key else ""
    return f"CREATE TABLE IF NOT EXISTS {quote(schema.name)} ({cols}{key})"


def loads_ddl(dialect: str) -> str:
    """_etl_loads: one row per Parquet file loaded, keyed by (file, ingest token)."""
    text = COLUMN_TYPES[dialect]["string"]
    return (f"CREATE TABLE IF NOT EXISTS {LOADS_TABLE} (file {text}, token {text}, "
            f"shard {text} NOT NULL, dataset {text} NOT NULL, \"rows\" BIGINT NOT NULL, "
            "loaded_at TIMESTAMP WITH TIME ZONE NOT NULL, PRIMARY KEY (file, token))")


def create_or_evolve(execute, rows, schema: Schema, dialect: str, quote) -> list[str]:
    """Create missing tables; add columns the schema gained. Returns the columns added.

    ``execute(sql)`` runs a statement and ``rows(sql)`` a query, on the loader's
    connection inside its transaction.
    """
    execute(table_ddl(schema, dialect, quote))
    execute(loads_ddl(dialect))
    existing = {r[0] for r in rows(
        "SELECT column_name FROM information_schema.columns WHERE table_name = "
        f"{sql_str(schema.name)} "
        "AND table_schema = current_schema()")}
    added = [f for f in schema.fields if f.name not in existing]
    for f in added:
        execute(f"ALTER TABLE {quote(schema.name)} ADD COLUMN {quote(f.name)} "
                f"{COLUMN_TYPES[dialect][f.type]}")
    return [f.name for f in added]


def upsert_sql(schema: Schema, cols: list[str], source: str, order: str, quote,
               empty: bool = False, dedupe: bool = True, key_order: bool = False) -> str:
    """INSERT the newest row per key of ``source`` and merge it into the table.

    Within ``source`` the row kept per key is the greatest version (when the
    schema has one), then the last by ``order``. Against the table, the greater
    version wins whatever the load order (ties and null stored versions: the
    new row); without a version the later load wins. ``empty``: the table is
    known to be empty (and nobody else writes it), so no row can conflict and the
    ON CONFLICT clause is left out. ``dedupe=False``: no key repeats within
    ``source`` (the caller checked), so no ranking is needed. ``key_order``: insert
    in key order (DuckDB's primary-key index, an ART, builds and commits much faster so).
    """
    t, names = quote(schema.name), ", ".join(quote(c) for c in cols)
    if not schema.key:
        return f"INSERT INTO {t} ({names}) SELECT {names} FROM {source}"
    key, v = quote(schema.key), quote(schema.version) if schema.version else None
    # every order column descends: "filename, file_row_number" means the last file's last row
    rank = (f"{v} DESC NULLS LAST, " if v else "") + ", ".join(
        f"{c.strip()} DESC" for c in order.split(","))
    newest = (f"SELECT {names} FROM (SELECT *, row_number() OVER (PARTITION BY {key} "
              f"ORDER BY {rank}) AS _etl_rn FROM {source}) AS _etl_ranked WHERE _etl_rn = 1"
              if dedupe else f"SELECT {names} FROM {source}")
    if key_order:
        newest += f" ORDER BY {key}"
    if empty:
        return f"INSERT INTO {t} ({names}) {newest}"
    updates = ", ".join(f"{quote(c)} = excluded.{quote(c)}" for c in cols if c != schema.key)
    sql = f"INSERT INTO {t} ({names}) {newest} ON CONFLICT ({key}) "
    if not updates:
        return sql + "DO NOTHING"
    sql += f"DO UPDATE SET {updates}"
    if v and schema.version in cols:
        sql += f" WHERE {t}.{v} IS NULL OR (excluded.{v} IS NOT NULL AND excluded.{v} >= {t}.{v})"
    return sql
