"""What the benchmark runs, per codec: pure builders of ``Step`` objects, no I/O.

Per codec: the decompression-only limit on one core (the reference tool over every
shard in turn) and on two cores (two of them at once, over alternate shards, as
etl's two workers split the shards), then ``etl ingest`` with the processes
scheduler, then DuckDB (``read_ndjson`` over a glob, or through a pipe from the
reference tool where it cannot read the codec), then Polars where it can read the
codec. A step with no command is a skipped row: its ``note`` says why.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench import pg
from bench.data import ROOT, SUFFIXES, Dataset

BENCH = ROOT / "bench"
SCHEMA = BENCH / "bench_schema.toml"
ENGINES = BENCH / "engines.py"
SPOOL = BENCH / "spool.py"
QUIET = "SET client_min_messages = warning;"  # no NOTICE for a table not there yet
ETL = (sys.executable, "-m", "etl.cli")
PYTHON = sys.executable

# the reference decompressor per codec: the limit rows and the pipe into DuckDB use it
DECOMPRESS = {
    "zst": "zstd -dcq", "zst-long": "zstd -dcq --long=31", "gz": "gzip -dc",
    "xz": "xz -dc -T1", "bz2": "bzip2 -dc", "none": "cat",
}
# faster stand-ins measured too when installed; the limit is the fastest 2-core row
ALTERNATIVES = {"gz": ("pigz", "pigz -dc")}
# the decoder etl itself links, where it is not the tool's (xz: lzma-cf's liblzma 5.8 against
# Debian 12's xz 5.4; bz2: indexed_bzip2 against libbz2): decompression alone through it,
# shown beside the limit, not judged
DECODERS = {"xz": "bench/decode.py", "bz2": "bench/decode.py"}
# extra etl rows, shown but not judged: how etl does with a setting changed by environment
# (name -> environment), e.g. {"etl, threads": {"ETL_SCHEDULER": "threads"}}
ETL_VARIANTS: dict[str, dict[str, str]] = {}
DUCKDB_READS = {"zst", "gz", "none"}  # codecs read_ndjson opens itself
POLARS_READS = {"zst", "gz", "none"}
NOT_READ = {
    ("duckdb", "xz"): "DuckDB's read_ndjson has no xz reader: through a pipe",
    ("duckdb", "bz2"): "DuckDB's read_ndjson has no bzip2 reader: through a pipe",
    ("duckdb", "zst-long"): "DuckDB refuses the 2 GiB window (\"Frame requires too much "
                            "memory for decoding\"): through a pipe",
    ("polars", "xz"): "skipped: scan_ndjson does not decompress xz (it parses the compressed "
                      "bytes and fails: \"error parsing line\")",
    ("polars", "bz2"): "skipped: scan_ndjson does not decompress bzip2 (it parses the "
                       "compressed bytes and fails: \"error parsing line\")",
    ("polars", "zst-long"): "skipped: scan_ndjson refuses the 2 GiB window (\"Frame requires "
                            "too much memory for decoding\")",
}


@dataclass(frozen=True)
class Step:
    """One command to time; ``kind``: etl, etl-variant, engine, limit1, limit2, decoder1,
    decoder2, memory, bigshard, load, pgload, spool."""

    codec: str
    tool: str
    kind: str
    argv: tuple[str, ...] | None = None
    shell: str | None = None
    out: Path | None = None  # Parquet folder whose rows are counted afterwards
    report: Path | None = None  # etl's run report
    note: str = ""
    bytes_in: int = 0  # uncompressed input bytes: the MB/s numerator
    env: dict = field(default_factory=dict)
    setup: tuple[str, ...] | None = None  # run before, untimed (a fresh table)
    count: tuple[str, ...] | None = None  # run after: prints the rows (or lines) it stored
    timing: Path | None = None  # where the command writes the seconds of its measured part

    @property
    def skipped(self) -> bool:
        return self.argv is None and self.shell is None


def _q(paths) -> str:
    return " ".join(shlex.quote(str(p)) for p in paths)


def etl_step(codec: str, files: list[Path], work: Path, bytes_in: int,
             scheduler: str = "processes", tool: str = "etl", kind: str = "etl") -> Step:
    """``etl ingest`` of ``files`` into a fresh folder under ``work``."""
    name = f"{kind}-{codec}-{len(files)}"
    out, report = work / name, work / f"{name}.json"
    argv = (*ETL, "ingest", *map(str, files), "--schema", str(SCHEMA), "--out", str(out),
            "--report", str(report), "--scheduler", scheduler, "--quiet")
    return Step(codec, tool, kind, argv=argv, out=out, report=report, bytes_in=bytes_in)


def duckdb_step(ds: Dataset, codec: str, work: Path, bytes_in: int) -> Step:
    """DuckDB over a glob of the shards, or reading a pipe from the reference tool."""
    out = work / f"duckdb-{codec}"
    job = (PYTHON, str(ENGINES), "duckdb", "--out", str(out), "--source")
    if codec in DUCKDB_READS:
        glob = str(ds.root / codec / f"*.ndjson{SUFFIXES[codec]}")
        return Step(codec, "duckdb", "engine", argv=(*job, glob), out=out, bytes_in=bytes_in)
    shell = f"{DECOMPRESS[codec]} {_q(ds.files(codec))} | {_q(job)} /dev/stdin"
    return Step(codec, f"duckdb (pipe from {DECOMPRESS[codec].split()[0]})", "engine",
                shell=shell, out=out, note=NOT_READ[("duckdb", codec)], bytes_in=bytes_in)


def polars_step(ds: Dataset, codec: str, work: Path, bytes_in: int) -> Step:
    if codec not in POLARS_READS:
        return Step(codec, "polars", "engine", note=NOT_READ[("polars", codec)])
    out = work / f"polars-{codec}"
    argv = (PYTHON, str(ENGINES), "polars", "--out", str(out), "--source",
            *map(str, ds.files(codec)))
    return Step(codec, "polars", "engine", argv=argv, out=out, bytes_in=bytes_in)


def limit_shell(command: str, files: list[Path], workers: int) -> str:
    """``command`` over ``files`` into /dev/null, split round-robin over ``workers`` at once."""
    groups = [files[i::workers] for i in range(workers) if files[i::workers]]
    jobs = [f"{command} {_q(group)} > /dev/null" for group in groups]
    return jobs[0] if len(jobs) == 1 else " & ".join(jobs) + " & wait"


def limit_steps(ds: Dataset, codec: str, bytes_in: int, have=shutil.which) -> list[Step]:
    """Decompression alone: 1 core, 2 cores, 2 cores of a faster tool where installed,
    and 1 and 2 cores of the decoder etl links where it is not the tool's."""
    files = ds.files(codec)
    tool = DECOMPRESS[codec]
    steps = [Step(codec, f"decompress, 1 core ({tool})", "limit1",
                  shell=limit_shell(tool, files, 1), bytes_in=bytes_in),
             Step(codec, f"decompress, 2 cores (2 × {tool})", "limit2",
                  shell=limit_shell(tool, files, 2), bytes_in=bytes_in)]
    if codec in ALTERNATIVES and have(ALTERNATIVES[codec][0]):
        alt = ALTERNATIVES[codec][1]
        steps.append(Step(codec, f"decompress, 2 cores (2 × {alt})", "limit2",
                          shell=limit_shell(alt, files, 2), bytes_in=bytes_in))
    if codec in DECODERS:
        own = f"{shlex.quote(PYTHON)} {shlex.quote(str(ROOT / DECODERS[codec]))}"
        steps += [Step(codec, f"decompress, {n} core{'s' * (n > 1)} ({'2 × ' * (n > 1)}etl's "
                       f"decoder, {DECODERS[codec]})", f"decoder{n}",
                       shell=limit_shell(own, files, n), bytes_in=bytes_in) for n in (1, 2)]
    return steps


def codec_steps(ds: Dataset, codec: str, work: Path, tools: tuple[str, ...]) -> list[Step]:
    """Every step of one codec, in run order: limits, etl (and variants), DuckDB, Polars."""
    bytes_in = ds.plain_bytes()
    steps: list[Step] = []
    if "limit" in tools:
        steps += limit_steps(ds, codec, bytes_in)
    if "etl" in tools:
        steps.append(etl_step(codec, ds.files(codec), work, bytes_in))
    if "etl-variant" in tools:
        steps += [replace(etl_step(codec, ds.files(codec), work, bytes_in, tool=name,
                                   kind="etl-variant"), env=env)
                  for name, env in ETL_VARIANTS.items()]
    if "duckdb" in tools:
        steps.append(duckdb_step(ds, codec, work, bytes_in))
    if "polars" in tools:
        steps.append(polars_step(ds, codec, work, bytes_in))
    return steps


def memory_steps(ds: Dataset, work: Path) -> list[Step]:
    """etl, synchronous, on one zst shard (1x) and on all four in one file (4x)."""
    one = ds.files("zst")[0]
    steps = [etl_step("zst", [one], work, ds.plain_bytes(1), "synchronous",
                      "etl synchronous, 1 shard (1×)", "memory"),
             etl_step("zst", [ds.four_x()], work, ds.plain_bytes(), "synchronous",
                      "etl synchronous, 4 shards in one file (4×)", "memory")]
    # one stream each: the 4x file would otherwise split into parts
    return [replace(s, argv=s.argv + ("--part-mb", "0")) for s in steps]


def big_shard_steps(ds: Dataset, work: Path) -> list[Step]:
    """etl on one big file that splits, in parts (the default) and as one stream.

    The four zst shards as one file of four frames, and the plain shards as one file.
    """
    files = [("zst", ds.four_x(), "one zst file of 4 frames")]
    if "none" in ds.codecs:
        files.append(("none", ds.one_plain(), "one plain file"))
    steps = []
    for codec, path, what in files:
        for how, extra in (("in parts (--part-mb 128)", ()),
                           ("one stream (--part-mb 0)", ("--part-mb", "0"))):
            step = etl_step(codec, [path], work, ds.plain_bytes(), tool=f"etl, {what}, {how}",
                            kind="bigshard")
            steps.append(replace(step, argv=step.argv + extra))
    return steps


def load_steps(parquet: Path, work: Path) -> list[Step]:
    """``etl load`` of etl's zst output into DuckDB, and DuckDB's own CREATE TABLE AS."""
    etl_db, own_db = work / "load-etl.duckdb", work / "load-ctas.duckdb"
    etl = Step("load", "etl load → DuckDB", "load",
               argv=(*ETL, "load", "--from", str(parquet), "--schema", str(SCHEMA),
                     "--db", f"duckdb:///{etl_db}", "--quiet"), out=etl_db)
    # etl load upserts by key and records the files it loaded, one transaction per shard
    own = Step("load", "DuckDB CREATE TABLE AS SELECT * FROM read_parquet", "load",
               argv=(PYTHON, str(ENGINES), "ctas", "--parquet", str(parquet), "--db",
                     str(own_db)), out=own_db)
    return [etl, own]


def pg_load_steps(parquet: Path, csv: Path, port: int, table_ddl: str,
                  columns: list[str]) -> list[Step]:
    """``etl load`` of etl's zst output into Postgres, and ``psql \\copy`` of the same rows
    (as CSV) into an equivalent, empty table; each in its own database of the cluster."""
    etl_db, copy_db = pg.DATABASES["etl"], pg.DATABASES["copy"]
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/{etl_db}"
    rows = "SELECT count(*) FROM comments"
    etl = Step("load", "etl load → Postgres", "pgload",
               argv=(*ETL, "load", "--from", str(parquet), "--schema", str(SCHEMA), "--db", url,
                     "--quiet"),
               setup=pg.psql_argv(port, etl_db,
                                  f"{QUIET} DROP TABLE IF EXISTS comments, _etl_loads"),
               count=pg.psql_argv(port, etl_db, rows))
    copy = Step("load", "psql \\copy of the same rows as CSV", "pgload",
                argv=pg.psql_argv(port, copy_db, pg.copy_command("comments", columns, csv)),
                setup=pg.psql_argv(port, copy_db,
                                   f"{QUIET} DROP TABLE IF EXISTS comments; {table_ddl}"),
                count=pg.psql_argv(port, copy_db, rows))
    return [etl, copy]


def spool_steps(streams: list[Path], work: Path) -> list[Step]:
    """``etl spool`` against 8 ``socat`` listeners, the same ``ncat`` clients sending to each."""
    bytes_in = sum(p.stat().st_size for p in streams)
    steps = []
    for receiver, tool in (("etl", f"etl spool ← {len(streams)} ncat clients"),
                           ("socat", f"{len(streams)} × socat → files ← {len(streams)} ncat "
                                     "clients")):
        out, timing = work / f"spool-{receiver}", work / f"spool-{receiver}.json"
        steps.append(Step("spool", tool, "spool",
                          argv=(PYTHON, str(SPOOL), receiver, "--out", str(out), "--timing",
                                str(timing), *map(str, streams)),
                          out=out, timing=timing, bytes_in=bytes_in,
                          count=(PYTHON, str(SPOOL), "count", str(out))))
    return steps
