"""Chaos for `etl run` and `etl load`: SIGKILL at seeded random moments, PostgreSQL stopped
mid-load.

Rules held (README, "Exactly once" and the retry paragraph):

- Killing `etl run` at any moment (its worker processes too) and running it again until it
  finishes leaves the warehouse equal, row for row, to a clean run; `_etl_loads` records
  every file of every shard exactly once; committed shards stay committed.
- A PostgreSQL server that goes away mid-load is retried 5 times with backoff (0.5 s,
  doubling); if it does not come back, the load stops with exit 4 and a message naming
  host and port. Nothing of the shard in flight is committed: the table holds exactly the
  rows of the shards `_etl_loads` records. Once the server is back, a rerun completes.
"""

from __future__ import annotations

import itertools
import random
import subprocess
import time
from collections import Counter
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

import etl
from etl.load.base import BACKOFF, RETRIES
from etl.sample import generate
from tests.chaos.conftest import scale
from tests.chaos.ingest_tools import count_diff, leftovers
from tests.chaos.load_tools import (finished, is_running, loaded_files, loaded_shards, query,
                                    run_until, start_server, stop_server, table_rows)
from tests.conftest import ROOT
from tests.pg import pg_server  # noqa: F401  (the session's PostgreSQL cluster)
from tests.pg import start_server as new_pg_server
from tests.test_pipeline import COMMENTS, ETL, run_etl

SEED = 20150201
SHARDS = scale(4, 8)                # shards per kill test, half zst, half gz
LINES = scale(1200, 3000)           # lines per shard
KILLS = {"duckdb": scale(20, 40), "postgres": scale(8, 24)}
BACKENDS = ["duckdb", pytest.param("postgres", marks=pytest.mark.slow)]


# ---------------------------------------------------------------- inputs and references

@pytest.fixture(scope="module")
def shard_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("kill") / "in"
    half = SHARDS // 2
    generate(folder, lines=half * LINES, shards=half, codec="zst", bad_rate=0.02, days=3,
             seed=11, name="RC_2015-01")
    generate(folder, lines=half * LINES, shards=half, codec="gz", bad_rate=0.02, days=3,
             seed=41, name="RC_2015-02", start="2015-02-01")  # ids apart from seed 11
    return folder


@pytest.fixture
def new_db(request, tmp_path):
    """A factory of fresh, empty warehouse URLs on the test's backend."""
    if request.node.callspec.params["backend"] == "postgres":
        return request.getfixturevalue("pg_server").new_database
    names = itertools.count(1)
    return lambda: f"duckdb:///{tmp_path}/w{next(names)}.duckdb"


def _run_cmd(folder: Path, out: Path, url: str) -> list[str]:
    return [*ETL, "run", str(folder), "--schema", COMMENTS, "--out", str(out), "--db", url,
            "--log-json"]


def _timed_clean_run(cmd: list[str]) -> tuple[float, float]:
    """Run to the end; return (seconds until ingest ended, seconds until load ended)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ingest_end = load_end = None
    lines = []
    for line in proc.stderr:  # --log-json: the shard events come when ingest is over,
        lines.append(line)    # "done" when the load is (then only the exit is left)
        if ingest_end is None and b'"event": "shard"' in line:
            ingest_end = time.monotonic() - start
        if load_end is None and b'"event": "done"' in line:
            load_end = time.monotonic() - start
    assert proc.wait() == 0, b"".join(lines).decode()
    total = time.monotonic() - start
    return ingest_end or total / 2, load_end or total


def _parquet_ids(out: Path) -> list[str]:
    return [r[0] for r in duckdb.sql(
        f"SELECT id FROM read_parquet('{out}/*=*/*.parquet')").fetchall()]


def _phase(out: Path, url: str, files: int) -> str:
    """Where a kill landed, judged by what it left behind."""
    if len(finished(out)) < SHARDS:
        return "ingest"
    return "load" if len(set(loaded_files(url))) < files else "after load"


def _verify(out: Path, url: str, clean: list[tuple], clean_ids: list[str]) -> tuple[int, int]:
    """The warehouse equals a clean run's; returns (lost, doubled) over table and Parquet."""
    rows = table_rows(url)
    table_lost, table_doubled = count_diff([r[0] for r in clean], [r[0] for r in rows])
    parquet_lost, parquet_doubled = count_diff(clean_ids, _parquet_ids(out))
    assert rows == clean  # row for row, every column
    done = finished(out)
    assert len(done) == SHARDS  # no shard missing
    recorded = loaded_files(url)
    assert len(recorded) == len(set(recorded))  # every file recorded once
    assert set(recorded) == {f for files in done.values() for f in files}
    assert leftovers(out) == []
    return table_lost + parquet_lost, table_doubled + parquet_doubled


# ---------------------------------------------------------------- SIGKILL etl run

@pytest.mark.slow  # 40 s on DuckDB at small scale
@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_etl_run_at_random_moments(backend, new_db, shard_folder, tmp_path, chaos):
    clean_out, clean_url = tmp_path / "clean", new_db()
    ingest_end, load_end = _timed_clean_run(_run_cmd(shard_folder, clean_out, clean_url))
    clean, clean_ids = table_rows(clean_url), _parquet_ids(clean_out)
    files = sum(len(f) for f in finished(clean_out).values())
    assert len(clean) > SHARDS * LINES * 0.9

    rng = random.Random(f"{SEED}-{backend}")
    kills, attempts, rounds, phases = 0, 0, 0, Counter()
    lost = doubled = 0
    out, url = tmp_path / "r0", new_db()
    committed: set[str] = set()
    while kills < KILLS[backend]:
        attempts += 1
        assert attempts <= 4 * KILLS[backend], f"kills kept missing: {phases}"
        lo, hi = (0.0, ingest_end) if attempts % 2 else (ingest_end, load_end)  # ingest, load
        outcome = run_until(_run_cmd(shard_folder, out, url), rng.uniform(lo, hi),
                            tmp_path / "stderr.txt")
        if outcome.killed:
            assert outcome.survivors == [], f"processes outlived SIGKILL: {outcome.survivors}"
            kills += 1
            phases[_phase(out, url, files)] += 1
            now = loaded_shards(url)
            assert committed <= now, "a committed shard was lost"
            committed = now
            continue
        assert outcome.code == 0, outcome.stderr[-3000:]  # a run after kills must succeed
        miss, extra = _verify(out, url, clean, clean_ids)
        lost, doubled, rounds = lost + miss, doubled + extra, rounds + 1
        out, url, committed = tmp_path / f"r{rounds}", new_db(), set()
    run_etl(*_run_cmd(shard_folder, out, url)[3:], check=0)  # then run to the end
    miss, extra = _verify(out, url, clean, clean_ids)
    lost, doubled, rounds = lost + miss, doubled + extra, rounds + 1

    name = {"duckdb": "DuckDB", "postgres": "Postgres"}[backend]
    checked = 2 * len(clean) * rounds  # ids in the table and in the Parquet, every round
    chaos.record(f"SIGKILL etl run ({name})", trials=attempts, faults=kills, expected=checked,
                 found=checked - lost + doubled, lost=lost, doubled=doubled)
    assert lost == 0 and doubled == 0
    assert phases["ingest"] >= 1 and phases["load"] >= 1, phases  # both stages were hit


# ---------------------------------------------------------------- PostgreSQL stopped mid-load

STOP_SHARDS = scale(24, 40)
STOP_MODES = scale(["fast", "immediate"], ["fast", "immediate"] * 3)
RETRY_SECONDS = sum(BACKOFF * 2 ** i for i in range(RETRIES - 1))  # 7.5 s of backoff


@pytest.fixture(scope="module")
def own_pg():
    """A cluster of this module's own: the test stops and starts it."""
    server = new_pg_server()
    try:
        yield server
    finally:
        if not is_running(server):
            start_server(server)
        server.stop()


def _ids_by_shard(out: Path) -> dict[str, set[str]]:
    return {shard: {i for f in files for i in pq.read_table(out / f, columns=["id"])
                    .column("id").to_pylist()}
            for shard, files in finished(out).items()}


def _wait_for_commits(proc: subprocess.Popen, url: str, at_least: int) -> set[str]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the load ended before the server could be stopped"
        done = loaded_shards(url)
        if len(done) >= at_least:
            return done
        time.sleep(0.02)
    raise AssertionError("the load made no progress")


@pytest.mark.slow
def test_postgres_stopped_mid_load_retries_then_fails_cleanly(own_pg, tmp_path, chaos):
    generate(tmp_path / "in", lines=STOP_SHARDS * 150, shards=STOP_SHARDS, codec="zst",
             days=2, seed=21)
    out = tmp_path / "out"
    etl.ingest([str(tmp_path / "in")], COMMENTS, out, scheduler="synchronous")
    by_shard = _ids_by_shard(out)
    # small batches (about two shards each): commits to wait for before the stop
    load = ["load", "--from", str(out), "--schema", COMMENTS, "--batch-rows", "300"]
    clean_url = own_pg.new_database()
    run_etl(*load, "--db", clean_url, check=0)
    clean = table_rows(clean_url)

    rng = random.Random(SEED)
    lost = doubled = 0
    for mode in STOP_MODES:
        url = own_pg.new_database()
        own_pg.execute(f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET synchronous_commit = on")
        proc = subprocess.Popen([*ETL, *load, "--db", url], cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        seen = _wait_for_commits(proc, url, rng.randint(1, STOP_SHARDS // 3))
        stopped = time.monotonic()
        stop_server(own_pg, mode)
        code, err = proc.wait(timeout=120), proc.stderr.read().decode()
        waited = time.monotonic() - stopped
        start_server(own_pg)

        assert code == 4, err
        assert f"127.0.0.1:{own_pg.port}" in err and f"failed {RETRIES} times" in err, err
        assert "nothing of it was committed" in err and "Traceback" not in err, err
        assert waited >= RETRY_SECONDS * 0.9, f"gave up after {waited:.1f} s: no retries"
        now = loaded_shards(url)
        assert seen <= now and len(now) < STOP_SHARDS, (mode, len(seen), len(now))
        ids = [r[0] for r in query(url, "SELECT id FROM comments")]
        assert set(ids) == set().union(*(by_shard[s] for s in now))  # no partial commit
        recorded = loaded_files(url)
        assert sorted(recorded) == sorted(f for s in now for f in finished(out)[s])

        run_etl(*load, "--db", url, check=0)  # the server is back: a rerun completes
        rows = table_rows(url)
        miss, extra = count_diff([r[0] for r in clean], [r[0] for r in rows])
        lost, doubled = lost + miss, doubled + extra
        assert rows == clean
        assert len(loaded_files(url)) == len(set(loaded_files(url)))
    trials = len(STOP_MODES)
    chaos.record("Postgres stopped mid-load (fast/immediate)", trials=trials, faults=trials,
                 expected=len(clean) * trials, found=len(clean) * trials - lost + doubled,
                 lost=lost, doubled=doubled)
    assert lost == 0 and doubled == 0

