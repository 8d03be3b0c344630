"""Time one command and take its peak memory, from a fresh wrapper process.

``measure(cmd)`` starts ``python bench/measure.py --result FILE -- CMD...`` (or
``--shell "a | b"``) so that ``RUSAGE_CHILDREN`` covers that command's tree and
nothing else, and reads back a ``Measurement``. Memory is taken two ways:

- ``max_rss_mib``: ``getrusage(RUSAGE_CHILDREN).ru_maxrss``, the largest single
  process of the tree (of those reaped by their parent: a shell's pipeline,
  Dask's worker processes);
- ``tree_mib``: the peak over time of the whole tree's summed PSS (shared pages
  counted once, split between their users), sampled every ``SAMPLE_EVERY``
  seconds from ``/proc/<pid>/smaps_rollup``. A peak shorter than that can be missed.

The machine is shared, so it also reports ``cpu_seconds`` (user + system time of
the command's tree: over wall seconds, the cores it kept busy) and ``others_busy``:
the share of all cores that other processes kept busy meanwhile (busy time in
``/proc/stat`` less the command's own), where anything well above 0 means the
command got less than the whole machine.

Only the standard library and psutil: the wrapper runs as a plain script.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

SAMPLE_EVERY = 0.2  # seconds between samples of the tree's memory
KIB = 1024
MIB = 1 << 20  # memory is reported in MiB


@dataclass(frozen=True)
class Measurement:
    """One command's wall seconds, exit code and peak memory (MiB)."""

    seconds: float
    returncode: int
    max_rss_mib: float  # largest single process
    tree_mib: float  # whole tree, summed PSS
    cpu_seconds: float = 0.0  # user + system time of the command's processes
    others_busy: float = 0.0  # share of all cores busy with other processes, 0 to 1


def measure(argv: list[str] | None = None, shell: str | None = None,
            cwd: str | None = None, env: dict | None = None) -> Measurement:
    """Run ``argv`` (or the ``shell`` command line) in a wrapper; return its Measurement."""
    with tempfile.TemporaryDirectory() as tmp:
        result = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--result", result]
        cmd += ["--shell", shell] if shell is not None else ["--", *argv]
        subprocess.run(cmd, cwd=cwd, env=env, check=True)
        with open(result) as fh:
            return Measurement(**json.load(fh))


def _pss_kib(pid: int) -> int:
    """PSS of one process in KiB (RSS where smaps_rollup is missing); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    except (PermissionError, ProcessLookupError):
        return 0
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // KIB
    except (FileNotFoundError, ProcessLookupError):
        return 0


def _tree_kib(root_pid: int) -> int:
    import psutil

    try:
        pids = [root_pid] + [p.pid for p in psutil.Process(root_pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    return sum(_pss_kib(pid) for pid in pids)


class _TreeSampler(threading.Thread):
    """Keeps the largest summed PSS of a process tree seen so far."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak_kib = pid, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(SAMPLE_EVERY):
            self.peak_kib = max(self.peak_kib, _tree_kib(self.pid))


def _cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all cores since boot, from /proc/stat."""
    with open("/proc/stat") as fh:
        user, nice, system, idle, iowait, irq, softirq, steal = map(int, fh.readline().split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def _others_busy(before: tuple[int, int], after: tuple[int, int], own_seconds: float) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = after[1] - before[1]
    others = (after[0] - before[0]) - own_seconds * ticks
    return round(min(1.0, max(0.0, others / total)), 3) if total > 0 else 0.0


def _wrapper(argv: list[str] | None, shell: str | None) -> Measurement:
    ticks_before = _cpu_ticks()
    start = time.perf_counter()
    proc = subprocess.Popen(shell if shell is not None else argv, shell=shell is not None)
    sampler = _TreeSampler(proc.pid)
    sampler.start()
    code = proc.wait()
    seconds = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    ticks_after = _cpu_ticks()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = usage.ru_utime + usage.ru_stime
    return Measurement(round(seconds, 3), code, round(usage.ru_maxrss * KIB / MIB, 1),
                       round(sampler.peak_kib * KIB / MIB, 1), round(cpu, 3),
                       _others_busy(ticks_before, ticks_after, cpu))


def main() -> None:
    p = argparse.ArgumentParser(description="Run a command; write its time and memory as JSON.")
    p.add_argument("--result", required=True, help="JSON file to write the Measurement to")
    p.add_argument("--shell", help="a shell command line (pipes) instead of argv")
    p.add_argument("argv", nargs="*")
    args = p.parse_args()
    if (args.shell is None) == (not args.argv):
        p.error("give either --shell CMDLINE or -- CMD ARGS...")
    m = _wrapper(args.argv or None, args.shell)
    with open(args.result, "w") as fh:
        json.dump(asdict(m), fh)


if __name__ == "__main__":
    main()
