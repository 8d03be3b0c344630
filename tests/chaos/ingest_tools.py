"""Helpers for the ingest chaos tests: what a run published, peak memory, a real tmpfs,
and writers that change a shard while it is being read.

Nothing here asserts; the tests do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pyarrow.parquet as pq
import pytest

from etl.parse import Parser
from etl.schema import load_schema
from etl.shards import LineBatch, Shard
from tests.conftest import IN_CI, ROOT

ETL = [sys.executable, "-m", "etl.cli"]
RUN_TIMEOUT = 300  # seconds any one etl process may take: a hang fails the test, never blocks it

# Runs the etl command in its own session, kills the whole group on timeout (worker
# processes included), and reports the exit code and the peak RSS of all its descendants.
_MEASURED = r"""
import json, os, resource, signal, subprocess, sys
cmd, timeout, result = json.loads(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL)
try:
    code, timed_out = p.wait(timeout), False
except subprocess.TimeoutExpired:
    os.killpg(p.pid, signal.SIGKILL)
    code, timed_out = p.wait(), True
with open(result, "w") as fh:
    json.dump({"code": code, "timed_out": timed_out,
               "peak_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, fh)
"""


@dataclass
class Measured:
    code: int
    timed_out: bool
    peak_mb: float
    stderr: str


def run_measured(args: list, workdir: Path, timeout: float = RUN_TIMEOUT,
                 prefix: list[str] | None = None) -> Measured:
    """``etl ARGS`` in a wrapper process: exit code, whether it hung, peak RSS (MB)."""
    cmd = [*(prefix or []), *ETL, *map(str, args)]
    result = workdir / f"measured-{time.monotonic_ns()}.json"
    proc = subprocess.run([sys.executable, "-c", _MEASURED, json.dumps(cmd), str(timeout),
                           str(result)], capture_output=True, cwd=ROOT, timeout=timeout + 60)
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"the measuring wrapper failed: {proc.stderr.decode()[-2000:]}")
    got = json.loads(result.read_text())
    result.unlink()
    return Measured(got["code"], got["timed_out"], got["peak_kb"] / 1024,
                    proc.stderr.decode(errors="replace"))


# ---------------------------------------------------------------- what a run published

def shard_id(path: Path | str) -> str:
    """The identity etl gives a local shard found at ``path`` (output names derive from it)."""
    return Shard(os.path.abspath(str(path))).id


def leftovers(out: Path) -> list[Path]:
    """Temporary files left in an output tree (``.*.tmp``): half-written or half-renamed."""
    return sorted(p for p in out.rglob("*") if p.name.endswith(".tmp"))


def published(out: Path, sid: str) -> list[Path]:
    """Every file a shard has published: Parquet rows and its rejects file."""
    files = list(out.glob(f"*=*/{sid}-*.parquet")) + list(out.glob(f"{sid}-*.parquet"))
    rejects = out / "_rejects" / f"{sid}.parquet"
    return sorted(files + ([rejects] if rejects.exists() else []))


def manifest(out: Path, sid: str) -> dict | None:
    path = out / "_manifest" / f"{sid}.json"
    return json.loads(path.read_text()) if path.exists() else None


def shard_rows(out: Path, entry: dict) -> list[dict]:
    """The rows a report entry says its shard published (all columns)."""
    rows: list[dict] = []
    for f in entry.get("files") or []:
        rows += pq.read_table(out / f["path"]).to_pylist()
    return rows


def shard_rejects(out: Path, sid: str) -> list[dict]:
    path = out / "_rejects" / f"{sid}.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def expected_rows(data: bytes, schema_path: Path | str) -> list[dict]:
    """The rows a clean ingest of ``data`` (decompressed) gives: the oracle for good shards."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    table = Parser(load_schema(schema_path)).parse_batch(LineBatch(lines, 1, 0)).table
    return table.to_pylist()


def row_key(row: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in row.items()))


def count_diff(expected: Iterable, found: Iterable) -> tuple[int, int]:
    """(lost, doubled) between two multisets: missing from ``found``, extra in it."""
    e, f = Counter(expected), Counter(found)
    return sum((e - f).values()), sum((f - e).values())


# ---------------------------------------------------------------- a real, small, full disk

def _privileged_failure(msg: str):
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """A tmpfs of ``size`` (``8m``) mounted at ``path`` for the block; unmounted after."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        _privileged_failure("mount is not installed: cannot make a small file system")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                           str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        _privileged_failure(f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): "
                            f"{done.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True,
                   capture_output=True)


def fill(path: Path, leave: int) -> Path:
    """Fill the file system of ``path`` with one file until only ``leave`` bytes are free."""
    filler = path / "_filler"
    free = shutil.disk_usage(path).free
    with open(filler, "wb") as fh:
        remaining = max(free - leave, 0)
        block = b"\0" * (1 << 20)
        try:
            while remaining > 0:
                remaining -= fh.write(block[:min(remaining, len(block))])
                fh.flush()
        except OSError:  # tmpfs rounds to pages: "full" may come a page early
            pass
    return filler


# ---------------------------------------------------------------- shards that change

class Changer(threading.Thread):
    """Keeps changing a file until stopped: ``append`` lines to it, or ``replace`` it whole."""

    def __init__(self, path: Path, mode: str, lines: list[bytes], every: float = 0.01):
        super().__init__(daemon=True)
        self.path, self.mode, self.lines, self.every = path, mode, lines, every
        self.changes = 0
        self._halt = threading.Event()

    def run(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.new")  # hidden: never taken as a shard
        base = self.path.read_bytes()
        while not self._halt.wait(self.every):
            line = self.lines[self.changes % len(self.lines)] + b"\n"
            if self.mode == "append":
                with open(self.path, "ab") as fh:
                    fh.write(line)
            else:  # a new file each time: new inode, new mtime, size alternating
                tmp.write_bytes(base + line * (self.changes % 2))
                os.replace(tmp, self.path)
            self.changes += 1

    def stop(self) -> None:
        self._halt.set()
        self.join()
