"""Helpers for the spooler's chaos tests: a spooler process with a chosen fd limit, clients
that stamp every line, and an audit of what is on disk against what was sent.

Every line a test sends is ``{"c": client, "i": seq, "t": monotonic send time, ...}``,
unique by ``(c, i)``, so a stored line can be traced back to the exact bytes sent.
Only 127.0.0.1 is used.
"""

from __future__ import annotations

import os
import random
import resource
import socket
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from etl.errors import ConfigError
from etl.shards import find_shards, iter_chunks, iter_line_batches, open_shard
from tests.conftest import ROOT, require_tool
from tests.test_spool_live import HOST, SPOOL, START_TIMEOUT, Spool, connect, wait_until

STREAM_MAX_SECONDS = 60.0  # no client streams longer than this, whatever happens
TOOL_TIMEOUT = 60          # seconds for zstd -t / gzip -t / mount


class ChaosSpool(Spool):
    """``Spool`` started with its soft RLIMIT_NOFILE set to ``nofile`` (None: inherited)."""

    def __init__(self, tmp_path: Path, *args: str, out: Path, feed: str = "t",
                 nofile: int | None = None):
        Spool.count += 1
        self.out, self.feed = out, feed
        self.log = tmp_path / f"spool-{Spool.count}.log"
        cmd = SPOOL + ["--listen", f"{HOST}:0", "--out", str(out), "--feed", feed,
                       "--metrics", f"{HOST}:0", *args]
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        limit = (lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, hard))) \
            if nofile else None
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL, cwd=ROOT,
                                         preexec_fn=limit)
        found = wait_until(self._ready, START_TIMEOUT, "the spooler to listen")
        self.port, self.metrics_port = int(found[0]), int(found[1])


def raise_own_fd_limit(need: int) -> None:
    """Let this test process hold ``need`` descriptors (fail under CI, else skip, if it can't)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            msg = f"RLIMIT_NOFILE hard limit {hard} < {need} descriptors this test needs"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(msg)
            pytest.skip(msg)
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def stamped(client: int, i: int, t: float, pad: str) -> bytes:
    return orjson.dumps({"c": client, "i": i, "t": round(t, 6), "pad": pad})


def noise_pad(rng: random.Random, chars: int) -> str:
    return rng.randbytes(chars // 2).hex()


# ---------------------------------------------------------------- clients


@dataclass
class Batch:
    """One ``sendall``: its lines ``first .. first+count-1``, its bytes ``start .. end`` in
    the client's stream, when it began and when it returned."""

    first: int
    count: int
    start: int
    end: int
    began: float
    done: float | None = None  # None: sendall failed (the bytes may sit in a socket buffer)


@dataclass
class PacedClient:
    """Streams stamped lines in small batches at a steady pace until ``stop`` or an error.

    The pace (well under the spooler's speed) keeps the socket buffers nearly empty, so
    a batch's ``done`` time is about when the spooler could read it.
    """

    port: int
    client: int
    stop: threading.Event
    batch: int = 25
    every: float = 0.005
    pad: int = 100
    lines: list[bytes] = field(default_factory=list)
    batches: list[Batch] = field(default_factory=list)
    error: tuple[float, BaseException] | None = None
    local_port: int = 0

    def run(self) -> None:
        rng = random.Random(self.client)
        pads = [noise_pad(rng, self.pad) for _ in range(64)]
        try:
            with connect(self.port) as s:
                s.settimeout(10)
                self.local_port = s.getsockname()[1]
                deadline = time.monotonic() + STREAM_MAX_SECONDS
                while not self.stop.is_set() and time.monotonic() < deadline:
                    began, first = time.monotonic(), len(self.lines)
                    new = [stamped(self.client, first + k, began, pads[(first + k) % 64])
                           for k in range(self.batch)]
                    data = b"\n".join(new) + b"\n"
                    start = self.batches[-1].end if self.batches else 0
                    self.lines += new
                    self.batches.append(Batch(first, len(new), start, start + len(data), began))
                    s.sendall(data)
                    self.batches[-1].done = time.monotonic()
                    time.sleep(max(0.0, self.every - (time.monotonic() - began)))
        except OSError as exc:  # expected once the spooler is killed
            self.error = (time.monotonic(), exc)

    def handed_by(self, when: float) -> int:
        """Bytes whose ``sendall`` had returned by ``when`` (monotonic)."""
        done = [b.end for b in self.batches if b.done is not None and b.done <= when]
        return max(done, default=0)

    def batch_of(self, i: int) -> Batch:
        lo, hi = 0, len(self.batches) - 1
        while lo < hi:  # batches are sorted by first line
            mid = (lo + hi + 1) // 2
            if self.batches[mid].first <= i:
                lo = mid
            else:
                hi = mid - 1
        return self.batches[lo]


def run_threads(targets, timeout: float) -> None:
    """Run each callable in its own thread; all must end within ``timeout`` s without raising."""
    errors: list[BaseException] = []

    def guarded(target) -> None:
        try:
            target()
        except BaseException as exc:  # collected: a thread's failure fails the test
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(t,), daemon=True) for t in targets]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    alive = sum(t.is_alive() for t in threads)
    assert not alive, f"{alive} client threads still running after {timeout}s"
    assert not errors, errors


class in_background:  # noqa: N801 - used like a function
    """``run_threads`` in a daemon thread, started now; ``join`` waits and re-raises."""

    def __init__(self, targets, timeout: float):
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(targets, timeout), daemon=True)
        self._thread.start()

    def _run(self, targets, timeout: float) -> None:
        try:
            run_threads(targets, timeout)
        except BaseException as exc:  # handed to join()
            self.error = exc

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"client threads still running after {timeout}s"
        if self.error is not None:
            raise self.error


def tcp_queues(port: int) -> Counter:
    """Bytes the kernel holds per client port for connections to 127.0.0.1:``port``: the
    client's send queue plus the server's unread receive queue (from /proc/net/tcp)."""
    queued: Counter = Counter()
    with open("/proc/net/tcp") as fh:
        for row in fh.read().splitlines()[1:]:
            f = row.split()
            lport, rport = int(f[1].split(":")[1], 16), int(f[2].split(":")[1], 16)
            tx, rx = (int(x, 16) for x in f[4].split(":"))
            if f[3] != "01":  # ESTABLISHED only
                continue
            if rport == port:
                queued[lport] += tx
            elif lport == port:
                queued[rport] += rx
    return queued


def idle_socket(port: int, source: str | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(10)
    if source:
        s.bind((source, 0))
    s.connect((HOST, port))
    return s


def reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer sees a RST, as when a host vanishes."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    sock.close()


# ---------------------------------------------------------------- what is on disk


def parts(feed_dir: Path) -> list[Path]:
    return sorted(p for p in feed_dir.rglob("*.part")) if feed_dir.exists() else []


def sealed_files(feed_dir: Path) -> list[str]:
    """Sealed shards as ``etl ingest`` finds them (no ``.part``, ``_rejects/``, ``_recovered/``)."""
    try:
        return sorted(s.path for s in find_shards([str(feed_dir)])) if feed_dir.is_dir() else []
    except ConfigError:  # nothing sealed yet
        return []


def check_with_tool(path: str) -> None:
    """``zstd -t`` / ``gzip -t`` the whole file (plain files: nothing to test here)."""
    if path.endswith(".zst"):
        cmd = [require_tool("zstd"), "-q", "-t", path]
    elif path.endswith(".gz"):
        cmd = [require_tool("gzip"), "-t", path]
    else:
        return
    res = subprocess.run(cmd, capture_output=True, timeout=TOOL_TIMEOUT)
    assert res.returncode == 0, f"{cmd}: {res.stderr.decode(errors='replace')}"


def stored_lines(feed_dir: Path) -> list[bytes]:
    """Every line of every sealed shard; each shard must decode to its end and end in LF."""
    out: list[bytes] = []
    for path in sealed_files(feed_dir):
        check_with_tool(path)
        shard = find_shards([path])[0]
        with open_shard(shard) as fh:
            data = b"".join(iter_chunks(fh, path))  # raises on a damaged or truncated frame
        assert data.endswith(b"\n"), f"{path} does not end with a whole line"
        out += [x for b in iter_line_batches(iter([data])) for x in b.lines]
    return out


@dataclass
class Audit:
    """Stored lines against sent lines, by ``(client, seq)``."""

    expected: int
    found: int
    lost: list[tuple[int, int]]
    doubled: int
    foreign: list[bytes]        # stored lines that are no sent line, byte for byte
    gaps: dict[int, str]        # client -> why its stored seqs are not a prefix


def audit(sent: dict[int, list[bytes]], stored: list[bytes],
          expected: set[tuple[int, int]] | None = None) -> Audit:
    """Compare; ``expected`` (default: every sent line) is what should be there."""
    counts: Counter = Counter()
    foreign = []
    for line in stored:
        try:
            rec = orjson.loads(line)
            key = (rec["c"], rec["i"])
            ok = sent[key[0]][key[1]] == line
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
            ok = False
        if ok:
            counts[key] += 1
        else:
            foreign.append(line)
    if expected is None:
        expected = {(c, i) for c, lines in sent.items() for i in range(len(lines))}
    lost = sorted(expected - counts.keys())
    seqs: dict[int, list[int]] = {}
    for c, i in counts:
        seqs.setdefault(c, []).append(i)
    gaps = {}
    for c, got in seqs.items():
        got.sort()
        if got[-1] != len(got) - 1:
            gap = next(i for k, i in enumerate(got) if i != k)
            gaps[c] = f"stored seqs are not 0..{len(got) - 1}: a gap before {gap}"
    return Audit(len(expected), sum(1 for k in counts if k in expected), lost,
                 sum(n - 1 for n in counts.values()), foreign, gaps)


# ---------------------------------------------------------------- a real small disk


def mount_tmpfs(where: Path, size: str) -> None:
    """Mount a tmpfs of ``size`` on ``where``; fail under CI, else skip, if not permitted."""
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run([require_tool("mount"), "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                          str(where)], capture_output=True, timeout=TOOL_TIMEOUT)
    if res.returncode != 0:
        msg = f"cannot mount a tmpfs (needs root/CAP_SYS_ADMIN): {res.stderr.decode().strip()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def resize_tmpfs(where: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True,
                   capture_output=True, timeout=TOOL_TIMEOUT)


def unmount(where: Path) -> None:
    res = subprocess.run(["umount", str(where)], capture_output=True, timeout=TOOL_TIMEOUT)
    if res.returncode != 0:  # still busy: detach it now, it goes when the last user does
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=TOOL_TIMEOUT)
