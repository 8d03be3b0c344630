"""The ``etl`` command: the only reader of argv and the environment.

Exit codes: 0 every shard ok or skipped; 2 usage or config error, or the database is
unreachable; 3 some shard failed; 4 the database refused a load (nothing of it committed).
spool: 3 = writing shards failed (the .part is recovered at the next start).
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import threading
import time

from etl.errors import ConfigError, EtlError, LoadError, UnreachableError
from etl.logs import event, setup_logging
from etl.spool import cli as spool_cli  # light: no asyncio server until run()

EXIT_OK, EXIT_USAGE, EXIT_FAILED, EXIT_LOAD = 0, 2, 3, 4
DEFAULT_DB = "duckdb:///data/warehouse.duckdb"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="etl", description="Compressed NDJSON shards -> typed, "
                                "partitioned Parquet (and a warehouse).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    ing = sub.add_parser("ingest", help="shards -> typed, partitioned Parquet",
                         description="Read shards (files, globs, directories, fsspec URLs, - for "
                         "stdin), parse, clean, filter and type them by a schema, write Parquet.")
    _ingest_args(ing)

    run = sub.add_parser("run", help="ingest, then load into the warehouse, with one report",
                         description="etl ingest followed by etl load of the same folder.")
    _ingest_args(run)
    run.add_argument("--db", default=DEFAULT_DB, help=f"SQLAlchemy URL (default {DEFAULT_DB})")
    _batch_rows_arg(run)
    run.add_argument("--every", metavar="DURATION",
                     help="run again every DURATION (30s, 5m, 1h) until interrupted, for "
                          "places without cron")

    load = sub.add_parser("load", help="load ingested Parquet into DuckDB or Postgres, once",
                          description="Upsert every finished shard's Parquet not loaded yet.")
    load.add_argument("--from", dest="source", required=True, metavar="DIR",
                      help="the ingest output folder")
    load.add_argument("--schema", required=True, help="schema TOML file")
    load.add_argument("--db", default=DEFAULT_DB, help=f"SQLAlchemy URL (default {DEFAULT_DB})")
    _batch_rows_arg(load)
    load.add_argument("--report", help="write the load report as JSON to this file")
    load.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                      help="when another run holds the folder, wait this long (default 0)")
    _log_args(load)

    st = sub.add_parser("status", help="shards done/failed/pending, files loaded/pending, rows",
                        description="What has been ingested and loaded so far.")
    st.add_argument("inputs", nargs="*", metavar="INPUT",
                    help="shards to check for pending work (optional)")
    st.add_argument("--out", required=True, help="the ingest output folder")
    st.add_argument("--db", help="SQLAlchemy URL of the warehouse (optional)")
    st.add_argument("--json", action="store_true", help="print JSON")

    inf = sub.add_parser("infer", help="read a sample of shards, print a schema TOML",
                         description="Infer a schema from a sample: etl infer SHARD... > s.toml")
    inf.add_argument("inputs", nargs="+", metavar="SHARD")
    inf.add_argument("--lines", type=int, default=10_000, help="rows to sample (default 10000)")

    smp = sub.add_parser("sample", help="generate Pushshift-like sample shards",
                         description="Generate realistic Reddit comment shards with the real "
                         "dumps' quirks and a share of bad lines.")
    smp.add_argument("--out", required=True)
    smp.add_argument("--lines", type=int, required=True, help="total lines over all shards")
    smp.add_argument("--shards", type=int, default=1)
    smp.add_argument("--codec", default="zst", choices=["zst", "gz", "xz", "bz2", "none"])
    smp.add_argument("--bad-rate", type=float, default=0.0)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--name", default="RC_2015-01", help="file name stem (default RC_2015-01)")
    smp.add_argument("--start", default="2015-01-01", help="first day of created_utc (UTC)")
    smp.add_argument("--days", type=int, default=31)
    smp.add_argument("--zstd-long", action="store_true",
                     help="2 GiB zstd window, like Pushshift's `zstd --long=31` dumps")
    smp.add_argument("--level", type=int, help="compression level")
    spool_cli.add_parser(sub)
    return p


def _ingest_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--schema", required=True, help="schema TOML file (see README)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--report", help="write the run report as JSON to this file")
    p.add_argument("--scheduler", default=os.environ.get("ETL_SCHEDULER"),
                   help="synchronous|threads|processes|tcp://HOST:PORT "
                        "(default: $ETL_SCHEDULER, else processes on 2+ cores)")
    p.add_argument("--batch-mb", type=float, default=8.0,
                   help="uncompressed MB per line batch (bounds memory per worker; default 8)")
    p.add_argument("--max-line-mb", type=float, default=None,
                   help="the longest line read whole; a longer one is rejected as too_long, "
                        "its first 64 KiB kept (default 64, or --batch-mb + 4 if more)")
    p.add_argument("--part-mb", type=float, default=128.0,
                   help="cut a big shard that can split (plain, multi-frame zstd, multi-block "
                        "xz, bgzip) into parts of about this many compressed MB, run in "
                        "parallel, when that keeps cores busy (fewer shards than cores, or "
                        "this one over a core's share); 0 never splits (default 128)")
    p.add_argument("--workers", type=int, metavar="N",
                   default=os.environ.get("ETL_WORKERS") or None,
                   help="local worker processes (or threads) at most (default: "
                        "$ETL_WORKERS, else one per core this process may use: its CPU "
                        "affinity and its cgroup's CPU quota, as in a container)")
    p.add_argument("--force", action="store_true", help="redo shards already finished")
    p.add_argument("--stdin-name", default="stdin",
                   help="identity of '-' (output file names derive from it; default stdin)")
    p.add_argument("--wait", type=float, default=0.0, metavar="SECONDS",
                   help="when another run holds --out, wait this long for it, else exit 0 "
                        "saying so (default 0)")
    _log_args(p)


def _log_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar or summary")
    p.add_argument("--log-json", action="store_true",
                   help="machine-readable logs: one JSON object per line on stderr")


def _ingest(args) -> int:
    from etl.lock import Busy, run_lock

    if getattr(args, "every", None):
        return _every(args)
    try:
        with run_lock(args.out, args.wait):
            return _ingest_once(args)
    except Busy as busy:
        event("busy", f"{busy}; nothing to do", **busy.holder)
        return EXIT_OK


def _every(args) -> int:
    """``etl run --every 5m``: run, sleep to the next period, repeat until interrupted."""
    period = parse_duration(args.every)
    args.every = None
    while True:
        started = time.monotonic()
        try:
            code = _ingest(args)
            event("cycle", f"run finished with exit code {code}", exit_code=code)
        except EtlError as exc:  # a bad cycle (database down...) must not end the loop
            event("cycle", f"run failed: {exc}", level=logging.ERROR, error=str(exc))
        time.sleep(max(0.0, period - (time.monotonic() - started)))


def parse_duration(text: str) -> float:
    """Seconds in ``30s``, ``5m``, ``2h``, ``1d`` or a plain number of seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1]) * units[text[-1]] if text[-1:] in units else float(text)
    except (ValueError, IndexError):
        raise ConfigError(f"--every {text!r}: expected a duration like 30s, 5m, 2h") from None
    if value <= 0:
        raise ConfigError(f"--every {text!r}: must be positive")
    return value


def _batch_rows_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-rows", type=_count, default=None, metavar="N",
                   help="most rows per load transaction; pending shards load together up "
                        "to it, a bigger shard alone (default 5000000; 0: one shard each)")


def _count(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number of rows >= 0, got {text!r}")
    return n


def _ingest_once(args) -> int:
    from etl import workers

    for name, value in workers.PROCESS_ENV.items():  # before numpy and pyarrow load
        os.environ.setdefault(name, value)

    scheduler = args.scheduler or workers.default_scheduler(args.workers)
    if scheduler == "processes":
        workers.start_early()  # run() has begun it, unless its guess missed: the server
    elif scheduler in ("synchronous", "threads"):  # the shards are read in this process:
        workers.worker_start()  # start it as a worker starts (no pandas import: 0.3 s)
    try:
        return _ingest_started(args, workers.stop)
    finally:
        workers.stop()


def _ingest_started(args, done_with_workers) -> int:
    from etl.config import IngestConfig
    from etl.workers import default_scheduler
    from etl.pipeline import run_ingest
    from etl.report import exit_code, format_summary
    from etl.schema import load_schema

    cfg = IngestConfig(schema=load_schema(args.schema), out=args.out,
                       scheduler=args.scheduler or default_scheduler(args.workers),
                       workers=args.workers,
                       batch_bytes=int(args.batch_mb * (1 << 20)), force=args.force,
                       stdin_name=args.stdin_name, part_bytes=int(args.part_mb * (1 << 20)),
                       max_line_bytes=None if args.max_line_mb is None
                       else int(args.max_line_mb * (1 << 20)),
                       progress=not args.quiet and sys.stderr.isatty())
    report = run_ingest(args.inputs, cfg)
    done_with_workers()  # before a load: the workers' server is not needed there
    code = exit_code(report)
    _log_shards(report)
    if args.command == "run":
        from etl.load import run_load

        try:
            report["load"] = run_load(cfg.out, cfg.schema, args.db, args.batch_rows)
        except LoadError as exc:  # the ingest part of the report is still worth keeping
            report["load"] = {"error": str(exc)}
            if args.report:
                _write_json(args.report, report)
            raise
    if args.report:
        _write_json(args.report, report)
    totals = {k: v for k, v in report.items() if k != "shards"}
    if args.log_json:
        event("done", f"{args.command} finished", exit_code=code, **totals)
    elif not args.quiet:
        print(format_summary(report), file=sys.stderr)
    return code


def _log_shards(report: dict) -> None:
    for shard in report["shards"]:
        level = logging.ERROR if shard["status"] == "failed" else logging.INFO
        if shard["status"] != "skipped" or logging.getLogger("etl").isEnabledFor(logging.DEBUG):
            event("shard", f"{shard['status']}: {shard['error'] or shard['path']}", level=level,
                  **shard)  # an error names its shard


def _load(args) -> int:
    from etl.load import run_load
    from etl.report import format_load
    from etl.schema import load_schema

    from etl.lock import Busy, run_lock

    if not os.path.isdir(args.source):
        raise ConfigError("no such ingest output folder", args.source)
    schema = load_schema(args.schema)
    try:
        with run_lock(args.source, args.wait):
            report = run_load(args.source, schema, args.db, args.batch_rows)
    except Busy as busy:
        event("busy", f"{busy}; nothing to do", **busy.holder)
        return EXIT_OK
    if args.report:
        _write_json(args.report, report)
    if args.log_json:
        event("done", "load finished", **report)
    elif not args.quiet:
        print(format_load(report), file=sys.stderr)
    return EXIT_OK


def _status(args) -> int:
    from etl.load import status
    from etl.report import format_status

    result = status(args.out, args.db, args.inputs or None)
    print(json.dumps(result, indent=2) if args.json else format_status(result))
    return EXIT_OK


def _infer(args) -> int:
    from etl.infer import infer_schema

    if args.lines < 1:
        raise ConfigError("--lines must be at least 1")
    sys.stdout.write(infer_schema(args.inputs, args.lines))
    return EXIT_OK


def _sample(args) -> int:
    from etl.sample import generate

    paths = generate(args.out, lines=args.lines, shards=args.shards, codec=args.codec,
                     bad_rate=args.bad_rate, seed=args.seed, name=args.name, start=args.start,
                     days=args.days, zstd_long=args.zstd_long, level=args.level)
    for p in paths:
        print(p)
    return EXIT_OK


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


COMMANDS = {"ingest": _ingest, "run": _ingest, "load": _load, "status": _status,
            "infer": _infer, "sample": _sample, "spool": spool_cli.run}


def _exit_for(exc: EtlError) -> tuple[int, str]:
    """Exit code and message head for an error (see the module docstring)."""
    if isinstance(exc, (ConfigError, UnreachableError)):
        return EXIT_USAGE, "error"
    if isinstance(exc, LoadError):
        return EXIT_LOAD, "load failed"
    return EXIT_FAILED, "error"


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``etl`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    setup_logging(getattr(args, "log_json", False), getattr(args, "quiet", False))
    try:
        return COMMANDS[args.command](args)
    except EtlError as exc:
        code, what = _exit_for(exc)
        print(f"etl {args.command}: {what}: {exc}", file=sys.stderr)
        return code
    except KeyboardInterrupt:
        print(f"etl {args.command}: interrupted; finished shards are kept, rerun to go on",
              file=sys.stderr)
        return 130


def _asks_for_local_workers(argv: list[str]) -> bool:
    """Whether ``argv`` looks like an ingest (or run) on local worker processes: a guess
    made before argparse, so the workers' fork server can start sooner. The parsed
    arguments decide; a server they do not want is stopped."""
    if not argv or argv[0] not in ("ingest", "run") or "-h" in argv or "--help" in argv:
        return False
    from etl import workers

    given = {}
    for i, arg in enumerate(argv):
        for flag in ("--scheduler", "--workers"):
            if arg == flag and i + 1 < len(argv):
                given[flag] = argv[i + 1]
            elif arg.startswith(flag + "="):
                given[flag] = arg.partition("=")[2]
    count = given.get("--workers", os.environ.get("ETL_WORKERS", ""))
    count = int(count) if count.strip().isdigit() else None
    scheduler = given.get("--scheduler") or os.environ.get("ETL_SCHEDULER")
    return (scheduler or workers.default_scheduler(count)) == "processes"


def run() -> None:
    """The ``etl`` console script: ``main``, then a quick exit.

    For an ingest on local worker processes, the workers' start comes first, before the
    parser is built: this process imports what they need and forks them when the pool
    starts (``workers.start_early(here=True)``; where it cannot, their fork server
    starts now). Those imports are the path to the first task. Once a command has
    finished, only the interpreter's own teardown of every module (pyarrow, numpy, ...)
    is left: about 0.1 s, measured. When no other thread runs, the exit handlers run and
    the standard streams are flushed, and the process ends there. Tests and the Python
    API call ``main``, which returns as usual (and keeps the fork server).
    """
    early = _asks_for_local_workers(sys.argv[1:])
    if early:
        from etl import workers

        workers.start_early(here=True)  # ready to fork them, or their fork server started
    try:
        code = main()
    finally:
        if early:  # stopped already unless the parsed arguments did not want it
            workers.stop()
    if threading.active_count() == 1:
        atexit._run_exitfuncs()  # logging's flush, multiprocessing's reaping, ...
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or a broken pipe: nothing to save
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
