"""Build the benchmark inputs once under bench/data/, and reuse them after.

The text comes from ``etl sample --bad-rate 0`` (every line good, so every tool keeps
the same rows); the real command-line tools then compress it into each codec, two
jobs at a time, each file under a temporary name renamed when complete::

    bench/data/<dataset>/none/RC_2015-01_000.ndjson       plain text from etl sample
    bench/data/<dataset>/<codec>/RC_2015-01_000.ndjson.<suffix>
    bench/data/full/zst-4x/RC_2015-01_all.ndjson.zst      the 4 zst shards as one file

``zst-long`` is compressed from standard input, so its frame header declares the
full 2 GiB window as Pushshift's ``--long=31`` dumps do (from a file, zstd shrinks the
window to the file size and ordinary readers cope). ``xz -T2`` writes multi-block
streams, ``pbzip2`` multi-stream bzip2: both are valid inputs for every reader here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
ETL = [sys.executable, "-m", "etl.cli"]
SEED = 1
CODECS = ("zst", "gz", "none", "xz", "bz2", "zst-long")  # report order
SUFFIXES = {"zst": ".zst", "zst-long": ".zst", "gz": ".gz", "xz": ".xz", "bz2": ".bz2",
            "none": ""}
PARALLEL_JOBS = 2  # compressions at once: one per core
SLOWEST_FIRST = ("bz2", "xz", "gz", "zst-long", "zst")  # compression order


@dataclass(frozen=True)
class Dataset:
    """One set of shards in every codec it lists; ``root`` holds one folder per codec."""

    name: str
    lines: int  # total over all shards
    shards: int
    codecs: tuple[str, ...]
    root: Path

    def plain(self) -> list[Path]:
        """The uncompressed shards, in order."""
        return sorted((self.root / "none").glob("*.ndjson"))

    def files(self, codec: str) -> list[Path]:
        """The shards of ``codec``, in the same order as ``plain()``."""
        return [self.root / codec / (p.name + SUFFIXES[codec]) for p in self.plain()]

    def plain_bytes(self, first: int | None = None) -> int:
        """Uncompressed bytes of all shards (or of the first ``first``): the MB/s numerator."""
        return sum(p.stat().st_size for p in self.plain()[:first])

    def four_x(self) -> Path:
        """All zst shards concatenated into one multi-frame file (the 4x memory run)."""
        return self.root / "zst-4x" / "RC_2015-01_all.ndjson.zst"

    def one_plain(self) -> Path:
        """All plain shards as one file (the one-big-shard run)."""
        return self.root / "none-1" / "RC_2015-01_all.ndjson"


def full_dataset() -> Dataset:
    """4 shards, 2M lines: about 1.1 GB of text, as the issue asks (>= 1 GB, 4+ shards)."""
    return Dataset("full", 2_000_000, 4, CODECS, DATA / "full")


def quick_dataset() -> Dataset:
    """2 shards, 400k lines (about 220 MB): zst and xz only, for ``make bench-quick``."""
    return Dataset("quick", 400_000, 2, ("zst", "xz"), DATA / "quick")


def compress_command(codec: str, src: Path, dst: Path, have=shutil.which) -> str:
    """The shell command that compresses ``src`` into ``dst`` with the real tool."""
    s, d = shlex.quote(str(src)), shlex.quote(str(dst))
    if codec == "zst":
        return f"zstd -q -T0 -3 -c {s} > {d}"
    if codec == "zst-long":  # from stdin: unknown size, so the header keeps the 2 GiB window
        return f"zstd -q -T0 -3 --long=31 -c < {s} > {d}"
    if codec == "gz":
        return f"{'pigz' if have('pigz') else 'gzip'} -6 -c {s} > {d}"
    if codec == "xz":
        return f"xz -T2 -1 -c {s} > {d}"
    if codec == "bz2":
        return f"{'pbzip2' if have('pbzip2') else 'bzip2'} -9 -c {s} > {d}"
    raise ValueError(f"no compressor for codec {codec!r}")


REQUIRED_TOOLS = {"zst": "zstd", "zst-long": "zstd", "gz": "gzip", "xz": "xz", "bz2": "bzip2"}


def check_tools(codecs: tuple[str, ...], have=shutil.which) -> None:
    """Fail early, saying what to install, when a compressor the codecs need is missing."""
    missing = sorted({REQUIRED_TOOLS[c] for c in codecs if c in REQUIRED_TOOLS
                      and not have(REQUIRED_TOOLS[c])})
    if missing:
        raise SystemExit(f"bench: {', '.join(missing)} not found; install them (Debian: "
                         "apt-get install zstd xz-utils bzip2; pigz and pbzip2 are optional "
                         "and speed up building the data)")


def _generate_plain(ds: Dataset) -> None:
    folder = ds.root / "none"
    if len(ds.plain()) == ds.shards:
        return
    shutil.rmtree(folder, ignore_errors=True)
    print(f"generating {ds.lines:,} lines in {ds.shards} shards with etl sample ...", flush=True)
    subprocess.run([*ETL, "sample", "--out", str(folder), "--lines", str(ds.lines),
                    "--shards", str(ds.shards), "--codec", "none", "--bad-rate", "0",
                    "--seed", str(SEED)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def _compress_one(codec: str, src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    subprocess.run(compress_command(codec, src, tmp), shell=True, check=True)
    os.replace(tmp, dst)


def _concatenate(parts: list[Path], dst: Path) -> None:
    """One file of ``parts`` (concatenated zstd frames are one valid zstd file)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    with open(tmp, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 20)
    os.replace(tmp, dst)


def build(ds: Dataset, four_x: bool = False) -> None:
    """Make every missing file of ``ds``; files already there are complete and kept."""
    check_tools(ds.codecs)
    _generate_plain(ds)
    jobs = []
    for codec in ds.codecs:
        if codec == "none":
            continue
        (ds.root / codec).mkdir(parents=True, exist_ok=True)
        jobs += [(codec, src, dst)
                 for src, dst in zip(ds.plain(), ds.files(codec)) if not dst.exists()]
    jobs.sort(key=lambda job: SLOWEST_FIRST.index(job[0]))  # keeps both slots busy to the end
    if jobs:
        print(f"compressing {len(jobs)} files, {PARALLEL_JOBS} at a time ...", flush=True)
    with ThreadPoolExecutor(PARALLEL_JOBS) as pool:
        list(pool.map(lambda job: _compress_one(*job), jobs))
    if four_x and not ds.four_x().exists():
        _concatenate(ds.files("zst"), ds.four_x())
    if four_x and "none" in ds.codecs and not ds.one_plain().exists():
        _concatenate(ds.plain(), ds.one_plain())


SPOOL_CLIENTS = 8  # ncat clients of the spooler comparison


def split_lines(sources: list[Path], dests: list[Path]) -> None:
    """The lines of ``sources`` (each ending with a line end), in order, cut into
    ``len(dests)`` files of about equal size at line ends; the last takes the rest."""
    quota = -(-sum(p.stat().st_size for p in sources) // len(dests))  # ceil
    i, written = 0, 0
    out = open(dests[0], "wb")
    try:
        for src in sources:
            with open(src, "rb") as fh:
                while chunk := fh.read(8 << 20):
                    while i < len(dests) - 1 and written + len(chunk) > quota:
                        cut = chunk.find(b"\n", max(0, quota - written - 1)) + 1
                        if cut == 0:  # no line end left in this chunk
                            break
                        out.write(chunk[:cut])
                        chunk = chunk[cut:]
                        out.close()
                        i, written = i + 1, 0
                        out = open(dests[i], "wb")
                    out.write(chunk)
                    written += len(chunk)
    finally:
        out.close()
    for rest in dests[i + 1:]:  # fewer lines than files: the rest stay empty
        open(rest, "wb").close()


def spool_streams(ds: Dataset, clients: int = SPOOL_CLIENTS) -> list[Path]:
    """The plain shards cut into ``clients`` streams at line ends, made once."""
    folder = ds.root / f"spool-{clients}"
    dests = [folder / f"stream-{i}.ndjson" for i in range(clients)]
    if not all(p.exists() for p in dests):
        folder.mkdir(parents=True, exist_ok=True)
        tmp = [p.with_name(p.name + ".tmp") for p in dests]
        split_lines(ds.plain(), tmp)
        for t, d in zip(tmp, dests):
            os.replace(t, d)
    return dests


def describe(ds: Dataset) -> list[tuple[str, int, float]]:
    """(codec, compressed bytes, uncompressed/compressed ratio) per codec of ``ds``."""
    plain = ds.plain_bytes()
    rows = []
    for codec in ds.codecs:
        size = sum(p.stat().st_size for p in ds.files(codec))
        rows.append((codec, size, plain / size))
    return rows


if __name__ == "__main__":
    build(full_dataset(), four_x=True)
    build(quick_dataset())
