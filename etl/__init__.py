"""etl: compressed NDJSON archives and live JSON feeds -> typed, partitioned Parquet -> warehouse.

The Python API mirrors the CLI::

    import etl
    report = etl.ingest(["data/sample/*"], schema="etl/schemas/reddit_comments.toml",
                        out="data/processed")
    df = etl.open_dataset("data/processed")     # lazy, typed dask DataFrame

Importing ``etl`` has no side effects; heavy modules load on first use.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["ingest", "open_dataset", "load_schema"]


def load_schema(path):
    """Read and validate a schema TOML file (raises ``etl.errors.ConfigError``)."""
    from etl.schema import load_schema as _load

    return _load(path)


def ingest(inputs, schema, out, *, report=None, scheduler=None, batch_bytes=8 << 20,
           force=False, stdin_name="stdin", progress=False, part_bytes=128 << 20,
           max_line_bytes=None, workers=None) -> dict:
    """Ingest shards into typed, partitioned Parquet under ``out``; return the run report.

    Parameters
    ----------
    inputs : str or list of str
        Files, globs, directories, fsspec URLs, or ``-`` for standard input.
    schema : str, pathlib.Path or etl.schema.Schema
        The schema TOML file (or an already loaded Schema).
    out : str
        Output folder.
    report : str, optional
        Also write the report as JSON to this file.
    scheduler : str, optional
        ``synchronous``, ``threads``, ``processes`` or ``tcp://HOST:PORT``;
        default processes on 2+ cores.
    batch_bytes, force, stdin_name, progress, part_bytes, max_line_bytes, workers
        As the CLI's ``--batch-mb``, ``--force``, ``--stdin-name``, progress bar,
        ``--part-mb`` (0: never split a shard), ``--max-line-mb`` (None: its default)
        and ``--workers`` (None: one per usable core).

    Returns
    -------
    dict
        The report: ``lines``, ``rows_written``, ``rows_filtered``, ``rows_rejected``,
        ``blank_lines``, ``rejects_by_reason``, ``bytes_in``, ``seconds``, ``shards``, ...
    """
    from etl.cli import _write_json
    from etl.config import IngestConfig
    from etl.workers import default_scheduler
    from etl.pipeline import run_ingest
    from etl.schema import Schema

    if isinstance(inputs, str):
        inputs = [inputs]
    cfg = IngestConfig(schema=schema if isinstance(schema, Schema) else load_schema(schema),
                       out=str(out), scheduler=scheduler or default_scheduler(workers),
                       workers=workers,
                       batch_bytes=batch_bytes, force=force, stdin_name=stdin_name,
                       progress=progress, part_bytes=part_bytes,
                       max_line_bytes=max_line_bytes)
    result = run_ingest([str(i) for i in inputs], cfg)
    if report:
        _write_json(str(report), result)
    return result


def open_dataset(out):
    """The ingested Parquet under ``out`` as a lazy, typed ``dask.dataframe.DataFrame``.

    The Hive partition column (``<partition_by>_date``) comes back as a column. Columns
    keep pandas' nullable types (``Int64``, ``boolean``, ``Float64``, strings): an int
    field with a missing value stays an exact integer with ``<NA>``, where NumPy's types
    would turn the whole partition's column into float64 (inexact past 2**53) and
    disagree with the dtype the frame announced.
    """
    import dask.dataframe as dd

    from etl.storage import Folder

    folder = Folder(str(out))
    pattern = folder.join("*=*", "*.parquet")  # never _rejects/ nor _manifest/
    if not folder.glob(pattern):
        pattern = folder.join("*.parquet")
    return dd.read_parquet(str(out).rstrip("/") + pattern[len(folder.root):],
                           dtype_backend="numpy_nullable")
