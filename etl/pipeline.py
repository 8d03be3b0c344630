"""Runs the stages over the shards; no logic of its own.

Each shard (or part of a big one) is one task: ``job.process_shard`` streams it
straight to Parquet and returns a small record. Local worker processes run the
tasks from a process pool (``etl.workers``); the other schedulers (synchronous,
threads, a Dask cluster) run them as the partitions of a lazy ``dask.bag``.
``batches`` exposes the typed Arrow tables themselves as a bag, for notebooks
and custom jobs. Standard input is read in this process (a worker process
cannot see it), beside the computation.

dask is imported only where a bag is built: a run on local worker processes
never needs it, and its import (0.2 s, measured) would delay the first task.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from etl.config import IngestConfig
from etl.errors import ConfigError
from etl import split, workers
from etl.logs import event
from etl.job import (finish_parts, lost_record, prepare_parts, process_part, process_shard,
                     quick_skip)
from etl.report import ProgressBar, build_report
from etl.schema import Schema
from etl.storage import Folder
from etl.shards import (READ_AHEAD_BYTES, Shard, find_shards, iter_chunks, iter_line_batches,
                        open_shard, zstd_window)
from etl.split import Part

if TYPE_CHECKING:
    import dask.bag as db

log = logging.getLogger("etl")


def _biggest_first(shards: list) -> list:
    """Long tasks start early, so that no core waits on one at the end."""
    return sorted(shards, key=lambda s: -(s.size or 0))


def shard_bag(shards: list[Shard] | list[Shard | Part]) -> db.Bag:
    """One partition per shard (or part), biggest first."""
    import dask.bag as db

    ordered = _biggest_first(shards)
    return db.from_sequence(ordered, npartitions=max(len(ordered), 1))


def _tables(shards, schema: Schema, batch_bytes: int):
    from etl.parse import Parser

    parser = Parser(schema)
    for shard in shards:
        with open_shard(shard) as fh:  # shared: whichever scheduler runs the bag
            chunks = iter_chunks(fh, shard.path, fill=True, shared=True)
            for batch in iter_line_batches(chunks, batch_bytes):
                yield parser.parse_batch(batch).table


def batches(inputs: list[str], schema: Schema, batch_bytes: int = 8 << 20) -> db.Bag:
    """A lazy bag of typed ``pyarrow.Table`` batches (rejects dropped), one partition per shard.

    Computing it gathers every table: use it with ``map``/``reduction``-style
    steps that return small results, e.g. ``batches(...).map(len).sum()``.
    """
    shards = [s for s in find_shards(inputs) if not s.is_stdin]
    return shard_bag(shards).map_partitions(_tables, schema, batch_bytes)


def _compute(items: list, cfg: IngestConfig, announce: bool = False,
             started=None) -> list[dict]:
    """``_process`` over every item, in any order, on the configured scheduler;
    ``started()`` (if given) once the workers have started (see ``workers.run_local``)."""
    scheduler = cfg.scheduler
    if announce and "://" not in scheduler:
        _announce(len(items), cfg)
    if scheduler == "processes":
        return workers.run_local(_process, _biggest_first(items), cfg,
                                 lost=lambda item, why: lost_record(item, cfg, why),
                                 started=started, workers=cfg.workers)
    if started is not None:
        started()
    bag = shard_bag(items).map(_process, cfg)
    if "://" not in scheduler:
        # dask's own functions: given by name, dask first imports `distributed` to look
        # for a client (0.15-0.2 s of every run)
        import dask.local
        import dask.threaded

        if scheduler == "threads":
            return bag.compute(scheduler=dask.threaded.get,
                               num_workers=workers.pool_size(cfg.workers, len(items)))
        return bag.compute(scheduler=dask.local.get_sync)
    from distributed import Client

    with Client(scheduler) as client:
        if announce:
            log.info("running on the Dask cluster at %s%s", scheduler,
                     f"; dashboard: {client.dashboard_link}" if client.dashboard_link else "")
        return client.compute(bag).result()


def _splitting(files: list[Shard], scheduler: str, count: int | None = None):
    """Which shards to split: only to keep workers busy. On a local machine, when there
    are fewer shards than workers, or a shard is more than a worker's share of the run.
    Four shards on two cores run as four tasks: parts would only add files and task
    set-up (plain text measured 2.11-2.48 s whole, 2.46-3.56 s in 128 MB parts). On a
    cluster the cores are many and unknown here: big shards always split."""
    cores = count or workers.usable_cores()
    if "://" in scheduler or len(files) < cores:
        return lambda shard: True
    share = sum(s.size or 0 for s in files) / cores
    return lambda shard: (shard.size or 0) > share


def _plan(files: list[Shard], cfg: IngestConfig, records: list[dict]):
    """The tasks: whole shards, and the parts of big ones that split; skipped ones to records."""
    items, split_shards = [], {}
    worth_splitting = _splitting(files, cfg.scheduler, cfg.workers)
    for shard in files:
        parts = split.plan(shard, cfg.part_bytes) if worth_splitting(shard) else None
        if parts is None:
            items.append(shard)
            continue
        skipped = prepare_parts(shard, cfg)
        if skipped:
            records.append(skipped)
            continue
        log.info("%s: %d parts of about %d MB, in parallel", shard.path, len(parts),
                 parts[0].size >> 20)
        items += parts
        split_shards[shard.path] = shard
    return items, split_shards


def reads_ahead(cfg: IngestConfig, tasks: int) -> bool:
    """Whether each task reads its shard ahead of its parsing, in a thread of its own
    (``etl.shards.read_ahead``): only where a core would otherwise wait, that is on
    local worker processes when there are fewer tasks than workers may run (one shard
    that cannot split, on two cores), or in this process (``synchronous``) on a machine
    of more than one core. With a task for every core, a second thread per task would
    only take turns with the other tasks (and hold more batches)."""
    if cfg.scheduler == "processes":
        return tasks < (cfg.workers or workers.usable_cores())
    return cfg.scheduler == "synchronous" and (cfg.workers or workers.usable_cores()) > 1


def _process(item: Shard | Part, cfg: IngestConfig) -> dict:
    return process_part(item, cfg) if isinstance(item, Part) else process_shard(item, cfg)


def _announce(tasks: int, cfg: IngestConfig) -> None:
    """Log how many local workers run the tasks (event ``workers``)."""
    named = {"processes": ("worker process", "worker processes"), "threads": ("thread", "threads")}
    n = 1 if cfg.scheduler == "synchronous" else workers.pool_size(cfg.workers, tasks)
    what = f"{tasks} task{'s' if tasks != 1 else ''}"
    where = f"on {n} {named[cfg.scheduler][n != 1]}" if cfg.scheduler in named \
        else "in this process"
    event("workers", f"{what} {where}", scheduler=cfg.scheduler, workers=n, tasks=tasks)


def _outside(shards: list[Shard], out: str) -> list[Shard]:
    """Never read our own output back as input (``etl ingest data/ --out data/processed``)."""
    if "://" in out:
        return shards
    root = os.path.join(os.path.abspath(out), "")
    kept = [s for s in shards if not os.path.abspath(s.path).startswith(root)]
    if shards and not kept:
        raise ConfigError(f"every input lies inside the output folder {out}")
    return kept


WORKER_BYTES = 300 << 20  # a worker's own peak at the default batch size, a zstd window
                          # aside (README: 140-165 MiB measured, with room to spare)
WINDOW_PEEKS = 64         # shard headers read for their zstd window, biggest shards first


def worker_bytes(batch_bytes: int) -> int:
    """A worker's own peak memory, a zstd window aside: 300 MiB, or 4 batches more when
    they are big (one zst shard, synchronous, read in turn, peak RSS: 176, 250, 355 and
    452 MiB at 8, 32, 64 and 128 MiB batches), and what reading ahead holds besides:
    ``READ_AHEAD_BYTES`` (at least one batch) waiting, and one batch being read."""
    ahead = max(READ_AHEAD_BYTES, batch_bytes) + batch_bytes
    return max(WORKER_BYTES, (150 << 20) + 4 * batch_bytes + ahead)


def fit_memory(files: list[Shard], cfg: IngestConfig, cores: int | None = None,
               available: int | None = None) -> IngestConfig:
    """``cfg`` with fewer local workers than cores when that many would not fit in the
    memory this process may still take (``available``, else ``workers.memory_available``):
    each worker holds its own batches and writers and, for a zstd shard, its window (up
    to 2 GiB with ``--long=31``; the biggest local shards' first frames are read). A
    count the user gave is kept as given. ``cores``: else ``workers.usable_cores``."""
    if cfg.workers is not None or cfg.scheduler not in ("processes", "threads") or not files:
        return cfg
    cores = cores or workers.usable_cores()
    available = available or workers.memory_available()
    if cores < 2 or available is None:
        return cfg
    local = [s for s in _biggest_first(files) if "://" not in s.path][:WINDOW_PEEKS]
    window = max((zstd_window(s) for s in local), default=0)
    own = worker_bytes(cfg.batch_bytes)  # the command's process takes about as much
    fit = max(1, (available - own) // (own + window))
    if fit >= cores:
        return cfg
    event("workers_capped", f"{fit} worker{'s' if fit != 1 else ''} instead of {cores}: "
          f"{available >> 20} MiB of memory left, and each worker may take "
          f"{(own + window) >> 20} MiB ({window >> 20} MiB of it a zstd window); "
          "--workers overrides", level=logging.WARNING, workers=fit, cores=cores,
          available=available, window=window)
    return replace(cfg, workers=fit)


def run_ingest(inputs: list[str], cfg: IngestConfig) -> dict:
    """Find the shards, ingest each once, and return the run report (see README)."""
    start = time.monotonic()
    shards = _outside(find_shards(inputs, cfg.stdin_name), cfg.out)
    files = [s for s in shards if not s.is_stdin]
    stdin = [s for s in shards if s.is_stdin]
    out = Folder(cfg.out)
    out.makedirs(out.root)
    records = [] if cfg.force else [r for r in (quick_skip(s, cfg.out) for s in files) if r]
    done = {r["path"] for r in records}
    files = [s for s in files if s.path not in done]
    cfg = fit_memory(files, cfg)
    total = sum(s.size or 0 for s in files)
    items, split_shards = _plan(files, cfg, records)
    cfg = replace(cfg, read_ahead=reads_ahead(cfg, len(items)))
    bar = ProgressBar(cfg.out, total, cfg.progress)
    with bar, ThreadPoolExecutor(1) as pool:
        from_stdin = []

        def started() -> None:  # our threads start after the workers: they may be forked
            bar.start()
            from_stdin.extend(pool.submit(process_shard, s, cfg) for s in stdin)

        if items:
            results = _compute(items, cfg, True, started)
            records += [r for r in results if "part" not in r]
            for path, shard in split_shards.items():
                records.append(finish_parts(shard, [r for r in results if "part" in r
                                                    and r["path"] == path], cfg, start))
        else:
            started()
        records += [f.result() for f in from_stdin]
    order = {s.path: i for i, s in enumerate(shards)}
    records.sort(key=lambda r: order[r["path"]])
    return build_report(records, time.monotonic() - start)
