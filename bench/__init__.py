"""Benchmark harness for ``etl ingest`` against DuckDB, Polars and plain decompression.

``run.py`` is the entry point (``make bench``, ``make bench-quick``); the other
modules are its stages: ``data`` builds the inputs once, ``jobs`` builds the
commands, ``measure`` times one command, ``engines`` runs the DuckDB and
Polars side of the job, ``report`` turns measurements into RESULTS.md.
"""
