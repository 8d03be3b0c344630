"""How many local workers a run starts: the cores this process may use (its CPU affinity
and its cgroup's CPU quota, not the host's count), or ``--workers`` / ``ETL_WORKERS``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

import etl
from etl.errors import ConfigError
from etl.workers import cgroup_cpu_limit, usable_cores
from tests.conftest import ROOT, require_tool
from tests.test_pipeline import COMMENTS, assert_accounting, run_etl, sample_bytes, write_shard


def cgroups(tmp_path: Path, own: str, files: dict[str, str]) -> tuple[str, str]:
    """A cgroup tree of real files under tmp_path: (its root, the /proc/self/cgroup file)."""
    root = tmp_path / "cgroup"
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (tmp_path / "self").write_text(own)
    return str(root), str(tmp_path / "self")


@pytest.mark.parametrize("files, limit", [
    ({"a/b/cpu.max": "150000 100000\n"}, 2),                 # 1.5 CPUs: rounded up
    ({"a/b/cpu.max": "max 100000\n"}, None),                 # no quota
    ({"a/b/cpu.max": "max 100000\n", "a/cpu.max": "100000 100000\n"}, 1),  # a parent's
    ({"a/b/cpu.max": "400000 100000\n", "cpu.max": "200000 100000\n"}, 2),  # the smallest
    ({"a/b/cpu.max": "25000 100000\n"}, 1),                  # a quarter CPU: still one
    ({}, None),                                              # no cpu controller files
    ({"a/b/cpu.max": "garbage\n"}, None),                    # unreadable: no limit
])
def test_a_cgroup_v2_quota_caps_the_cpus(tmp_path, files, limit):
    root, own = cgroups(tmp_path, "0::/a/b\n", files)
    assert cgroup_cpu_limit(root, own) == limit


@pytest.mark.parametrize("quota, limit", [("250000", 3), ("-1", None)])
def test_a_cgroup_v1_quota_caps_the_cpus(tmp_path, quota, limit):
    root, own = cgroups(tmp_path, "5:memory:/docker/x\n4:cpu,cpuacct:/docker/x\n0::/\n", {
        "cpu,cpuacct/docker/x/cpu.cfs_quota_us": quota + "\n",
        "cpu,cpuacct/docker/x/cpu.cfs_period_us": "100000\n"})
    assert cgroup_cpu_limit(root, own) == limit


def test_no_cgroup_file_means_no_limit(tmp_path):
    assert cgroup_cpu_limit(str(tmp_path), str(tmp_path / "missing")) is None


def test_usable_cores_follow_the_cpu_affinity():
    taskset = require_tool("taskset")
    proc = subprocess.run([taskset, "-c", "0", sys.executable, "-c",
                           "from etl.workers import usable_cores; print(usable_cores())"],
                          capture_output=True, cwd=ROOT, timeout=60, check=True)
    assert proc.stdout.split() == [b"1"]
    assert 1 <= usable_cores()


def workers_event(stderr: bytes) -> dict:
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith(b"{")]
    (found,) = [e for e in events if e["event"] == "workers"]
    return found


@pytest.fixture
def shards(tmp_path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, codec in enumerate(["zst", "gz", "none"]):
        write_shard(folder, f"s{i}.{codec}", sample_bytes(600, seed=40 + i), codec)
    return folder


def rows(out: Path) -> list:
    return duckdb.sql(f"select * from read_parquet('{out}/*=*/*.parquet', "
                      "hive_partitioning=true) order by id").fetchall()


def test_one_usable_core_reads_in_the_command_itself(tmp_path, shards):
    """Pinned to one core (taskset, a container's cpuset), the default is the synchronous
    scheduler, whatever the host's core count."""
    taskset = require_tool("taskset")
    proc = subprocess.run([taskset, "-c", "0", sys.executable, "-m", "etl.cli", "ingest",
                           str(shards), "--schema", COMMENTS, "--out", str(tmp_path / "out"),
                           "--log-json"], capture_output=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert workers_event(proc.stderr) == {**workers_event(proc.stderr),
                                          "scheduler": "synchronous", "workers": 1, "tasks": 3}


@pytest.mark.parametrize("args, env, scheduler, count", [
    (["--workers", "3"], {}, "processes", 3),
    (["--workers", "2", "--scheduler", "threads"], {}, "threads", 2),
    (["--workers", "1"], {}, "synchronous", 1),
    ([], {"ETL_WORKERS": "1"}, "synchronous", 1),
    (["--workers", "5"], {}, "processes", 3),  # never more than the tasks
])
def test_workers_flag_sets_the_count_and_the_output_is_the_same(tmp_path, shards, args, env,
                                                                scheduler, count):
    default = tmp_path / "default"
    etl.ingest([shards], COMMENTS, default, scheduler="synchronous")
    out, report = tmp_path / "out", tmp_path / "report.json"
    proc = run_etl("ingest", shards, "--schema", COMMENTS, "--out", out, "--report", report,
                   "--log-json", *args, env=env, check=0)
    event = workers_event(proc.stderr)
    assert (event["scheduler"], event["workers"], event["tasks"]) == (scheduler, count, 3)
    assert_accounting(json.loads(report.read_text()))
    assert rows(out) == rows(default)


@pytest.mark.parametrize("args, env, message", [
    (["--workers", "0"], {}, b"--workers 0: at least 1"),
    (["--workers", "2", "--scheduler", "tcp://127.0.0.1:9"], {},
     b"the Dask cluster at tcp://127.0.0.1:9 has its own"),
    ([], {"ETL_WORKERS": "two"}, b"invalid int value: 'two'"),
])
def test_a_bad_worker_count_exits_2(tmp_path, shards, args, env, message):
    proc = run_etl("ingest", shards, "--schema", COMMENTS, "--out", tmp_path / "out", *args,
                   env=env, check=2)
    assert message in proc.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*=*"))


def test_the_python_api_takes_workers(tmp_path, shards):
    report = etl.ingest([shards], COMMENTS, tmp_path / "out", workers=2)
    assert_accounting(report)
    with pytest.raises(ConfigError, match="at least 1"):
        etl.ingest([shards], COMMENTS, tmp_path / "out2", workers=0)
