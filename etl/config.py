"""One frozen, typed settings object per run, built by cli.py or the Python API."""

from __future__ import annotations

from dataclasses import dataclass

from etl.schema import Schema
from etl.shards import BATCH_BYTES, OUT_CHUNK
from etl.split import PART_BYTES

SCHEDULERS = ("synchronous", "threads", "processes")


@dataclass(frozen=True)
class IngestConfig:
    """Everything one ingest run needs; picklable, so Dask workers get a copy.

    Attributes
    ----------
    schema : the validated dataset schema.
    out : output folder (Parquet, ``_rejects/``, ``_manifest/``).
    scheduler : ``synchronous``, ``threads``, ``processes`` or ``tcp://HOST:PORT``.
    batch_bytes : uncompressed bytes per line batch (bounds memory per worker).
    force : redo shards the manifest says are finished and unchanged.
    stdin_name : the identity of ``-`` (output names derive from it).
    progress : draw a progress bar on standard error.
    part_bytes : a shard that can split (``etl.split``) is cut into parts of about this
        many compressed bytes, run in parallel; 0 never splits.
    max_line_bytes : the longest line read whole; a longer one is a ``too_long`` reject
        that keeps its first 64 KiB. None: 64 MiB, or the batch size plus 4 MiB if more.
    workers : local worker processes (``processes``) or threads (``threads``) at most.
        None: one per usable core (``etl.workers.usable_cores``).
    read_ahead : each task reads (decompresses) its shard in a thread of its own, up to
        32 MiB ahead of its parsing (``etl.shards.read_ahead``); the run sets it where a
        core would otherwise wait (``etl.pipeline.reads_ahead``).
    """

    schema: Schema
    out: str
    scheduler: str
    batch_bytes: int = BATCH_BYTES
    force: bool = False
    stdin_name: str = "stdin"
    progress: bool = True
    part_bytes: int = PART_BYTES
    max_line_bytes: int | None = None
    workers: int | None = None
    read_ahead: bool = False

    def __post_init__(self):
        from etl.errors import ConfigError

        s = self.scheduler
        if s not in SCHEDULERS and not s.startswith(("tcp://", "tls://", "ws://", "inproc://")):
            raise ConfigError(f"unknown scheduler {s!r}: use one of {', '.join(SCHEDULERS)} "
                              "or a distributed address like tcp://HOST:8786")
        if self.workers is not None:
            if s not in SCHEDULERS:
                raise ConfigError(f"--workers sets this machine's workers; the Dask cluster at "
                                  f"{s} has its own (start more dask workers there)")
            if self.workers < 1:
                raise ConfigError(f"--workers {self.workers}: at least 1")
            if s == "synchronous" and self.workers > 1:
                raise ConfigError(f"--workers {self.workers} with the synchronous scheduler, "
                                  "which runs one task at a time in this process: use "
                                  "--scheduler processes (or threads), or --workers 1")
        if self.batch_bytes < 1024:
            raise ConfigError(f"batch size {self.batch_bytes} bytes is too small (min 1024)")
        if self.max_line_bytes is not None and self.max_line_bytes < self.batch_bytes + OUT_CHUNK:
            raise ConfigError(
                f"longest line {self.max_line_bytes} bytes is below the batch size plus 4 MiB "
                f"({self.batch_bytes + OUT_CHUNK}): raise --max-line-mb or lower --batch-mb")
        if self.part_bytes < 0:
            raise ConfigError(f"part size {self.part_bytes} bytes is negative (0: never split)")
