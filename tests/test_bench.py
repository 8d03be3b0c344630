"""The benchmark harness (bench/): its pure parts and the job's equivalence, no timings.

The DuckDB (and Polars) translation of bench/bench_schema.toml must keep exactly
the rows etl keeps: checked on ~1000 generated lines, counts and a content hash.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from bench import data, engines, jobs, report
from bench.measure import measure
from bench.report import Result
from bench.run import output_rows
from etl.config import IngestConfig
from etl.pipeline import run_ingest
from etl.sample import generate
from etl.schema import load_schema

ROOT = Path(__file__).resolve().parent.parent


def _fake_ds(tmp_path: Path, shards: int = 4) -> data.Dataset:
    ds = data.Dataset("t", 100, shards, data.CODECS, tmp_path)
    (tmp_path / "none").mkdir()
    for i in range(shards):
        (tmp_path / "none" / f"RC_{i:03d}.ndjson").write_bytes(b"{}\n" * 10)
    return ds


def test_limit_shell_splits_shards_round_robin():
    files = [Path(f"s{i}") for i in range(4)]
    assert jobs.limit_shell("xz -dc", files, 1) == "xz -dc s0 s1 s2 s3 > /dev/null"
    assert jobs.limit_shell("xz -dc", files, 2) == \
        "xz -dc s0 s2 > /dev/null & xz -dc s1 s3 > /dev/null & wait"
    assert jobs.limit_shell("cat", files[:1], 2) == "cat s0 > /dev/null"


def test_compress_command_prefers_parallel_tools_when_installed():
    src, dst = Path("a b.ndjson"), Path("out.gz")
    assert data.compress_command("gz", src, dst, have=lambda _: "/usr/bin/pigz") == \
        "pigz -6 -c 'a b.ndjson' > out.gz"
    assert data.compress_command("gz", src, dst, have=lambda _: None).startswith("gzip -6")
    assert "< 'a b.ndjson'" in data.compress_command("zst-long", src, dst)  # keeps 2 GiB window
    with pytest.raises(ValueError):
        data.compress_command("lz4", src, dst)


def test_codec_steps_pipe_into_duckdb_and_skip_polars_where_they_cannot_read(tmp_path):
    ds = _fake_ds(tmp_path)
    by_tool = {s.tool.split()[0]: s for s in jobs.codec_steps(ds, "xz", tmp_path,
                                                             ("etl", "duckdb", "polars"))}
    assert by_tool["duckdb"].shell.startswith("xz -dc -T1 ")
    assert by_tool["duckdb"].shell.endswith("/dev/stdin")
    assert by_tool["polars"].skipped and "xz" in by_tool["polars"].note
    zst = jobs.codec_steps(ds, "zst", tmp_path, ("limit", "duckdb"))
    assert [s.kind for s in zst] == ["limit1", "limit2", "engine"]
    assert zst[-1].argv[-1].endswith("zst/*.ndjson.zst") and zst[-1].bytes_in == 120


def _result(codec, tool, kind, seconds, rows=10, tree=100.0, others=0.0):
    step = jobs.Step(codec, tool, kind, argv=("true",), bytes_in=100 * report.MB)
    return Result(step, seconds, tree, tree, rows if kind in ("etl", "engine") else None, "h",
                  cpu_seconds=seconds, others_busy=others)


def test_targets_pass_and_fail_by_ratio():
    results = [_result("zst", "decompress, 2 cores", "limit2", 1.0),
               _result("zst", "etl", "etl", 2.0), _result("zst", "duckdb", "engine", 1.0),
               _result("xz", "decompress, 2 cores", "limit2", 4.0),
               _result("xz", "etl", "etl", 4.5, tree=5000.0, others=0.4)]
    assert report.speed_ratio(results, "zst") == pytest.approx(0.5)
    assert report.speed_ratio(results, "xz") == pytest.approx(4.0 / 4.5)
    faster_alone = [*results, _result("xz", "decompress, 1 core", "limit1", 3.0)]
    assert report.speed_ratio(faster_alone, "xz") == pytest.approx(3.0 / 4.5)
    text = "\n".join(report.target_lines(results, ("zst", "xz")))
    assert "| zst: etl ≥ 1.0× DuckDB | 0.50× | **FAIL** |" in text
    assert ("| xz: etl ≥ 0.8× the 2-core decompression limit | 0.89× | PASS (noisy: other "
            "processes used 40% of the machine) |") in text
    assert "xz: etl peak memory (whole tree) ≤ 1024 MiB | 5000 MiB | **FAIL**" in text
    assert "2 runs agree" not in text and "3 runs agree" in text
    quick = report.quick_lines(results)
    assert quick[0].startswith("zst: etl 50 MB/s vs DuckDB 100 MB/s = 0.50× FAIL")


def test_codec_table_marks_rows_that_differ_from_etl():
    results = [_result("gz", "etl", "etl", 1.0), _result("gz", "duckdb", "engine", 1.0),
               _result("gz", "polars", "engine", 1.0, rows=9),
               Result(jobs.Step("gz", "skipped tool", "engine", note="cannot read gz"))]
    table = report.codec_table(results, "gz")
    assert table[0] == "### gz" and len(table) == 4 + 4 + 1  # title, header, rows, blank
    assert table[4].startswith("| etl | 1.0 | 100 | 1.00× **PASS** (≥ 1.0) | — |")
    assert "10 (= etl)" in table[5] and "9 (≠ etl)" in table[6] and "cannot read gz" in table[7]
    assert report.target_lines(results, ("gz",))[-1].endswith("differ: gz/polars | **FAIL** |")


def test_memory_growth_and_load_ratio():
    one = _result("zst", "1x", "memory", 10.0, tree=400.0)
    four = _result("zst", "4x", "memory", 40.0, tree=420.0)
    assert report.memory_check([one, four])[2] == pytest.approx(1.05)
    etl_load = _result("load", "etl load", "load", 2.0)
    ctas = _result("load", "ctas", "load", 1.0)
    assert report.load_check([etl_load, ctas])[2] == pytest.approx(0.5)
    assert "**FAIL** (≥ 0.8)" in "\n".join(report.load_lines([etl_load, ctas]))


def test_measure_reports_exit_code_and_memory():
    m = measure(shell="exit 3")
    assert m.returncode == 3
    m = measure([sys.executable, "-c", "x = bytearray(64 << 20)"])
    assert m.returncode == 0 and m.max_rss_mib >= 64


def test_duckdb_sql_quotes_and_filters():
    schema = load_schema(engines.SCHEMA)
    sql = engines.duckdb_copy_sql("it's/*.zst", "out", schema)
    assert "read_ndjson('it''s/*.zst'" in sql
    assert "subreddit IN ('news', " in sql and "id IS NOT NULL" in sql
    assert "PARTITION_BY (created_utc_date)" in sql and "COMPRESSION zstd" in sql


@pytest.mark.parametrize("codec", ["zst", "none"])
def test_duckdb_and_polars_keep_the_rows_etl_keeps(tmp_path, codec):
    schema = load_schema(engines.SCHEMA)
    shards = generate(tmp_path / "in", lines=1000, shards=2, codec=codec, bad_rate=0, seed=3)
    report_ = run_ingest([str(s) for s in shards],
                         IngestConfig(schema, str(tmp_path / "etl"), "synchronous",
                                      progress=False))
    etl_rows, etl_digest = output_rows(tmp_path / "etl", "etl")
    assert etl_rows == report_["rows_written"] > 100
    glob = str(tmp_path / "in" / f"*{data.SUFFIXES[codec] or '.ndjson'}")
    assert engines.run_duckdb(glob, str(tmp_path / "duck"), schema) == etl_rows
    assert output_rows(tmp_path / "duck", "engine") == (etl_rows, etl_digest)
    pytest.importorskip("polars")
    engines.run_polars([str(s) for s in shards], str(tmp_path / "polars"), schema)
    assert output_rows(tmp_path / "polars", "engine") == (etl_rows, etl_digest)


def test_missing_compressor_says_what_to_install():
    with pytest.raises(SystemExit, match="xz not found; install"):
        data.check_tools(("zst", "xz"), have=lambda tool: None if tool == "xz" else tool)
    data.check_tools(("none",), have=lambda tool: None)
