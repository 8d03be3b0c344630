"""The benchmark job outside etl: DuckDB and Polars, built from bench/bench_schema.toml.

The job is the schema's: read NDJSON, keep the rows whose filter fields pass and
whose required fields are present, project and type the fields, write zstd
Parquet in ``<partition_by>_date=YYYY-MM-DD/`` folders (the key kept out of the
files, as etl does). ``created_utc`` arrives as an int, a float or a numeric
string, so timestamps are read as text and go through ``TRY_CAST(... AS DOUBLE)``.
Only the field types the bench schema uses (string, int64, timestamp) and the
``in`` filter are translated.

Run as a script, one job per process, so the harness can time it::

    python bench/engines.py duckdb --source 'dir/*.zst' --out DIR     (or --source /dev/stdin)
    python bench/engines.py polars --source dir/a.zst dir/b.zst --out DIR
    python bench/engines.py ctas --parquet DIR --db FILE
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from etl.schema import Schema, load_schema

SCHEMA = Path(__file__).resolve().parent / "bench_schema.toml"
THREADS = 2  # the setting: DuckDB and Polars get both cores
DUCKDB_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "timestamp": "VARCHAR"}


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _check(schema: Schema) -> None:
    for f in schema.fields:
        if f.type not in DUCKDB_TYPES or len(f.path) != 1:
            raise ValueError(f"field {f.name}: the bench translates only top-level "
                             f"{sorted(DUCKDB_TYPES)} fields, not {f.type} at {'.'.join(f.path)}")
    for flt in schema.filters:
        if flt.op != "in":
            raise ValueError(f"filter on {flt.field}: the bench translates only 'in', not "
                             f"{flt.op!r}")


def _duckdb_expr(f) -> str:
    if f.type == "timestamp":
        return f"to_timestamp(TRY_CAST({f.path[0]} AS DOUBLE))"
    return f.path[0]


def duckdb_select_sql(source: str, schema: Schema) -> str:
    """The SELECT of the job over ``read_ndjson(source)``, with the partition column last."""
    _check(schema)
    columns = ", ".join(f"{f.path[0]}: '{DUCKDB_TYPES[f.type]}'" for f in schema.fields)
    typed = ", ".join(f"{_duckdb_expr(f)} AS {f.name}" for f in schema.fields)
    where = [f"{f.name} IS NOT NULL" for f in schema.fields if f.required]
    where += [f"{flt.field} IN ({', '.join(_sql_str(str(v)) for v in flt.value)})"
              for flt in schema.filters]
    partition = ""
    if schema.partition_by:
        partition = f", CAST({schema.partition_by} AS DATE) AS {schema.partition_column}"
    inner = (f"SELECT {typed} FROM read_ndjson({_sql_str(source)}, columns = {{{columns}}}, "
             "format = 'newline_delimited')")
    return f"SELECT *{partition} FROM ({inner}) WHERE {' AND '.join(where) or 'true'}"


def duckdb_copy_sql(source: str, out: str, schema: Schema) -> str:
    """``COPY (job) TO out``: zstd Parquet, one folder per day like etl's output."""
    options = "FORMAT parquet, COMPRESSION zstd"
    if schema.partition_by:
        options += f", PARTITION_BY ({schema.partition_column})"
    return f"COPY ({duckdb_select_sql(source, schema)}) TO {_sql_str(out)} ({options})"


def run_duckdb(source: str, out: str, schema: Schema, threads: int = THREADS) -> int:
    """Run the job in DuckDB; return the rows COPY wrote."""
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute("SET TimeZone = 'UTC'")  # the day of a timestamp is the UTC day, as in etl
    (rows,) = con.execute(duckdb_copy_sql(source, out, schema)).fetchone()
    con.close()
    return rows


def polars_frame(files: list[str], schema: Schema):
    """The job as a Polars LazyFrame over ``files`` (codec chosen by Polars)."""
    import polars as pl

    _check(schema)
    kinds = {"string": pl.String, "int64": pl.Int64, "timestamp": pl.String}
    frame = pl.scan_ndjson(files, schema={f.path[0]: kinds[f.type] for f in schema.fields})
    for flt in schema.filters:
        frame = frame.filter(pl.col(flt.field).is_in([str(v) for v in flt.value]))
    seconds = [pl.col(f.name).cast(pl.Float64, strict=False) for f in schema.fields
               if f.type == "timestamp"]
    frame = frame.with_columns([(s * 1e6).round().cast(pl.Int64).cast(pl.Datetime("us", "UTC"))
                                for s in seconds])
    required = [pl.col(f.name).is_not_null() for f in schema.fields if f.required]
    if required:
        frame = frame.filter(*required)
    if schema.partition_by:
        frame = frame.with_columns(pl.col(schema.partition_by).dt.date()
                                   .alias(schema.partition_column))
    return frame


def run_polars(files: list[str], out: str, schema: Schema) -> None:
    """Run the job in Polars, streaming into zstd Parquet partitioned like etl's."""
    import polars as pl

    frame = polars_frame(files, schema)
    target = pl.PartitionBy(out, key=schema.partition_column, include_key=False) \
        if schema.partition_by else os.path.join(out, "part.parquet")
    os.makedirs(out, exist_ok=True)
    frame.sink_parquet(target, compression="zstd")


def run_ctas(parquet_dir: str, db: str) -> int:
    """DuckDB's own load: CREATE TABLE AS SELECT * FROM read_parquet(...); returns rows."""
    import duckdb

    con = duckdb.connect(db)
    con.execute(f"SET threads = {THREADS}")
    files = _sql_str(os.path.join(parquet_dir, "*=*", "*.parquet"))  # not _rejects/
    con.execute(f"CREATE TABLE comments AS SELECT * FROM read_parquet({files}, "
                "hive_partitioning = true)")
    (rows,) = con.execute("SELECT count(*) FROM comments").fetchone()
    con.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("engine", choices=["duckdb", "polars", "ctas"])
    p.add_argument("--source", nargs="+", help="duckdb: one glob or /dev/stdin; polars: files")
    p.add_argument("--out", help="output folder, replaced")
    p.add_argument("--parquet", help="ctas: the Parquet folder to load")
    p.add_argument("--db", help="ctas: the DuckDB file to create, replaced")
    p.add_argument("--schema", default=str(SCHEMA))
    args = p.parse_args()
    if args.engine == "ctas":
        if os.path.exists(args.db):
            os.remove(args.db)
        run_ctas(args.parquet, args.db)
        return
    schema = load_schema(args.schema)
    shutil.rmtree(args.out, ignore_errors=True)
    if args.engine == "duckdb":
        run_duckdb(args.source[0], args.out, schema)
    else:
        os.environ.setdefault("POLARS_MAX_THREADS", str(THREADS))
        run_polars(args.source, args.out, schema)


if __name__ == "__main__":
    main()
