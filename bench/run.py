"""Benchmarks: ``etl ingest`` against DuckDB, Polars and decompression alone, side by side.

    python bench/run.py            make bench: builds bench/data/full once (1.1 GB of text
                                   in 6 codecs), runs every codec, the memory and load
                                   checks, and writes bench/RESULTS.md
    python bench/run.py --quick    make bench-quick: ~220 MB of zst and xz; prints etl's
                                   zst ratio to DuckDB and xz ratio to the 2-core limit

Every step runs in its own measuring wrapper (bench/measure.py), one after another,
so all ratios come from one run on the same (shared, noisy) machine. Each codec's
steps run in ``--repeat`` interleaved rounds and each step keeps its fastest run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the bench package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import data, jobs, pg, report  # noqa: E402
from bench.measure import measure  # noqa: E402
from bench.report import Result  # noqa: E402

ROOT = data.ROOT
RESULTS = ROOT / "bench" / "RESULTS.md"
DIGEST_COLUMNS = "id, created_utc, subreddit, author, score, body"


def _remove(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _parquet_glob(out: Path) -> str:
    return str(out / "*=*" / "*.parquet")  # the partition folders, not _rejects/


def output_rows(out: Path, kind: str) -> tuple[int, str | None]:
    """(rows, content digest) of a step's output: a Parquet folder or a DuckDB file."""
    import duckdb

    if kind == "load":
        with duckdb.connect(str(out), read_only=True) as con:
            return con.execute("SELECT count(*) FROM comments").fetchone()[0], None
    if not list(out.glob("*=*/*.parquet")):
        return 0, None
    with duckdb.connect() as con:
        rows, digest = con.execute(
            f"SELECT count(*), sum(hash({DIGEST_COLUMNS})) FROM read_parquet(?)",
            [_parquet_glob(out)]).fetchone()
    return rows, str(digest)


def _check_etl(step: jobs.Step, rows: int) -> str | None:
    """etl's own count (report rows_written) must equal the rows found in its Parquet."""
    written = json.loads(step.report.read_text())["rows_written"]
    if written != rows:
        return f"report says rows_written {written:,}, Parquet holds {rows:,}"
    return None


def _printed_count(argv: tuple[str, ...]) -> int:
    done = subprocess.run(argv, capture_output=True, text=True, check=True, cwd=ROOT)
    return int(done.stdout.strip().splitlines()[-1])


def run_step(step: jobs.Step) -> Result:
    """Run one step in a fresh output folder; measure it; count what it wrote."""
    if step.skipped:
        return Result(step)
    for path in (step.out, step.report, step.timing):
        _remove(path)
    if step.setup:
        subprocess.run(step.setup, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    m = measure(list(step.argv) if step.argv else None, step.shell, cwd=str(ROOT),
                env={**os.environ, **step.env})
    if m.returncode != 0:
        return Result(step, error=f"failed: exit code {m.returncode}")
    seconds = json.loads(step.timing.read_text())["seconds"] if step.timing else m.seconds
    rows = digest = error = None
    if step.count:
        rows = _printed_count(step.count)
    elif step.out is not None:
        rows, digest = output_rows(step.out, step.kind)
        if step.kind in ("etl", "etl-variant", "memory"):
            error = _check_etl(step, rows)
    return Result(step, seconds, m.max_rss_mib, m.tree_mib, rows, digest, error,
                  m.cpu_seconds, m.others_busy)


def run_steps(steps: list[jobs.Step], repeat: int) -> list[Result]:
    """``repeat`` rounds over all ``steps`` (interleaved, so a noisy spell of the shared
    machine hits every tool alike); each step keeps its fastest run."""
    best: dict[int, Result] = {}
    rounds: dict[int, list[float | None]] = {i: [] for i in range(len(steps))}
    for round_no in range(1, repeat + 1):
        for i, step in enumerate(steps):
            if step.skipped and i in best:
                continue
            r = run_step(step)
            print(_progress_line(r, f"{round_no}/{repeat}"), flush=True)
            rounds[i].append(r.seconds)
            if i not in best or _faster(r, best[i]):
                best[i] = r
    return [replace(best[i], rounds=tuple(rounds[i])) for i in range(len(steps))]


def _faster(new: Result, old: Result) -> bool:
    if new.seconds is None:
        return False
    return old.seconds is None or new.seconds < old.seconds


def _progress_line(r: Result, round_no: str) -> str:
    if r.seconds is None:
        return f"{round_no} {r.step.codec:<9} {r.step.tool:<44} {r.error or r.step.note}"
    speed = f"{r.mb_per_s:7.0f} MB/s" if r.mb_per_s else " " * 12
    rows = f"{r.rows:>10,} rows" if r.rows is not None else ""
    return (f"{round_no} {r.step.codec:<9} {r.step.tool:<44} {r.seconds:7.1f} s {speed} "
            f"{r.cores or 0:4.2f} cores, others {r.others_busy or 0:4.0%} "
            f"{r.max_rss_mib or 0:6.0f} MiB {rows} {r.error or ''}")


def warm(files: list[Path]) -> None:
    """Read the inputs once, so no tool pays for the disk and the next one for the cache."""
    for f in files:
        with open(f, "rb") as fh:
            while fh.read(8 << 20):
                pass


def _version(cmd: list[str], starts: str = "") -> str:
    """The first line of ``cmd``'s output (the first that starts with ``starts``)."""
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        return "not installed"
    text = [line for line in (out.stdout or out.stderr).strip().splitlines()
            if line.startswith(starts)]
    return text[0].strip("* ") if text else "?"


def machine_lines() -> list[str]:
    import duckdb
    import pyarrow

    try:
        import polars
        polars_version = polars.__version__
    except ImportError:
        polars_version = "not installed"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    tools = ", ".join(_version([t, "--version"]) for t in ("zstd", "xz", "gzip", "pigz"))
    bzip2 = re.search(r"Version ([\d.]+)", _version(["bzip2", "--help"]))
    xz_lib = _version(["xz", "--version"], "liblzma")
    own = _version([sys.executable, str(ROOT / jobs.DECODERS["xz"]), "--version"])
    own_bz2 = _version([sys.executable, str(ROOT / jobs.DECODERS["bz2"]), "--version"],
                       "indexed_bzip2")
    return [f"- machine: {os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, shared and noisy; "
            f"Python {platform.python_version()}",
            f"- DuckDB {duckdb.__version__}, Polars {polars_version}, PyArrow "
            f"{pyarrow.__version__}; {tools}; bzip2 {bzip2.group(1) if bzip2 else '?'}",
            f"- etl decodes xz with {own}; the `xz` tool here with {xz_lib}",
            f"- etl decodes bz2 files with {own_bz2} (one thread); the `bzip2` tool with "
            "libbz2"]


def results_path(ds: data.Dataset) -> Path:
    return data.DATA / f"results-{ds.name}.json"


def save_raw(ds: data.Dataset, results: list[Result]) -> None:
    raw = [{**asdict(r), "mb_per_s": r.mb_per_s} for r in results]
    results_path(ds).write_text(json.dumps(raw, indent=1, default=str))


def run_pg_load(parquet: Path, work: Path, repeat: int) -> list[Result]:
    """The Postgres rows: a throwaway cluster, the rows as CSV once, both loads side by side."""
    from etl.schema import load_schema

    def skipped(why: str) -> list[Result]:
        return [Result(jobs.Step("load", "etl load → Postgres", "pgload",
                                 note=f"skipped: {why}"))]
    if why := pg.unavailable():
        return skipped(why)
    schema = load_schema(jobs.SCHEMA)
    columns = [f.name for f in schema.fields]
    csv = work / "load-rows.csv"
    pg.export_csv(parquet, columns, csv)
    try:
        server = pg.start_cluster()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        return skipped(f"cannot start a PostgreSQL server: {exc}")
    try:
        return run_steps(jobs.pg_load_steps(parquet, csv, server.port, pg.ddl(schema), columns),
                         repeat)
    finally:
        server.stop()


def run_spool(ds: data.Dataset, work: Path, repeat: int) -> list[Result]:
    """The spooler rows: the plain shards as 8 streams, to etl spool and to socat."""
    missing = [t for t in ("ncat", "socat", "zstd") if shutil.which(t) is None]
    if missing:
        return [Result(jobs.Step("spool", "etl spool", "spool",
                                 note=f"skipped: {', '.join(missing)} not installed"))]
    streams = data.spool_streams(ds)
    warm(streams)
    return run_steps(jobs.spool_steps(streams, work), repeat)


def run_full(args) -> list[Result]:
    codecs = tuple(args.codecs.split(",")) if args.codecs else data.CODECS
    ds = replace(data.full_dataset(), codecs=codecs)  # build and describe only these
    data.build(ds, four_x=not args.no_memory and "zst" in codecs)
    work = data.DATA / "work"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for codec in codecs:
        warm(ds.files(codec))
        steps = jobs.codec_steps(ds, codec, work, ("limit", "etl", "etl-variant", "duckdb",
                                                   "polars"))
        results += run_steps(steps, args.repeat)
    if not args.no_memory and "zst" in codecs:
        warm([ds.files("zst")[0], ds.four_x()])
        results += run_steps(jobs.memory_steps(ds, work), 1)
        big = jobs.big_shard_steps(ds, work)
        warm([Path(s.argv[s.argv.index("ingest") + 1]) for s in big])
        results += run_steps(big, args.repeat)
    etl_zst = report.etl_of(results, "zst")
    if not args.no_load and etl_zst is not None:
        results += run_steps(jobs.load_steps(etl_zst.step.out, work), args.repeat)
        results += run_pg_load(etl_zst.step.out, work, args.repeat)
    if not args.no_spool:
        results += run_spool(ds, work, args.repeat)
    save_raw(ds, results)
    text = report.render(ds, results, codecs, machine_lines(), args.repeat,
                         " ".join(["python bench/run.py", *sys.argv[1:]]))
    tmp = RESULTS.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, RESULTS)
    print(f"\nwrote {RESULTS.relative_to(ROOT)}")
    print("\n".join(report.target_lines(results, codecs)))
    return results


def run_quick(args) -> list[Result]:
    ds = data.quick_dataset()
    data.build(ds)
    work = data.DATA / "work-quick"
    work.mkdir(parents=True, exist_ok=True)
    results = []
    for codec, tools in (("zst", ("etl", "duckdb")), ("xz", ("etl",))):
        warm(ds.files(codec))
        steps = jobs.codec_steps(ds, codec, work, tools)
        if codec == "xz":
            steps = [s for s in jobs.limit_steps(ds, codec, ds.plain_bytes())
                     if s.kind in ("limit2", "decoder2")] + steps
        results += run_steps(steps, args.repeat)
    save_raw(ds, results)
    print(f"\n{ds.plain_bytes() / 1e6:.0f} MB in {ds.shards} shards, best of {args.repeat}:")
    print("\n".join(report.quick_lines(results)))
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="zst and xz on ~220 MB (make bench-quick)")
    p.add_argument("--repeat", type=int, help="interleaved rounds, each step's fastest run "
                   "kept (default 3)")
    p.add_argument("--codecs", help=f"comma-separated subset of {','.join(data.CODECS)}")
    p.add_argument("--no-memory", action="store_true", help="skip the 1x/4x memory runs")
    p.add_argument("--no-load", action="store_true", help="skip the load comparisons")
    p.add_argument("--no-spool", action="store_true", help="skip the spooler comparison")
    args = p.parse_args()
    args.repeat = args.repeat or 3
    start = time.monotonic()
    (run_quick if args.quick else run_full)(args)
    print(f"\nbench took {time.monotonic() - start:.0f} s")


if __name__ == "__main__":
    main()
