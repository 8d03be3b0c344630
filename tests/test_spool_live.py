"""The spooler as a real process with real clients (ncat, socat, nc, Python sockets, TLS):
reassembly, validation, gates, timeouts, metrics, SIGTERM drain, SIGKILL recovery, bounded
memory, idle CPU, and spool -> `etl run` -> DuckDB. Only 127.0.0.1 is ever used."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson
import pytest

from etl.shards import find_shards, iter_chunks, iter_line_batches, open_shard
from etl.spool.lines import check_line
from tests.conftest import ROOT, SCHEMAS, require_tool

# The spooler command; becomes [sys.executable, "-m", "etl.cli", "spool"] once etl/cli.py has it.
SPOOL_CMD = [sys.executable, "-m", "etl.cli", "spool"]
SPOOL = list(SPOOL_CMD)
HOST = "127.0.0.1"
START_TIMEOUT = 20.0


def wait_until(check, timeout: float, what: str, step: float = 0.02):
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(step)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


class Spool:
    """One spooler process on 127.0.0.1:<any free port>, its log, its files and metrics."""

    count = 0

    def __init__(self, tmp_path: Path, *args: str, feed: str = "t", out: Path | None = None,
                 metrics: bool = True):
        Spool.count += 1
        self.out, self.feed = out or tmp_path / "spool", feed
        self.log = tmp_path / f"spool-{Spool.count}.log"
        extra = ["--metrics", f"{HOST}:0"] if metrics else []
        cmd = SPOOL + ["--listen", f"{HOST}:0", "--out", str(self.out), "--feed", feed,
                       *extra, *args]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stderr=log, stdout=subprocess.DEVNULL, cwd=ROOT)
        found = wait_until(self._ready, START_TIMEOUT, "the spooler to listen")
        self.port = int(found[0])
        self.metrics_port = int(found[1]) if metrics else None

    def _ready(self):
        text = self.text()
        if self.proc.poll() is not None:
            pytest.fail(f"spooler exited with {self.proc.returncode}:\n{text}")
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
        mport = re.search(r"metrics on http://127\.0\.0\.1:(\d+)", text)
        if port and (mport or "--metrics" not in self.proc.args):
            return port[1], mport[1] if mport else None
        return None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def feed_dir(self) -> Path:
        return self.out / self.feed

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"spooler did not stop within {timeout}s:\n{self.text()}")

    def rss_peak_kib(self) -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1])

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self, path: str = "/metrics") -> dict[str, float]:
        url = f"http://{HOST}:{self.metrics_port}{path}"
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = resp.read().decode()
        return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in body.splitlines()
                                         if line and not line.startswith("#"))}

    def shards(self) -> list[str]:
        if not self.feed_dir.exists():
            return []
        try:
            return sorted(s.path for s in find_shards([str(self.feed_dir)]))
        except Exception:  # no sealed shard yet
            return []

    def lines(self) -> list[bytes]:
        """Every stored line, file by file in name order (= window, then seq)."""
        out = []
        for path in self.shards():
            shard = find_shards([path])[0]
            with open_shard(shard) as fh:
                for batch in iter_line_batches(iter_chunks(fh, path)):
                    out += batch.lines
        return out

    def rejects(self) -> list[dict]:
        return [orjson.loads(line) for f in sorted((self.feed_dir / "_rejects").glob("*.jsonl"))
                for line in f.read_bytes().splitlines()]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def client_lines(client: int, n: int, pad: int = 40, noise: bool = False) -> list[bytes]:
    """``{"c": client, "i": i, "pad": ...}`` lines; ``noise`` makes them incompressible."""
    rng = random.Random(client)
    return [orjson.dumps({"c": client, "i": i,
                          "pad": rng.randbytes(pad // 2).hex() if noise else "p" * pad})
            for i in range(n)]


def connect(port: int) -> socket.socket:
    return socket.create_connection((HOST, port), timeout=10)


def send(port: int, data: bytes) -> None:
    with connect(port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.recv(1)  # wait until the spooler has read to EOF and closed


def by_client(lines: list[bytes]) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    for line in lines:
        rec = orjson.loads(line)
        seen.setdefault(rec["c"], []).append(rec["i"])
    return seen


def recv_all(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    got = b""
    try:
        while len(got) < 1 << 16:
            b = sock.recv(4096)
            if not b:
                break
            got += b
    except ConnectionResetError:
        pass
    return got


# ---------------------------------------------------------------- clients and lines

def test_ncat_socat_nc_and_python_clients(tmp_path):
    ncat, socat, nc = require_tool("ncat"), require_tool("socat"), require_tool("nc")
    with Spool(tmp_path) as sp:
        for c, cmd in enumerate([[ncat, HOST, str(sp.port)],
                                 [socat, "-u", "-", f"TCP:{HOST}:{sp.port}"],
                                 [nc, HOST, str(sp.port)]]):
            data = b"\n".join(client_lines(c, 500)) + b"\n"
            subprocess.run(cmd, input=data, check=True, timeout=30)
        send(sp.port, b"\r\n".join(client_lines(3, 500)))  # CRLF, no newline at the end
        assert sp.stop() == 0
        seen = by_client(sp.lines())
        assert seen == {c: list(range(500)) for c in range(4)}
        assert f"sealed {sp.shards()[0]}: 2000 lines" in sp.text()


def test_lines_over_many_packets_and_many_lines_in_one_packet(tmp_path):
    lines = client_lines(0, 300, pad=90)
    stream = b"".join(line + (b"\r\n" if i % 2 else b"\n") for i, line in enumerate(lines))
    with Spool(tmp_path) as sp:
        with connect(sp.port) as s:  # tiny fragments, each its own TCP segment
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pos, k = 0, 0
            while pos < len(stream):
                step = 1 + k % 7
                s.sendall(stream[pos:pos + step])
                pos, k = pos + step, k + 1
                if k % 200 == 0:
                    time.sleep(0.002)
        send(sp.port, b"\n".join(client_lines(1, 3000)) + b"\n")  # many lines per segment
        assert sp.stop() == 0
        stored = sp.lines()
    assert [x for x in stored if b'"c":0' in x] == lines
    assert by_client(stored)[1] == list(range(3000))


def test_200_concurrent_clients_keep_their_order(tmp_path):
    n_clients, n_lines = 200, 300
    start = threading.Barrier(n_clients)
    errors = []

    def client(c: int, port: int):
        try:
            data = b"\n".join(client_lines(c, n_lines)) + b"\n"
            with connect(port) as s:
                start.wait(20)
                for i in range(0, len(data), 4000):
                    s.sendall(data[i:i + 4000])
        except Exception as exc:  # collected: a thread's failure must fail the test
            errors.append(exc)

    with Spool(tmp_path) as sp:
        threads = [threading.Thread(target=client, args=(c, sp.port)) for c in range(n_clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        wait_until(lambda: sp.metrics()["etl_spool_connections_total"] == n_clients, 10,
                   "every client to be counted")
        assert sp.stop() == 0
        assert by_client(sp.lines()) == {c: list(range(n_lines)) for c in range(n_clients)}


def test_oversized_and_invalid_lines_are_rejected_and_the_client_goes_on(tmp_path):
    with Spool(tmp_path, "--max-line", "1K") as sp:
        with connect(sp.port) as s:
            s.sendall(b'{"i":0}\n' + b'{"big":"' + b"x" * 300_000 + b'"}\n' + b"not json\n"
                      + b"[1,2]\n" + b'{"u":"\xff"}\n' + b"\n" + b'{"i":1}\n')
            time.sleep(0.3)
            s.sendall(b'{"i":2}\n')  # the same connection still works
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) == b""
        m = sp.metrics()
        assert sp.stop() == 0
        assert sp.lines() == [b'{"i":0}', b'{"i":1}', b'{"i":2}']
        rejects = sp.rejects()
    assert [r["reason"] for r in rejects] == ["too_long", "invalid_json", "not_object",
                                              "invalid_utf8", "blank"]
    big = rejects[0]
    assert big["length"] == 300_010 and big["truncated"] and len(big["line"]) == 4096
    assert all(r["peer"].startswith("127.0.0.1:") and r["time"].endswith("Z") for r in rejects)
    assert rejects[3]["line_base64"]
    assert m['etl_spool_rejects_total{reason="too_long"}'] == 1
    assert m['etl_spool_rejects_total{reason="invalid_json"}'] == 1
    assert m["etl_spool_lines_total"] == 3


def test_disconnect_mid_line(tmp_path):
    with Spool(tmp_path) as sp:
        send(sp.port, b'{"c":0,"i":0}\n{"c":0,"i":1}')      # EOF ends a last line
        send(sp.port, b'{"c":1,"i":0}\n{"c":1,"tr')          # ... even a broken one
        with connect(sp.port) as s:                          # a reset mid-line
            s.sendall(b'{"c":2,"i":0}\n{"c":2,"i":')
            time.sleep(0.3)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        wait_until(lambda: "incomplete" in str(sp.metrics()) and
                   sp.metrics()['etl_spool_rejects_total{reason="incomplete"}'] == 1, 10,
                   "the reset to be noticed")
        send(sp.port, b'{"c":3,"i":0}\n')                    # the spooler goes on
        assert sp.stop() == 0
        assert by_client(sp.lines()) == {0: [0, 1], 1: [0], 2: [0], 3: [0]}
        reasons = {r["reason"]: r for r in sp.rejects()}
    assert reasons["invalid_json"]["line"] == '{"c":1,"tr'
    assert reasons["incomplete"]["line"] == '{"c":2,"i":'


# ---------------------------------------------------------------- stopping and crashing

def test_sigterm_reads_everything_already_sent_and_loses_nothing(tmp_path):
    n_clients, n_lines = 20, 20_000
    sent = threading.Barrier(n_clients + 1)
    socks: list[socket.socket] = []

    def client(c: int, port: int):
        s = connect(port)
        socks.append(s)
        s.sendall(b"\n".join(client_lines(c, n_lines, pad=60)) + b"\n")
        if c % 2:
            s.shutdown(socket.SHUT_WR)  # half the clients say EOF, the others stay open
        sent.wait(60)

    with Spool(tmp_path, "--grace", "20") as sp:
        threads = [threading.Thread(target=client, args=(c, sp.port)) for c in range(n_clients)]
        for t in threads:
            t.start()
        sent.wait(60)  # every byte is sent (in kernel buffers or already in the spooler)
        t0 = time.monotonic()
        assert sp.stop(signal.SIGTERM) == 0
        took = time.monotonic() - t0
        for s in socks:
            s.close()
        seen = by_client(sp.lines())
    assert seen == {c: list(range(n_lines)) for c in range(n_clients)}
    assert took < 15, f"drain took {took:.1f}s"


def test_sigkill_then_recovery_keeps_every_flushed_line(tmp_path):
    out = tmp_path / "spool"
    with Spool(tmp_path, "--window", "3600", out=out) as sp:
        with connect(sp.port) as s:
            s.sendall(b"\n".join(client_lines(0, 5000)) + b"\n")
            s.sendall(b'{"c":0,"i":5000,"half":')  # an unfinished line is never in a frame
            time.sleep(1.5)  # data reaches the .part at least every second
            parts = list(sp.feed_dir.rglob("*.part"))
            assert len(parts) == 1 and parts[0].stat().st_size > 0
            assert sp.stop(signal.SIGKILL) == -signal.SIGKILL
    assert sp.shards() == []  # ingest never sees the .part
    with Spool(tmp_path, "--window", "3600", out=out) as again:
        assert re.search(r"recovered .*\.ndjson\.zst: 5000 lines", again.text())
        assert again.metrics()["etl_spool_parts_recovered_total"] == 1
        send(again.port, b"\n".join(client_lines(1, 10)) + b"\n")
        assert again.stop() == 0
        assert by_client(again.lines()) == {0: list(range(5000)), 1: list(range(10))}
        assert not list(again.feed_dir.rglob("*.part"))


FAILING_DISK = """
import sys
from etl.spool import files
real_write, calls = files.PartFile.write, [0]
def write(self, frame, lines):  # the third frame finds the disk full
    calls[0] += 1
    if calls[0] > 2:
        raise OSError(28, "No space left on device")
    return real_write(self, frame, lines)
files.PartFile.write = write
from etl.spool.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_write_error_drops_clients_exits_3_and_the_next_start_recovers(tmp_path):
    script = tmp_path / "failing_disk.py"
    script.write_text(FAILING_DISK)
    out = tmp_path / "spool"
    SPOOL[:] = [sys.executable, str(script), "spool"]
    try:
        sp = Spool(tmp_path, "--window", "3600", out=out, metrics=False)
    finally:
        SPOOL[:] = SPOOL_CMD
    lines = client_lines(0, 20_000, pad=2000, noise=True)  # 40 MB: far more than 2 frames
    with sp, connect(sp.port) as s:
        with pytest.raises(OSError):  # reset by the spooler once writing fails
            for i in range(0, len(lines), 100):
                s.sendall(b"\n".join(lines[i:i + 100]) + b"\n")
        assert sp.proc.wait(30) == 3
    assert "No space left on device" in sp.text() and "Traceback" not in sp.text()
    with Spool(tmp_path, "--window", "3600", out=out) as again:
        assert again.metrics()["etl_spool_parts_recovered_total"] == 1
        assert again.stop() == 0
        seen = by_client(again.lines())[0]
    assert seen == list(range(len(seen))) and seen  # a gapless prefix of what was sent


def test_windows_roll_on_the_clock_and_on_max_bytes(tmp_path):
    with Spool(tmp_path, "--window", "1", "--max-bytes", "64K", "--codec", "gz") as sp:
        with connect(sp.port) as s:
            deadline = time.monotonic() + 2.5
            k = 0
            while time.monotonic() < deadline and k < 10_000:
                s.sendall(b"\n".join(client_lines(0, 200, pad=200)[:1]) + b"\n")
                k += 1
                if k % 50 == 0:
                    time.sleep(0.05)
        for c in range(3):  # a burst big enough to roll on size
            send(sp.port, b"\n".join(client_lines(c + 1, 1000, pad=300, noise=True)) + b"\n")
        assert sp.stop() == 0
        shards = sp.shards()
        stamps = {re.search(r"-(\d{8}T\d{6}Z)-(\d{4})\.ndjson\.gz$", p)[1] for p in shards}
        assert len(stamps) >= 2, shards
        assert any(p.endswith("-0001.ndjson.gz") for p in shards), shards
        assert all(os.path.getsize(p) <= 64 << 10 for p in shards)
        seen = by_client(sp.lines())
    assert {c: seen[c] for c in (1, 2, 3)} == {c: list(range(1000)) for c in (1, 2, 3)}


# ---------------------------------------------------------------- gates

def make_cert(tmp_path: Path) -> tuple[str, str]:
    openssl = require_tool("openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_tls_with_python_and_ncat_clients(tmp_path):
    cert, key = make_cert(tmp_path)
    ncat = require_tool("ncat")
    with Spool(tmp_path, "--tls-cert", cert, "--tls-key", key) as sp:
        assert "(TLS)" in sp.text()
        ctx = ssl.create_default_context(cafile=cert)
        with ctx.wrap_socket(connect(sp.port), server_hostname=HOST) as s:
            s.sendall(b"\n".join(client_lines(0, 100)) + b"\n")
        subprocess.run([ncat, "--ssl", HOST, str(sp.port)], check=True, timeout=30,
                       input=b"\n".join(client_lines(1, 100)) + b"\n")
        with connect(sp.port) as s:  # plain text to a TLS port stores nothing
            s.sendall(b'{"c":9,"i":0}\n')
            recv_all(s, 5)
        assert sp.stop() == 0
        assert by_client(sp.lines()) == {0: list(range(100)), 1: list(range(100))}


def test_token_is_the_first_line_or_the_connection_is_refused(tmp_path):
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123\n")
    with Spool(tmp_path, "--token-file", str(token)) as sp:
        with connect(sp.port) as s:
            s.sendall(b'{"c":0,"i":0}\n')
            assert recv_all(s).startswith(b"ERR auth")
        with connect(sp.port) as s:
            s.sendall(b"AUTH 0123456789abcdef0124\n" + b'{"c":1,"i":0}\n')
            assert recv_all(s).startswith(b"ERR auth")
        send(sp.port, b"AUTH 0123456789abcdef0123\r\n" + b'{"c":2,"i":0}\n')
        m = sp.metrics()
        assert sp.stop() == 0
        assert by_client(sp.lines()) == {2: [0]}
        assert "0123456789abcdef" not in sp.text()
    assert m['etl_spool_connections_refused_total{reason="auth"}'] == 2


def test_allow_refuses_peers_outside_the_networks(tmp_path):
    with Spool(tmp_path, "--allow", "10.0.0.0/8", "192.168.0.0/16") as sp:
        with connect(sp.port) as s:
            try:
                s.sendall(b'{"c":0,"i":0}\n')
            except OSError:
                pass
            assert recv_all(s) == b""
        m = sp.metrics()
        assert sp.stop() == 0
        assert sp.lines() == [] and "not in --allow" in sp.text()
    assert m['etl_spool_connections_refused_total{reason="not_allowed"}'] == 1


def test_max_connections_refuses_the_one_too_many(tmp_path):
    with Spool(tmp_path, "--max-connections", "2") as sp:
        a, b = connect(sp.port), connect(sp.port)
        wait_until(lambda: sp.metrics()["etl_spool_connections_open"] == 2, 10, "2 clients")
        with connect(sp.port) as c:
            assert recv_all(c).startswith(b"ERR busy")
        a.sendall(b'{"c":0,"i":0}\n')
        a.close()
        wait_until(lambda: sp.metrics()["etl_spool_connections_open"] == 1, 10, "a to close")
        send(sp.port, b'{"c":1,"i":0}\n')
        b.close()
        m = sp.metrics()
        assert sp.stop() == 0
        assert by_client(sp.lines()) == {0: [0], 1: [0]}
    assert m['etl_spool_connections_refused_total{reason="too_many"}'] == 1


def test_idle_clients_time_out_and_free_their_slot(tmp_path):
    with Spool(tmp_path, "--idle-timeout", "1", "--max-connections", "1") as sp:
        with connect(sp.port) as s:
            s.sendall(b'{"c":0,"i":0}\n{"c":0,"i":')
            t0 = time.monotonic()
            assert recv_all(s, 10) == b""  # the spooler closed it
            assert 0.8 < time.monotonic() - t0 < 5
        send(sp.port, b'{"c":1,"i":0}\n')  # the slot is free again
        m = sp.metrics()
        assert sp.stop() == 0
        assert by_client(sp.lines()) == {0: [0], 1: [0]}
        assert [r["reason"] for r in sp.rejects()] == ["incomplete"]
    assert m["etl_spool_idle_timeouts_total"] == 1


def test_metrics_endpoint(tmp_path):
    with Spool(tmp_path, "--window", "1") as sp:
        data = b"\n".join(client_lines(0, 100)) + b"\nbad\n"
        send(sp.port, data)
        m = wait_until(lambda: (x := sp.metrics())["etl_spool_windows_sealed_total"] >= 1 and x,
                       10, "a window to be sealed")
        with pytest.raises(urllib.error.HTTPError, match="404"):
            sp.metrics("/nope")
        assert sp.stop() == 0
    assert m["etl_spool_connections_total"] == 1 and m["etl_spool_connections_open"] == 0
    assert m["etl_spool_lines_total"] == 100 and m["etl_spool_bytes_total"] == len(data)
    assert m['etl_spool_rejects_total{reason="invalid_json"}'] == 1
    assert m["etl_spool_backpressure_seconds_total"] >= 0


@pytest.mark.parametrize("args, match", [
    (["--listen", "0.0.0.0:0"], "--token-file"),
    (["--listen", "nonsense"], "HOST:PORT"),
    (["--max-bytes", "12T"], "K, M or G"),
    (["--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"], "TLS certificate"),
])
def test_usage_errors_exit_2_with_what_to_fix(tmp_path, args, match):
    res = subprocess.run(SPOOL + ["--out", str(tmp_path), *args], capture_output=True,
                         timeout=30, cwd=ROOT)
    assert res.returncode == 2 and re.search(match, res.stderr.decode()), res.stderr


def test_a_second_spooler_on_the_same_feed_or_port_exits_2(tmp_path):
    with Spool(tmp_path, metrics=False) as sp:
        same_feed = subprocess.run(SPOOL + ["--listen", f"{HOST}:0", "--out", str(sp.out),
                                            "--feed", sp.feed], capture_output=True, timeout=30)
        same_port = subprocess.run(SPOOL + ["--listen", f"{HOST}:{sp.port}", "--out",
                                            str(tmp_path / "other")],
                                   capture_output=True, timeout=30)
        assert sp.stop() == 0
    assert same_feed.returncode == 2 and b"another spooler" in same_feed.stderr
    assert same_port.returncode == 2 and b"cannot listen" in same_port.stderr


# ---------------------------------------------------------------- resources

@pytest.mark.slow
def test_memory_stays_bounded_with_100_fast_clients(tmp_path):
    n_clients, per_client = 100, 2 << 20
    line_count = per_client // 200
    pads = [p.decode() for p in client_lines(0, line_count, pad=160, noise=True)]
    errors: list[Exception] = []

    def client(c: int, port: int):
        try:  # incompressible-ish lines, built fast so the clients are not the bottleneck
            data = b"\n".join(orjson.dumps({"c": c, "p": pad}) for pad in pads) + b"\n"
            with connect(port) as s:
                s.settimeout(120)
                s.sendall(data)
        except Exception as exc:
            errors.append(exc)

    with Spool(tmp_path, "--max-bytes", "1M") as sp:
        threads = [threading.Thread(target=client, args=(c, sp.port)) for c in range(n_clients)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        wait_until(lambda: sp.metrics()["etl_spool_lines_total"] == n_clients * line_count, 60,
                   "every line to be taken", step=0.1)
        took = time.monotonic() - t0
        peak, m = sp.rss_peak_kib(), sp.metrics()
        assert sp.stop() == 0
        assert not errors
        total = sum(len(x) + 1 for x in sp.lines())
        assert total == m["etl_spool_bytes_total"]
        assert len(sp.shards()) > 10
    print(f"\n100 clients: {total / 1e6:.0f} MB in {took:.1f}s = {total / 1e6 / took:.0f} MB/s, "
          f"peak RSS {peak / 1024:.0f} MiB, backpressure "
          f"{m['etl_spool_backpressure_seconds_total']:.1f}s")
    assert peak < 256 * 1024, f"peak RSS {peak / 1024:.0f} MiB"


@pytest.mark.slow
def test_an_idle_spooler_with_100_idle_clients_uses_no_cpu(tmp_path):
    with Spool(tmp_path) as sp:
        socks = [connect(sp.port) for _ in range(100)]
        wait_until(lambda: sp.metrics()["etl_spool_connections_open"] == 100, 10, "100 clients")
        time.sleep(0.5)
        before, t0 = sp.cpu_seconds(), time.monotonic()
        time.sleep(2.0)
        used, took = sp.cpu_seconds() - before, time.monotonic() - t0
        for s in socks:
            s.close()
        assert sp.stop() == 0
    print(f"\nidle CPU with 100 idle clients: {used:.3f}s over {took:.1f}s")
    assert used <= 0.05


@pytest.mark.slow
def test_xz_dump_piped_through_ncat(tmp_path):
    require_tool("xz")
    ncat = require_tool("ncat")
    from etl.sample import generate, iter_lines

    dump = generate(tmp_path / "dump", lines=2000, codec="xz", bad_rate=0.02, seed=3,
                    name="RC_2015-01")[0]
    sent = list(iter_lines(2000, seed=3, bad_rate=0.02))
    with Spool(tmp_path) as sp:
        subprocess.run(f"xz -dc {dump} | {ncat} {HOST} {sp.port}", shell=True, check=True,
                       timeout=60)
        assert sp.stop() == 0
        stored, rejects = sp.lines(), sp.rejects()
    good = [x.rstrip(b"\r") for x in sent if check_line(x.rstrip(b"\r")) is None]
    assert stored == good and len(stored) + len(rejects) == 2000 and rejects


@pytest.mark.slow
def test_end_to_end_spool_then_etl_run_then_duckdb(tmp_path):
    import duckdb

    from etl.sample import iter_lines

    lines = list(iter_lines(4000, seed=11))
    with Spool(tmp_path, feed="comments") as sp:
        for part in range(4):  # four clients, one after the other
            send(sp.port, b"\n".join(lines[part * 1000:(part + 1) * 1000]) + b"\n")
        assert sp.stop() == 0
    db = tmp_path / "w.duckdb"
    res = subprocess.run([sys.executable, "-m", "etl.cli", "run", str(sp.feed_dir), "--schema",
                          str(SCHEMAS / "reddit_comments.toml"), "--out",
                          str(tmp_path / "processed"), "--db", f"duckdb:///{db}", "--scheduler",
                          "synchronous", "--quiet"], capture_output=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr.decode()
    with duckdb.connect(str(db)) as con:
        assert con.execute("select count(*) from comments").fetchall() == [(4000,)]
        ids = {orjson.loads(x)["id"] for x in lines}
        assert {r[0] for r in con.execute("select id from comments").fetchall()} == ids
