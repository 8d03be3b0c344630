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
from etl.workers import cgroup_cpu_limit
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
    event = workers_event(proc.stderr)
    assert (event["scheduler"], event["workers"], event["tasks"]) == ("synchronous", 1, 3)


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
    (["--workers", "3", "--scheduler", "synchronous"], {},
     b"--workers 3 with the synchronous scheduler"),
    (["--scheduler", "synchronous"], {"ETL_WORKERS": "2"},
     b"--workers 2 with the synchronous scheduler"),
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


# ------------------------------------------------------------- memory: zstd windows

def zstd_file(path: Path, data: bytes, *args: str, pipe: bool = True) -> Path:
    """A zstd file by the real tool: from a pipe (no content size in the header), or
    from a file (content size known)."""
    zstd = require_tool("zstd")
    if pipe:
        path.write_bytes(subprocess.run([zstd, "-q", "-c", *args], input=data,
                                        capture_output=True, check=True).stdout)
    else:
        src = path.with_suffix(".src")
        src.write_bytes(data)
        subprocess.run([zstd, "-q", "-f", *args, str(src), "-o", str(path)], check=True)
    return path


def shard(path: Path):
    from etl.shards import find_shards

    (found,) = find_shards([str(path)])
    return found


def test_a_zstd_window_is_read_from_the_first_frame_header(tmp_path):
    from etl.shards import zstd_window

    data = sample_bytes(2000, seed=7)
    long_pipe = zstd_file(tmp_path / "long.zst", data, "--long=31")
    assert zstd_window(shard(long_pipe)) == 2 << 30  # Pushshift's: the full 2 GiB
    long_file = zstd_file(tmp_path / "longf.zst", data, "--long=31", pipe=False)
    assert zstd_window(shard(long_file)) == len(data)  # no more than the content
    plain = zstd_file(tmp_path / "plain.zst", data)
    assert 0 < zstd_window(shard(plain)) <= 8 << 20
    skippable = tmp_path / "skip.zst"  # a skippable frame first, then the long one
    skippable.write_bytes(b"\x50\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"meta!"
                          + long_pipe.read_bytes())
    assert zstd_window(shard(skippable)) == 2 << 30
    gz = write_shard(tmp_path, "a.gz", data, "gz")
    text = write_shard(tmp_path, "a.ndjson", data, "none")
    assert zstd_window(shard(gz)) == zstd_window(shard(text)) == 0
    truncated = tmp_path / "cut.zst"
    truncated.write_bytes(long_pipe.read_bytes()[:5])
    assert zstd_window(shard(truncated)) == 0


def config(tmp_path: Path, **kw):
    from etl.config import IngestConfig
    from etl.schema import load_schema

    return IngestConfig(schema=load_schema(COMMENTS), out=str(tmp_path / "out"),
                        scheduler=kw.pop("scheduler", "processes"), **kw)


@pytest.fixture
def etl_logger():
    """The etl logger, put back as it was after the test."""
    import logging

    logger = logging.getLogger("etl")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_workers_are_fewer_when_their_windows_would_not_fit(tmp_path, capsys, etl_logger):
    from etl.logs import setup_logging
    from etl.pipeline import fit_memory

    setup_logging(json_lines=True)  # as --log-json: onto the standard error captured here
    data = sample_bytes(2000, seed=8)
    long = [shard(zstd_file(tmp_path / f"RC_{i}.zst", data, "--long=31")) for i in range(4)]
    plain = [shard(zstd_file(tmp_path / f"p{i}.zst", data)) for i in range(4)]
    gib = 1 << 30
    # 4 cores, 3 GiB left: one worker of 300 MiB + a 2 GiB window fits beside the command
    capped = fit_memory(long, config(tmp_path), cores=4, available=3 * gib)
    assert capped.workers == 1
    event = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert (event["event"], event["level"], event["workers"], event["cores"],
            event["window"]) == ("workers_capped", "warning", 1, 4, 2 * gib)
    assert "--workers overrides" in event["message"]
    # 64 GiB: all four; small windows in 1 GiB: two of about 300 MiB each
    assert fit_memory(long, config(tmp_path), cores=4, available=64 * gib).workers is None
    assert fit_memory(plain, config(tmp_path), cores=4, available=gib).workers == 2
    # bigger batches, bigger workers: 662 MiB each at 128 MiB batches, so one
    assert fit_memory(plain, config(tmp_path, batch_bytes=128 << 20), cores=4,
                      available=gib).workers == 1
    # a count the user gave, the synchronous scheduler, one core: left as they are
    assert fit_memory(long, config(tmp_path, workers=3), cores=4, available=gib).workers == 3
    assert fit_memory(long, config(tmp_path, scheduler="synchronous"), cores=4,
                      available=gib).workers is None
    assert fit_memory(long, config(tmp_path), cores=1, available=gib).workers is None
    assert fit_memory([], config(tmp_path), cores=4, available=gib).workers is None


def test_memory_left_in_a_cgroup(tmp_path):
    from etl.workers import cgroup_memory_left

    root, own = cgroups(tmp_path, "0::/a\n", {"a/memory.max": "4294967296\n",
                                              "a/memory.current": "1073741824\n"})
    assert cgroup_memory_left(root, own) == 3 << 30
    root, own = cgroups(tmp_path / "v1", "9:memory:/d\n0::/\n", {
        "memory/d/memory.limit_in_bytes": "9223372036854771712\n",  # v1's "no limit"
        "memory/d/memory.usage_in_bytes": "1000\n"})
    assert cgroup_memory_left(root, own) is None
    root, own = cgroups(tmp_path / "v1b", "9:memory:/d\n", {
        "memory/d/memory.limit_in_bytes": "2000\n", "memory/d/memory.usage_in_bytes": "500\n",
        "memory/memory.limit_in_bytes": "1200\n", "memory/memory.usage_in_bytes": "600\n"})
    assert cgroup_memory_left(root, own) == 600  # the parent's is the smaller


def test_memory_available_reads_meminfo(tmp_path):
    from etl.workers import memory_available

    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       1000 kB\nMemAvailable:     512 kB\n")
    left = memory_available(str(meminfo))
    assert left is not None and left <= 512 * 1024
    assert memory_available() > 0
