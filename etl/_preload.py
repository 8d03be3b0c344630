"""Imported once by the fork server (``etl.workers``): what every local worker needs."""

from etl.workers import worker_start

worker_start()  # before anything calls pa.array: forked workers inherit the answer

import etl.pipeline  # noqa: E402,F401  (dask, pyarrow, the job: imported once, for all)
