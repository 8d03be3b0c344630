"""Benchmarks: throughput and peak memory of `etl ingest` by shard size.

Writes bench/RESULTS.md. Data is generated under bench/data/ (git-ignored) with
`etl sample`. Usage: python bench/run.py [--sizes 50000,1600000] [--codec zst]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "bench" / "data"
SCHEMA = ROOT / "etl" / "schemas" / "reddit_comments.toml"
ETL = [sys.executable, "-m", "etl.cli"]


def make_shard(lines: int, codec: str) -> Path:
    folder = DATA / f"{codec}-{lines}"
    if not folder.exists() or not any(folder.iterdir()):
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run([*ETL, "sample", "--out", folder, "--lines", str(lines), "--codec", codec,
                        "--seed", "1", "--name", "RC_2015-01"], check=True, cwd=ROOT,
                       stdout=subprocess.DEVNULL)
    return next(folder.iterdir())


def measure(shard: Path, scheduler: str) -> dict:
    """One ingest in a child process: wall time, peak RSS of the child, report numbers."""
    out = DATA / "out"
    shutil.rmtree(out, ignore_errors=True)
    script = ("import resource, subprocess, sys, time\n"
              "t = time.perf_counter()\n"
              "p = subprocess.run(sys.argv[1:])\n"
              "print(time.perf_counter() - t, "
              "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode)\n")
    cmd = [*ETL, "ingest", str(shard), "--schema", str(SCHEMA), "--out", str(out), "--quiet",
           "--scheduler", scheduler, "--report", str(DATA / "report.json")]
    res = subprocess.run([sys.executable, "-c", script, *cmd], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    seconds, rss_kb, rc = res.stdout.split()
    report = json.loads((DATA / "report.json").read_text())
    return {"shard": shard.name, "compressed_mb": shard.stat().st_size / 1e6,
            "mb": report["bytes_decompressed"] / 1e6, "seconds": float(seconds),
            "mb_per_s": report["bytes_decompressed"] / 1e6 / float(seconds),
            "peak_rss_mb": int(rss_kb) / 1024, "rows": report["rows_written"], "rc": int(rc)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="50000,1600000", help="lines per shard, comma-separated")
    p.add_argument("--codec", default="zst")
    p.add_argument("--scheduler", default="synchronous")
    args = p.parse_args()
    rows = [measure(make_shard(int(n), args.codec), args.scheduler)
            for n in args.sizes.split(",")]
    lines = [f"# Benchmarks ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
             f"scheduler {args.scheduler})", "",
             "One shard of generated Reddit comments, reddit_comments.toml schema, one run each "
             "(the machine is shared and noisy: compare rows of one run).", "",
             "| shard | compressed MB | uncompressed MB | seconds | MB/s | peak RSS MB | rows |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['shard']} ({args.codec}) | {r['compressed_mb']:.0f} | {r['mb']:.0f} | "
              f"{r['seconds']:.1f} | {r['mb_per_s']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['rows']:,} |" for r in rows]
    (ROOT / "bench" / "RESULTS.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
