"""The spooler comparison: 8 ``ncat`` clients send the same NDJSON streams to ``etl spool``
or to 8 ``socat`` listeners that write each stream to a file.

    python bench/spool.py etl   --out DIR --timing FILE STREAM...
    python bench/spool.py socat --out DIR --timing FILE STREAM...
    python bench/spool.py count DIR        prints the lines stored under DIR

Each receiver is started and listening before the clock starts; the clock runs from
launching the clients until every byte is on disk: for the spooler, until it has
drained every connection after SIGTERM, sealed (fsynced) its shards and exited; for
socat, until every listener has written its stream (no fsync) and exited. That span,
in seconds, goes to ``--timing``. ``count`` checks the output is whole (no ``.part``
left, no rejects) and counts its lines: zstd shards are decompressed by ``zstd``.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LISTEN_TIMEOUT = 30  # seconds a receiver may take to start listening
GRACE = 120  # seconds the spooler may read after SIGTERM: far more than draining needs
CHUNK = 1 << 20


def free_ports(n: int) -> list[int]:
    """``n`` ports free right now (held together while choosing, so they differ)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def listening(ports: list[int]) -> bool:
    """Whether every port has a TCP listener on 127.0.0.1 (from /proc: no probe connection,
    which a one-connection socat would take for its client)."""
    found = set()
    with open("/proc/net/tcp") as fh:
        for line in fh.readlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            if state == "0A":  # LISTEN
                found.add(int(local.split(":")[1], 16))
    return set(ports) <= found


def wait_listening(ports: list[int], procs: list[subprocess.Popen]) -> None:
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while not listening(ports):
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise SystemExit(f"bench/spool.py: receivers did not start listening on {ports}")
        time.sleep(0.02)


def send_all(ports: list[int], streams: list[str]) -> None:
    """One ``ncat --send-only`` per stream (stream i to ports[i % len(ports)]); wait for all."""
    clients = []
    for i, stream in enumerate(streams):
        with open(stream, "rb") as fh:
            clients.append(subprocess.Popen(
                ["ncat", "--send-only", "127.0.0.1", str(ports[i % len(ports)])], stdin=fh))
    codes = [c.wait() for c in clients]
    if any(codes):
        raise SystemExit(f"bench/spool.py: ncat exit codes {codes}")


def run_etl_spool(out: Path, streams: list[str]) -> float:
    (port,) = free_ports(1)
    log = out.with_name(out.name + ".log")
    with open(log, "wb") as err:
        spool = subprocess.Popen([sys.executable, "-m", "etl.cli", "spool", "--listen",
                                  f"127.0.0.1:{port}", "--out", str(out), "--grace", str(GRACE),
                                  "--window", "3600"], cwd=ROOT, stderr=err)
        wait_listening([port], [spool])
        start = time.perf_counter()
        send_all([port], streams)
        spool.send_signal(signal.SIGTERM)
        code = spool.wait()
        seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"bench/spool.py: etl spool exited {code}: {log.read_text()[-2000:]}")
    return seconds


def run_socat(out: Path, streams: list[str]) -> float:
    out.mkdir(parents=True, exist_ok=True)
    ports = free_ports(len(streams))
    listeners = [subprocess.Popen(["socat", "-u", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr",
                                   f"CREATE:{out / f'stream-{i}.ndjson'}"])
                 for i, port in enumerate(ports)]
    wait_listening(ports, listeners)
    start = time.perf_counter()
    send_all(ports, streams)
    codes = [p.wait() for p in listeners]
    seconds = time.perf_counter() - start
    if any(codes):
        raise SystemExit(f"bench/spool.py: socat exit codes {codes}")
    return seconds


def _newlines(cmd: list[str] | None, path: Path) -> int:
    count = 0
    if cmd is None:
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                count += chunk.count(b"\n")
        return count
    with subprocess.Popen([*cmd, str(path)], stdout=subprocess.PIPE) as proc:
        while chunk := proc.stdout.read(CHUNK):
            count += chunk.count(b"\n")
    if proc.returncode:
        raise SystemExit(f"bench/spool.py: {cmd[0]} failed on {path}")
    return count


def count_lines(out: Path) -> int:
    """Lines stored under ``out``; refuses an output with a ``.part`` or any rejects."""
    files = sorted(p for p in out.rglob("*") if p.is_file())
    bad = [p for p in files if p.suffix == ".part" or "_rejects" in p.parts
           or "_recovered" in p.parts]
    if bad:
        raise SystemExit(f"bench/spool.py: not whole: {bad[:3]}")
    data = [p for p in files if p.name.endswith((".ndjson", ".ndjson.zst"))]
    return sum(_newlines(["zstd", "-dcq"] if p.suffix == ".zst" else None, p) for p in data)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("receiver", choices=["etl", "socat", "count"])
    p.add_argument("paths", nargs="+", help="streams to send (count: the output folder)")
    p.add_argument("--out", type=Path, help="the receiver's output folder (must not exist)")
    p.add_argument("--timing", type=Path, help="write the measured seconds here as JSON")
    args = p.parse_args()
    if args.receiver == "count":
        print(count_lines(Path(args.paths[0])))
        return
    run = run_etl_spool if args.receiver == "etl" else run_socat
    seconds = run(args.out, args.paths)
    args.timing.write_text(json.dumps({"seconds": round(seconds, 3)}))


if __name__ == "__main__":
    main()
