"""Helpers for the load chaos tests: SIGKILL a whole process group at a chosen moment,
read a warehouse back, and stop / start a throwaway PostgreSQL server.

Nothing here asserts; the tests do.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import sqlalchemy as sa

from etl.manifest import read_all_manifests
from tests.conftest import ROOT
from tests.pg import HOST, START_TIMEOUT, PgServer

GONE_TIMEOUT = 15  # seconds for a killed process group to disappear


# ---------------------------------------------------------------- processes

def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group ``pgid``."""
    alive = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, group = fields[0], int(fields[2])
        if group == pgid and state not in ("Z", "X"):
            alive.append(int(entry))
    return alive


@dataclass
class Outcome:
    killed: bool          # SIGKILLed before it finished
    code: int | None      # its exit code when it finished on its own
    stderr: str
    survivors: list[int]  # processes of its group still alive after the kill


def run_until(cmd: list[str], delay: float, log: Path, timeout: float = 300) -> Outcome:
    """Run ``cmd`` in a new session; SIGKILL its whole process group after ``delay`` s.

    The group holds the command and every process it starts (the ``processes``
    scheduler's workers, the multiprocessing resource tracker), so all die together,
    as they would on an OOM kill of the group or a power cut.
    """
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=err)
        try:
            code = proc.wait(timeout=delay)
            return Outcome(False, code, log.read_text(errors="replace"), [])
        except subprocess.TimeoutExpired:
            pass
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    deadline = time.monotonic() + GONE_TIMEOUT
    while (left := _group_members(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return Outcome(True, None, log.read_text(errors="replace"), left)


# ---------------------------------------------------------------- what the warehouse holds

def query(url: str, statement: str) -> list[tuple]:
    """Rows of one statement, in its own connection (DuckDB: read-only, then closed)."""
    if url.startswith("duckdb:///"):
        path = url[len("duckdb:///"):]
        if not os.path.exists(path):
            return []
        con = duckdb.connect(path, read_only=True)
        try:
            return [tuple(r) for r in con.execute(statement).fetchall()]
        finally:
            con.close()
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.execute(sa.text(statement))]
    finally:
        engine.dispose()


def has_table(url: str, name: str) -> bool:
    return bool(query(url, "SELECT 1 FROM information_schema.tables "
                           f"WHERE table_name = '{name}'"))


def table_rows(url: str, name: str = "comments") -> list[tuple]:
    return query(url, f"SELECT * FROM {name} ORDER BY id") if has_table(url, name) else []


def loaded_files(url: str) -> list[str]:
    """Every file recorded in ``_etl_loads`` (duplicates kept)."""
    return [r[0] for r in query(url, "SELECT file FROM _etl_loads")] \
        if has_table(url, "_etl_loads") else []


def loaded_shards(url: str) -> set[str]:
    return {r[0] for r in query(url, "SELECT DISTINCT shard FROM _etl_loads")} \
        if has_table(url, "_etl_loads") else set()


def finished(out: Path) -> dict[str, list[str]]:
    """Shards the manifest says are ingested ok -> the files they published."""
    if not (out / "_manifest").is_dir():
        return {}
    return {r["path"]: [f["path"] for f in r["files"]] for r in read_all_manifests(str(out))
            if r.get("status") == "ok"}


# ---------------------------------------------------------------- a server we may stop

def server_options(server: PgServer) -> str:
    """The options tests.pg starts its servers with (keep in step with PgServer.start)."""
    return (f"-c listen_addresses={HOST} -p {server.port} -k {server.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=50")


def stop_server(server: PgServer, mode: str) -> None:
    """``pg_ctl stop -m fast|immediate``: sessions are cut, the server is gone."""
    done = server.run("pg_ctl", "-D", server.data, "-m", mode, "-w", "stop")
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctl stop failed: {done.stderr.strip()}")


def start_server(server: PgServer) -> None:
    """Start a stopped server again on the same port and data folder."""
    done = server.run("pg_ctl", "-D", server.data, "-l", server.log, "-w",
                      "-t", str(START_TIMEOUT), "-o", server_options(server), "start",
                      timeout=START_TIMEOUT + 10)
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctl start failed: {done.stderr.strip()}")


def is_running(server: PgServer) -> bool:
    return server.run("pg_ctl", "-D", server.data, "status").returncode == 0
