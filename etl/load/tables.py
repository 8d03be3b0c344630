"""Schema -> SQLAlchemy table, additive evolution, and the upsert statement both loaders use.

SQLAlchemy is imported only where it is used: the DuckDB loader does without it.
"""

from __future__ import annotations

from etl.load.base import LOADS_TABLE
from etl.schema import Field, Schema


def sql_type(f: Field, dialect: str):
    """The column type for a field (timestamps as timestamptz)."""
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql

    if f.type == "list<string>":
        return postgresql.ARRAY(sa.Text) if dialect == "postgresql" else sa.Text
    if f.type == "json":
        return postgresql.JSONB if dialect == "postgresql" else sa.Text
    return {"string": sa.Text, "int64": sa.BigInteger, "int32": sa.Integer,
            "float64": sa.Double, "bool": sa.Boolean, "timestamp": sa.DateTime(timezone=True),
            "date": sa.Date}[f.type]


def loads_table(metadata):
    """_etl_loads: one row per Parquet file loaded, keyed by (file, ingest token)."""
    import sqlalchemy as sa

    return sa.Table(
        LOADS_TABLE, metadata,
        sa.Column("file", sa.Text, primary_key=True),
        sa.Column("token", sa.Text, primary_key=True),
        sa.Column("shard", sa.Text, nullable=False),
        sa.Column("dataset", sa.Text, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("loaded_at", sa.DateTime(timezone=True), nullable=False),
    )


def build_tables(schema: Schema, dialect: str):
    """MetaData holding the dataset table (primary key on ``[dataset] key``) and _etl_loads."""
    import sqlalchemy as sa

    md = sa.MetaData()
    cols = [sa.Column(f.name, sql_type(f, dialect), primary_key=(f.name == schema.key),
                      nullable=f.name != schema.key) for f in schema.fields]
    table = sa.Table(schema.name, md, *cols)
    loads_table(md)
    return md, table


def create_or_evolve(conn, schema: Schema, dialect: str) -> list[str]:
    """Create missing tables; add columns the schema gained (``conn``: a SQLAlchemy
    connection). Returns the columns added."""
    import sqlalchemy as sa

    md, table = build_tables(schema, dialect)
    md.create_all(conn)
    # information_schema, not sa.inspect().get_columns: duckdb-engine's reflection needs
    # pg_catalog tables that DuckDB 2 no longer has
    existing = {r[0] for r in conn.execute(sa.text(
        "SELECT column_name FROM information_schema.columns WHERE table_name = :t "
        "AND table_schema = current_schema()"), {"t": schema.name})}
    added = []
    prep = conn.dialect.identifier_preparer
    for col in table.columns:
        if col.name not in existing:
            ddl = col.type.compile(dialect=conn.dialect)
            conn.execute(sa.text(f"ALTER TABLE {prep.quote(schema.name)} "
                                 f"ADD COLUMN {prep.quote(col.name)} {ddl}"))
            added.append(col.name)
    return added


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
