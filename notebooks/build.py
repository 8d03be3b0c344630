"""Writes the analysis notebooks (without outputs) from the cell sources below.

Run `python notebooks/build.py` after editing; the .ipynb files are what users open.
"""

from pathlib import Path

import nbformat as nbf

HERE = Path(__file__).resolve().parent

SETUP = '''import os
from pathlib import Path

import dask.dataframe as dd
import duckdb
import matplotlib.pyplot as plt

# Paths default to what `make ingest` builds; override with environment variables.
ROOT = Path(os.environ.get("ETL_ROOT", Path.cwd().parent if Path.cwd().name == "notebooks" else Path.cwd()))
WAREHOUSE = Path(os.environ.get("ETL_WAREHOUSE", ROOT / "data" / "warehouse.duckdb"))
PROCESSED = Path(os.environ.get("ETL_PROCESSED", ROOT / "data" / "processed"))
con = duckdb.connect(str(WAREHOUSE), read_only=True)
print(WAREHOUSE, con.execute("select count(*) from comments").fetchall()[0][0], "comments")'''

OVERVIEW = [
    ("markdown", "# 01 Overview of the comments warehouse\n\nRows per day, top subreddits, "
     "score distribution and the share of deleted comments, read from the DuckDB warehouse "
     "that `make ingest` builds (and the Parquet through `dask.dataframe`)."),
    ("code", SETUP),
    ("markdown", "## Rows per day"),
    ("code", '''per_day = con.execute("""
    select cast(created_utc as date) as day, count(*) as rows
    from comments group by 1 order by 1""").df()
ax = per_day.plot(x="day", y="rows", figsize=(10, 3), legend=False, title="comments per day")
ax.set_ylabel("rows")
plt.show()'''),
    ("markdown", "## Top subreddits"),
    ("code", '''top = con.execute("""
    select subreddit, count(*) as rows from comments
    group by 1 order by 2 desc limit 15""").df()
top.plot.barh(x="subreddit", y="rows", figsize=(8, 5), legend=False, title="top subreddits").invert_yaxis()
plt.show()'''),
    ("markdown", "## Score distribution\n\nRead from the Parquet with `dask.dataframe`, lazily."),
    ("code", '''import etl

df = etl.open_dataset(PROCESSED)
scores = df["score"].dropna().compute()
fig, ax = plt.subplots(figsize=(8, 3))
ax.hist(scores.clip(-20, 200), bins=60, log=True)
ax.set_title("score (clipped to -20..200), log count")
plt.show()
scores.describe()'''),
    ("markdown", "## Deleted share\n\n`[deleted]` and `[removed]` authors and bodies are null in "
     "the warehouse (the schema's `null_if`)."),
    ("code", '''deleted = con.execute("""
    select cast(created_utc as date) as day,
           avg(case when author is null then 1.0 else 0 end) as deleted_author,
           avg(case when body is null then 1.0 else 0 end) as deleted_body
    from comments group by 1 order by 1""").df()
deleted.plot(x="day", figsize=(10, 3), title="share of deleted authors and bodies per day")
plt.show()'''),
]

LIVE = [
    ("markdown", "# 02 Live feed: what arrived per spool window\n\nThe spooler writes "
     "`<feed>/YYYY/MM/DD/<feed>-<YYYYMMDDTHHMMSSZ>-<seq>.ndjson.zst`; `etl run` on the spool "
     "folder ingests each sealed window as a shard. Here: rows per window (from the ingest "
     "manifest) and the lag between `created_utc` and the window that received the comment."),
    ("code", SETUP.replace('"ETL_PROCESSED", ROOT / "data" / "processed"',
                           '"ETL_PROCESSED", ROOT / "data" / "live" / "processed"')
     .replace('"ETL_WAREHOUSE", ROOT / "data" / "warehouse.duckdb"',
              '"ETL_WAREHOUSE", ROOT / "data" / "live" / "warehouse.duckdb"')),
    ("code", '''import json
import re

import pandas as pd

WINDOW = re.compile(r"-(\\d{8}T\\d{6}Z)-\\d+\\.ndjson")
records = [json.loads(p.read_text()) for p in sorted((PROCESSED / "_manifest").glob("*.json"))]
windows = pd.DataFrame([
    {"window": pd.Timestamp(WINDOW.search(r["path"]).group(1)), "rows": r["rows_written"],
     "rejected": r["rows_rejected"], "status": r["status"]}
    for r in records if WINDOW.search(r["path"])]).sort_values("window")
windows.plot(x="window", y=["rows", "rejected"], kind="bar", figsize=(10, 3),
             title="rows per spool window")
plt.show()
windows.tail()'''),
    ("markdown", "## Lag between `created_utc` and arrival\n\nArrival is the start of the "
     "spool window the line landed in; each Parquet file is named after its shard."),
    ("code", '''files = str(PROCESSED / "*=*" / "*.parquet")
lag = duckdb.sql(f"""
    select created_utc,
           strptime(regexp_extract(filename, '-(\\\\d{{8}}T\\\\d{{6}}Z)-', 1), '%Y%m%dT%H%M%SZ')
             as window_start
    from read_parquet('{files}', filename = true, hive_partitioning = true)""").df()
lag["lag_hours"] = (lag["window_start"].dt.tz_localize("UTC") - lag["created_utc"]).dt.total_seconds() / 3600
ax = lag["lag_hours"].plot.hist(bins=50, figsize=(8, 3), title="hours from created_utc to arrival")
ax.set_xlabel("hours")
plt.show()
lag["lag_hours"].describe()'''),
]


def write(name: str, cells: list) -> None:
    nb = nbf.v4.new_notebook()
    nb.cells = [nbf.v4.new_markdown_cell(src) if kind == "markdown" else nbf.v4.new_code_cell(src)
                for kind, src in cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    nbf.write(nb, HERE / name)


if __name__ == "__main__":
    write("01-overview.ipynb", OVERVIEW)
    write("02-live-feed.ipynb", LIVE)
