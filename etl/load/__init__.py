"""Loading Parquet into a warehouse exactly once: DuckDB (default) or Postgres.

``run_load`` is the entry point; ``base.Loader`` is the small protocol each
destination implements. Only this package knows about SQL drivers.
"""

from etl.load.base import run_load, status

__all__ = ["run_load", "status"]
