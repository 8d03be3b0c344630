"""Scheduled runs: the run lock, --wait, --every, quick skips and --log-json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from etl.cli import parse_duration
from etl.errors import ConfigError
from etl.lock import Busy, run_lock
from tests.test_pipeline import COMMENTS, ETL, ROOT, run_etl, sample_bytes, write_shard


def test_lock_is_exclusive_and_says_who_holds_it(tmp_path):
    with run_lock(str(tmp_path)):
        with pytest.raises(Busy) as busy:
            with run_lock(str(tmp_path), wait=0.6):
                pass
    assert busy.value.holder["pid"] == os.getpid()
    assert "another run is in progress" in str(busy.value)
    with run_lock(str(tmp_path)):  # released when the block ends
        pass


def hold_lock(out, seconds: float) -> subprocess.Popen:
    """Another process holding the run lock of ``out`` for ``seconds``."""
    holder = subprocess.Popen([sys.executable, "-c",
                               "import time; from etl.lock import run_lock\n"
                               f"with run_lock({str(out)!r}):\n"
                               f"    print('locked', flush=True); time.sleep({seconds})"],
                              stdout=subprocess.PIPE, cwd=ROOT)
    assert holder.stdout.readline().strip() == b"locked"
    return holder


def test_a_killed_holder_does_not_block(tmp_path):
    holder = hold_lock(tmp_path, 60)
    with pytest.raises(Busy):
        with run_lock(str(tmp_path)):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with run_lock(str(tmp_path)):
        pass


def test_overlapping_run_exits_0_or_waits(tmp_path):
    shard = write_shard(tmp_path, "a.zst", sample_bytes(500, seed=1), "zst")
    out = tmp_path / "out"
    holder = hold_lock(out, 3)
    busy = run_etl("ingest", shard, "--schema", COMMENTS, "--out", out, check=0)
    assert b"another run is in progress" in busy.stderr
    assert not (out / "_manifest").exists()
    waited = run_etl("ingest", shard, "--schema", COMMENTS, "--out", out, "--wait", "30",
                     "--scheduler", "synchronous", check=0)
    assert b"another run is in progress" not in waited.stderr
    assert len(list((out / "_manifest").iterdir())) == 1
    holder.wait()


def test_quick_skip_needs_no_task(tmp_path):
    shard = write_shard(tmp_path, "a.zst", sample_bytes(300, seed=2), "zst")
    out = tmp_path / "out"
    run_etl("ingest", shard, "--schema", COMMENTS, "--out", out, "--scheduler", "synchronous",
            check=0)
    # same size and mtime: skipped on the stat alone, the content is not even read
    st = shard.stat()
    shard.write_bytes(b"x" * st.st_size)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    run_etl("ingest", shard, "--schema", COMMENTS, "--out", out, "--report", tmp_path / "r.json",
            check=0)
    assert json.loads((tmp_path / "r.json").read_text())["shards"][0]["status"] == "skipped"
    # a new mtime makes the task compare fingerprints: now it is redone (and fails: not JSON)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    run_etl("ingest", shard, "--schema", COMMENTS, "--out", out, "--report", tmp_path / "r.json",
            check=0)
    redone = json.loads((tmp_path / "r.json").read_text())["shards"][0]
    assert redone["status"] == "ok" and redone["rows_rejected"] == 1


def test_log_json_lines(tmp_path):
    shard = write_shard(tmp_path, "a.gz", sample_bytes(300, seed=3), "gz")
    proc = run_etl("ingest", shard, "--schema", COMMENTS, "--out", tmp_path / "out",
                   "--scheduler", "synchronous", "--log-json", check=0)
    events = [json.loads(line) for line in proc.stderr.decode().splitlines()]
    assert [e["event"] for e in events] == ["workers", "shard", "done"]
    assert events[0]["scheduler"] == "synchronous" and events[0]["workers"] == 1
    assert events[1]["status"] == "ok" and events[1]["path"] == str(shard)
    assert events[2]["lines"] == 300 and events[2]["exit_code"] == 0


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("5m", 300), ("2h", 7200), ("1d", 86400),
                                           ("90", 90), ("0.5m", 30)])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5x", "m", "-1m", "0"])
def test_parse_duration_refuses(text):
    with pytest.raises(ConfigError):
        parse_duration(text)


@pytest.mark.slow
def test_run_every_picks_up_new_shards(tmp_path):
    raw, out, db = tmp_path / "raw", tmp_path / "out", tmp_path / "w.duckdb"
    raw.mkdir()
    write_shard(raw, "a.zst", sample_bytes(400, seed=4, bad_rate=0), "zst")
    loop = subprocess.Popen([*ETL, "run", raw, "--schema", COMMENTS, "--out", out,
                             "--db", f"duckdb:///{db}", "--every", "2s", "--scheduler",
                             "synchronous", "--log-json"], stderr=subprocess.PIPE, cwd=ROOT)
    try:
        assert _wait_for_cycles(loop, 1)
        write_shard(raw, "b.zst", sample_bytes(300, seed=5, bad_rate=0), "zst")
        assert _wait_for_cycles(loop, 2)
    finally:
        loop.send_signal(signal.SIGINT)
        loop.wait(timeout=60)
    import duckdb

    assert duckdb.connect(str(db)).execute("select count(*) from comments").fetchall() == [(700,)]


def _wait_for_cycles(proc: subprocess.Popen, n: int, timeout: float = 90) -> bool:
    """Read --log-json lines until the n-th 'cycle' event."""
    deadline, seen = time.monotonic() + timeout, 0
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            return False
        if json.loads(line).get("event") == "cycle":
            seen += 1
            if seen >= n:
                return True
    return False
