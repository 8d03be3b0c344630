"""A throwaway PostgreSQL cluster for the tests: initdb + pg_ctl, trust auth, 127.0.0.1 only.

``pg_server`` (session-scoped) starts one cluster on a free port and stops it at
the end; ``PgServer.new_database()`` gives each test its own database URL.
Under ``CI=true`` a server that cannot start fails the test; elsewhere it skips.
As root (initdb and postgres refuse to run as root) the cluster runs as the
``postgres`` system user (else ``nobody``) through ``runuser``.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field

import pytest

from tests.conftest import IN_CI

HOST = "127.0.0.1"
START_TIMEOUT = 60  # seconds pg_ctl waits for the server to accept connections


def _unavailable(msg: str):
    if IN_CI:
        pytest.fail(msg)
    pytest.skip(msg)


def pg_bindir() -> str | None:
    """The folder holding initdb, pg_ctl and postgres (PATH first, then the Debian layout)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(os.path.realpath(found))
    for bindir in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(bindir, "initdb")):
            return bindir
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _server_user() -> str | None:
    """The user to run the cluster as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    _unavailable("running as root and neither a postgres nor a nobody user exists")


@dataclass
class PgServer:
    """A running cluster; ``stop()`` ends it and removes its files."""

    bindir: str
    root: str
    port: int
    user: str | None
    _names: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def data(self) -> str:
        return os.path.join(self.root, "data")

    @property
    def log(self) -> str:
        return os.path.join(self.root, "server.log")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{database}"

    def _cmd(self, tool: str, *args: str) -> list[str]:
        cmd = [os.path.join(self.bindir, tool), *args]
        return ["runuser", "-u", self.user, "--", *cmd] if self.user else cmd

    def run(self, tool: str, *args: str, timeout: float = START_TIMEOUT):
        return subprocess.run(self._cmd(tool, *args), stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)

    def start(self) -> None:
        init = self.run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres",
                        "-E", "UTF8", "--locale=C", "--no-sync")
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
        opts = (f"-c listen_addresses={HOST} -p {self.port} -k {self.root} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c max_connections=50")
        started = self.run("pg_ctl", "-D", self.data, "-l", self.log, "-w",
                           "-t", str(START_TIMEOUT), "-o", opts, "start",
                           timeout=START_TIMEOUT + 10)
        if started.returncode != 0:
            tail = open(self.log).read()[-2000:] if os.path.exists(self.log) else ""
            raise RuntimeError(f"pg_ctl start failed: {started.stderr.strip()}\n{tail}")

    def stop(self) -> None:
        self.run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def execute(self, sql: str, database: str = "postgres") -> list[tuple]:
        """Run one statement in autocommit (CREATE DATABASE needs it); return its rows."""
        import psycopg

        conninfo = f"host={HOST} port={self.port} user=postgres dbname={database}"
        with psycopg.connect(conninfo, autocommit=True) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        name = f"test_{next(self._names)}"
        self.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def start_server() -> PgServer:
    """Start a cluster in a fresh temporary folder, or skip/fail saying why."""
    bindir = pg_bindir()
    if bindir is None:
        _unavailable("PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        _unavailable("running as root and runuser is missing: cannot start postgres")
    user = _server_user()
    root = tempfile.mkdtemp(prefix="etl-pg-", dir="/tmp")
    os.chmod(root, 0o755)  # the server user must traverse it
    if user:
        pw = pwd.getpwnam(user)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    server = PgServer(bindir, root, free_port(), user)
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(f"cannot start a PostgreSQL server: {exc}")
    return server


@pytest.fixture(scope="session")
def pg_server():
    """One PostgreSQL cluster for the whole session, stopped at its end."""
    server = start_server()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh database on the session's cluster, as a SQLAlchemy URL."""
    return pg_server.new_database()
