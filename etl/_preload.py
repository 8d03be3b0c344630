"""Imported once by the fork server (``etl.workers``): what every local worker needs."""

import atexit
import os
import sys

from etl.workers import DIES_MARK, NO_NUMPY, die_with_parent, worker_start

if os.environ.get("ETL_FORK_SERVER") == "1":  # the server and its forks only
    sys.meta_path.insert(0, NO_NUMPY)
    if os.environ.get(DIES_MARK) == "1":  # its process gone, so is it, and its workers
        die_with_parent()
worker_start()  # before anything calls pa.array: forked workers inherit the answer

# pyarrow, the parser, the writers and the job: imported once, for all
import etl.parquet  # noqa: E402,F401
import etl.parse  # noqa: E402,F401
import etl.pipeline  # noqa: E402,F401

# when the run stops the server, skip tearing down all those modules (0.1 s, measured):
# the server holds no data, and its forked workers leave by os._exit, never by atexit.
# Only in the server: any other process importing this module exits as usual.
if os.environ.get("ETL_FORK_SERVER") == "1":
    atexit.register(os._exit, 0)
