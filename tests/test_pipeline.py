"""End to end: the `etl ingest` CLI and the Python API on real compressed shards."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import orjson
import pyarrow.parquet as pq
import pytest

import etl
from etl.sample import iter_lines
from tests.conftest import DATA, ROOT, SCHEMAS, compress, require_tool

ETL = [sys.executable, "-m", "etl.cli"]
COMMENTS = str(SCHEMAS / "reddit_comments.toml")
CODECS = {"zst": ["zstd", "-q", "-c"], "gz": ["gzip", "-c"], "xz": ["xz", "-c"],
          "bz2": ["bzip2", "-c"], "none": None}
REPORT_KEYS = {"lines", "rows_written", "rows_filtered", "rows_rejected", "blank_lines",
               "rejects_by_reason", "bytes_in", "seconds", "shards"}


def run_etl(*args, stdin=None, check=None, env=None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*ETL, *map(str, args)], input=stdin, capture_output=True, cwd=ROOT,
                          timeout=300, env=None if env is None else {**os.environ, **env})
    if check is not None:
        assert proc.returncode == check, proc.stderr.decode()
    return proc


def sample_bytes(n: int, seed: int, bad_rate: float = 0.03) -> bytes:
    return b"\n".join(iter_lines(n, seed=seed, bad_rate=bad_rate)) + b"\n"


def write_shard(folder: Path, name: str, data: bytes, codec: str) -> Path:
    path = folder / name
    path.write_bytes(compress(CODECS[codec], data) if CODECS[codec] else data)
    return path


def warehouse_rows(out: Path) -> int:
    return duckdb.sql(f"select count(*) from read_parquet('{out}/*=*/*.parquet', "
                      "hive_partitioning=true)").fetchall()[0][0]


def assert_accounting(report: dict) -> None:
    assert REPORT_KEYS <= set(report)
    assert report["lines"] == (report["rows_written"] + report["rows_filtered"]
                               + report["rows_rejected"] + report["blank_lines"])
    assert sum(report["rejects_by_reason"].values()) == report["rows_rejected"]
    for shard in report["shards"]:
        assert {"path", "status", "error", "lines", "rows_written", "rows_filtered",
                "rows_rejected"} <= set(shard)


@pytest.mark.parametrize("codec", list(CODECS))
def test_cli_ingests_every_codec(tmp_path, codec):
    data = sample_bytes(3000, seed=7)
    shard = write_shard(tmp_path, f"RC_2015-01.{codec}", data, codec)
    out, report_file = tmp_path / "out", tmp_path / "report.json"
    run_etl("ingest", shard, "--schema", COMMENTS, "--out", out, "--report", report_file,
            "--scheduler", "synchronous", check=0)
    report = json.loads(report_file.read_text())
    assert_accounting(report)
    assert report["lines"] == 3000 and report["shards"][0]["status"] == "ok"
    assert report["rows_rejected"] > 0 and report["blank_lines"] > 0
    assert warehouse_rows(out) == report["rows_written"]
    t = pq.read_table(next(out.glob("created_utc_date=*/*.parquet")))
    assert str(t.schema.field("created_utc").type) == "timestamp[us, tz=UTC]"


def test_rejects_are_kept_byte_for_byte(tmp_path):
    data = sample_bytes(2000, seed=11, bad_rate=0.1).replace(b"\n", b"\r\n", 5)
    shard = write_shard(tmp_path, "s.xz", data, "xz")
    report = etl.ingest([shard], COMMENTS, tmp_path / "out", scheduler="synchronous")
    rejects = pq.read_table(tmp_path / "out" / "_rejects").to_pylist()
    assert len(rejects) == report["rows_rejected"] > 0
    for r in rejects:
        end = data.index(b"\n", r["offset"]) if b"\n" in data[r["offset"]:] else len(data)
        original = data[r["offset"]:end].removesuffix(b"\r")
        assert r["line"] == original
        assert data[:r["offset"]].count(b"\n") + 1 == r["line_no"]
        assert r["shard"] == str(shard) and r["reason"] and r["error"]
    assert {r["reason"] for r in rejects} >= {"invalid_json", "invalid_utf8", "not_object",
                                              "missing:id", "type:score"}


@pytest.mark.parametrize("codec", ["zst", "gz", "bz2", "xz"])
def test_reading_ahead_writes_what_reading_in_turn_does(tmp_path, codec):
    """A shard read ahead of its parsing, in a thread of its own (``etl.shards.read_ahead``),
    gives the same record, rows and rejects (reasons, line numbers, offsets, bytes) as
    read batch after batch in turn; in batches of 16 KiB, so that there are many."""
    from dataclasses import replace

    from etl.config import IngestConfig
    from etl.job import process_shard
    from etl.schema import load_schema
    from etl.shards import find_shards

    shard = write_shard(tmp_path, f"s.{codec}", sample_bytes(4000, seed=3, bad_rate=0.1), codec)
    cfg = IngestConfig(load_schema(COMMENTS), "", "synchronous", batch_bytes=1 << 14,
                       progress=False)
    got = []
    for ahead in (False, True):
        out = tmp_path / f"out-{ahead}"
        rec = process_shard(find_shards([str(shard)])[0],
                            replace(cfg, out=str(out), read_ahead=ahead))
        rows = duckdb.sql(f"select * from read_parquet('{out}/*=*/*.parquet') order by id")
        got.append(({k: v for k, v in rec.items() if k not in ("seconds", "files")},
                    rows.fetchall(), pq.read_table(out / "_rejects").to_pylist()))
    assert got[0] == got[1]
    rec, rows, rejects = got[1]
    assert rec["status"] == "ok" and rec["lines"] == 4000 and len(rows) == rec["rows_written"]
    assert len(rejects) == rec["rows_rejected"] > 100


@pytest.mark.parametrize("scheduler,workers,cores,tasks,wanted", [
    ("processes", None, 2, 1, True),    # one shard that cannot split, two cores
    ("processes", None, 2, 2, False),   # a task for every core
    ("processes", None, 4, 3, True),
    ("processes", 1, 2, 1, False),      # the user asked for one worker
    ("processes", 3, 4, 2, True),
    ("synchronous", None, 2, 5, True),  # tasks run in this process, one after another
    ("synchronous", None, 1, 1, False),
    ("threads", None, 2, 1, False),     # other tasks share the process
    ("tcp://127.0.0.1:8786", None, 2, 1, False),
])
def test_tasks_read_ahead_only_where_a_core_would_wait(monkeypatch, scheduler, workers, cores,
                                                       tasks, wanted):
    from etl import pipeline
    from etl.config import IngestConfig
    from etl.schema import load_schema

    monkeypatch.setattr(pipeline.workers, "usable_cores", lambda: cores)
    cfg = IngestConfig(load_schema(COMMENTS), "out", scheduler, progress=False,
                       workers=workers if scheduler == "processes" else None)
    assert pipeline.reads_ahead(cfg, tasks) is wanted


@pytest.mark.parametrize("codec", ["none", "gz"])
def test_a_line_over_max_line_is_rejected_with_its_head(tmp_path, codec):
    """A line longer than --max-line-mb is a too_long reject that keeps its first 64 KiB
    and says where the whole line is; the lines around it are read as ever. Plain text is
    read into the batches, gzip in pieces. A limit below the batch size plus 4 MiB is
    refused, naming both flags."""
    good = sample_bytes(300, seed=5, bad_rate=0)
    huge = b'[{"id": "' + b"x" * (6 << 20) + b'"}]\r'
    data = good + huge + b"\n" + good
    shard = write_shard(tmp_path, f"s.{codec}", data, codec)
    out = tmp_path / "out"
    proc = run_etl("ingest", shard, "--schema", COMMENTS, "--out", out, "--batch-mb", "1",
                   "--max-line-mb", "5", "--report", tmp_path / "r.json", "--quiet",
                   "--scheduler", "synchronous", check=0)
    report = json.loads((tmp_path / "r.json").read_text())
    (tmp_path / "w").mkdir()
    whole = etl.ingest([write_shard(tmp_path / "w", f"s.{codec}", good + good, codec)],
                       COMMENTS, tmp_path / "w-out", scheduler="synchronous")
    assert report["rejects_by_reason"] == {"too_long": 1}, proc.stderr.decode()
    assert report["lines"] == 601 and report["rows_written"] == whole["rows_written"]
    [reject] = pq.read_table(out / "_rejects").to_pylist()
    assert reject["line_no"] == 301 and reject["offset"] == len(good)
    assert reject["line"] == huge[:64 << 10] and f"{len(huge):,} bytes" in reject["error"]
    assert f"at byte {len(good):,}" in reject["error"]
    refused = run_etl("ingest", shard, "--schema", COMMENTS, "--out", out, "--batch-mb", "8",
                      "--max-line-mb", "10", check=2)
    assert b"--max-line-mb" in refused.stderr and b"--batch-mb" in refused.stderr


def test_rerun_skips_finished_and_redoes_changed_shards(tmp_path):
    a = write_shard(tmp_path, "a.zst", sample_bytes(1500, seed=1), "zst")
    b = write_shard(tmp_path, "b.gz", sample_bytes(1500, seed=2), "gz")
    out = tmp_path / "out"
    first = etl.ingest([tmp_path], COMMENTS, out, scheduler="threads")
    rows = warehouse_rows(out)
    assert rows == first["rows_written"]
    again = etl.ingest([tmp_path], COMMENTS, out, scheduler="threads")
    assert [s["status"] for s in again["shards"]] == ["skipped", "skipped"]
    assert again["lines"] == 0 and warehouse_rows(out) == rows
    write_shard(tmp_path, "b.gz", sample_bytes(500, seed=3), "gz")  # the shard changes
    third = etl.ingest([tmp_path], COMMENTS, out, scheduler="threads")
    assert [s["status"] for s in third["shards"]] == ["skipped", "ok"]
    assert warehouse_rows(out) == first["shards"][0]["rows_written"] + third["rows_written"]
    forced = etl.ingest([a, b], COMMENTS, out, scheduler="synchronous", force=True)
    assert [s["status"] for s in forced["shards"]] == ["ok", "ok"]
    assert warehouse_rows(out) == forced["rows_written"]  # replaced, never duplicated


def test_corrupt_shard_fails_alone_with_exit_3(tmp_path):
    good = write_shard(tmp_path, "good.zst", sample_bytes(1000, seed=4), "zst")
    whole = compress(CODECS["xz"], sample_bytes(20000, seed=5))
    bad = tmp_path / "bad.xz"
    bad.write_bytes(whole[: len(whole) // 2])  # truncated download
    out, report_file = tmp_path / "out", tmp_path / "r.json"
    proc = run_etl("ingest", good, bad, "--schema", COMMENTS, "--out", out,
                   "--report", report_file, "--scheduler", "processes", check=3)
    report = json.loads(report_file.read_text())
    by_path = {Path(s["path"]).name: s for s in report["shards"]}
    assert by_path["good.zst"]["status"] == "ok"
    failed = by_path["bad.xz"]
    assert failed["status"] == "failed" and str(bad) in failed["error"]
    assert "truncated" in failed["error"] and "reading stopped after line" in failed["error"]
    assert "bad.xz" in proc.stderr.decode()
    assert not list(out.glob("*/bad.xz-*.parquet"))  # a failed shard publishes nothing
    assert warehouse_rows(out) == by_path["good.zst"]["rows_written"]


def test_bad_schema_exits_2_naming_file_and_key(tmp_path):
    schema = tmp_path / "bad.toml"
    schema.write_text('[dataset]\nname = "t"\n[fields.id]\ntype = "strin"\n')
    shard = write_shard(tmp_path, "a.ndjson", b'{"id": "x"}\n', "none")
    proc = run_etl("ingest", shard, "--schema", schema, "--out", tmp_path / "o", check=2)
    err = proc.stderr.decode()
    assert str(schema) in err and "fields.id.type" in err and "strin" in err
    proc = run_etl("ingest", tmp_path / "nothing*.zst", "--schema", COMMENTS,
                   "--out", tmp_path / "o", check=2)
    assert "no shards match" in proc.stderr.decode()


def test_stdin_streams_from_a_pipe(tmp_path):
    require_tool("xz")
    data = sample_bytes(5000, seed=9)
    shard = write_shard(tmp_path, "RC.xz", data, "xz")
    xz = subprocess.Popen(["xz", "-dc", str(shard)], stdout=subprocess.PIPE)
    proc = subprocess.run([*ETL, "ingest", "-", "--schema", COMMENTS, "--out", tmp_path / "o",
                           "--stdin-name", "RC_2015-01", "--report", tmp_path / "r.json"],
                          stdin=xz.stdout, capture_output=True, cwd=ROOT, timeout=300)
    xz.wait()
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["lines"] == 5000 and report["shards"][0]["path"] == "-"
    assert list((tmp_path / "o").glob("*/RC_2015-01-*.parquet"))
    assert warehouse_rows(tmp_path / "o") == report["rows_written"]


def test_schedulers_give_identical_output(tmp_path):
    (tmp_path / "in").mkdir()
    for i, codec in enumerate(["zst", "gz", "bz2"]):
        write_shard(tmp_path / "in", f"s{i}.{codec}", sample_bytes(800, seed=20 + i), codec)
    results = {}
    for sched in ["synchronous", "threads", "processes"]:
        out = tmp_path / sched
        report = etl.ingest([tmp_path / "in"], COMMENTS, out, scheduler=sched)
        results[sched] = duckdb.sql(
            f"select * from read_parquet('{out}/*=*/*.parquet', hive_partitioning=true) "
            "order by id").fetchall(), {k: report[k] for k in ("lines", "rows_written")}
    assert results["synchronous"] == results["threads"] == results["processes"]


@pytest.mark.slow
def test_distributed_scheduler_address(tmp_path):
    from distributed import LocalCluster

    folder = tmp_path / "in"
    folder.mkdir()
    for i in range(3):
        write_shard(folder, f"s{i}.zst", sample_bytes(700, seed=30 + i), "zst")
    local = etl.ingest([folder], COMMENTS, tmp_path / "local", scheduler="synchronous")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster:
        proc = run_etl("ingest", folder, "--schema", COMMENTS, "--out", tmp_path / "dist",
                       "--report", tmp_path / "r.json", check=0,
                       env={"ETL_SCHEDULER": cluster.scheduler_address})
        assert f"running on the Dask cluster at {cluster.scheduler_address}" in \
            proc.stderr.decode()
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rows_written"] == local["rows_written"], proc.stderr.decode()
    q = "select * from read_parquet('{}/*=*/*.parquet', hive_partitioning=true) order by id"
    assert duckdb.sql(q.format(tmp_path / "local")).fetchall() == \
        duckdb.sql(q.format(tmp_path / "dist")).fetchall()


def test_open_dataset_and_readers(tmp_path):
    shard = write_shard(tmp_path, "a.zst", sample_bytes(2000, seed=12), "zst")
    report = etl.ingest([shard], COMMENTS, tmp_path / "out", scheduler="synchronous")
    df = etl.open_dataset(tmp_path / "out")
    assert str(df["created_utc"].dtype).startswith("datetime64")
    assert "created_utc_date" in df.columns and "_rejects" not in str(df.columns)
    pdf = df.compute()
    assert len(pdf) == report["rows_written"]
    assert (pdf["created_utc"].dt.strftime("%Y-%m-%d") == pdf["created_utc_date"].astype(str)).all()
    pandas_table = pq.read_table(tmp_path / "out", partitioning="hive").to_pandas()
    assert len(pandas_table) == report["rows_written"]


def test_open_dataset_keeps_nullable_ints_exact(tmp_path):
    # an int field missing from some rows: float64 would round 2**53 + 1 and turn the
    # partition's column into floats under an announced int64
    big = 2 ** 53 + 1
    lines = [{"id": "a", "created_utc": 1420070400, "subreddit": "x", "score": big},
             {"id": "b", "created_utc": 1420070401, "subreddit": "x"},
             {"id": "c", "created_utc": 1420070402, "subreddit": "x", "score": -3,
              "controversiality": 1}]
    shard = tmp_path / "RC_2015-01.ndjson"
    shard.write_bytes(b"".join(orjson.dumps(x) + b"\n" for x in lines))
    report = etl.ingest([shard], COMMENTS, tmp_path / "out", scheduler="synchronous")
    assert report["rows_written"] == 3, report
    df = etl.open_dataset(tmp_path / "out")
    assert str(df["score"].dtype) == "Int64"
    pdf = df.compute().sort_values("id")
    assert str(pdf["score"].dtype) == "Int64"
    assert pdf["score"].tolist()[0] == big and pdf["score"].tolist()[2] == -3
    assert pdf["score"].isna().tolist() == [False, True, False]


def test_fsspec_memory_urls(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    data = sample_bytes(1000, seed=13)
    with fs.open("/etl-test/in/RC_2015-01.zst", "wb") as fh:
        fh.write(compress(CODECS["zst"], data))
    with fs.open("/etl-test/in/RC_2015-02.ndjson", "wb") as fh:
        fh.write(data)
    report = etl.ingest(["memory://etl-test/in/*"], COMMENTS, tmp_path / "out",
                        scheduler="threads")
    assert [s["status"] for s in report["shards"]] == ["ok", "ok"]
    assert report["lines"] == 2000 and warehouse_rows(tmp_path / "out") == report["rows_written"]


@pytest.mark.parametrize("kind", ["comments", "submissions"])
def test_real_reddit_samples(tmp_path, kind):
    src = DATA / "reddit" / f"test_{kind}.json"
    report = etl.ingest([src], SCHEMAS / f"reddit_{kind}.toml", tmp_path / "out",
                        scheduler="synchronous")
    raw = [orjson.loads(x) for x in src.read_bytes().splitlines() if x.strip()]
    assert report["rows_written"] == len(raw) and report["rows_rejected"] == 0
    query = (f"select id, epoch(created_utc) as epoch, author "
             f"from read_parquet('{tmp_path}/out/*=*/*.parquet')")
    rows = {r[0]: {"epoch": r[1], "author": r[2]} for r in duckdb.sql(query).fetchall()}
    for r in raw:
        assert rows[r["id"]]["epoch"] == pytest.approx(float(r["created_utc"]))
        if r["author"] == "[deleted]":
            assert rows[r["id"]]["author"] is None


def test_bundled_sample_data(tmp_path):
    shards = sorted((ROOT / "data" / "sample").iterdir())
    assert {p.suffix for p in shards} >= {".zst", ".xz", ".gz", ".bz2", ".ndjson"}
    report = etl.ingest([str(p) for p in shards], COMMENTS, tmp_path / "out",
                        scheduler="processes")
    assert_accounting(report)
    assert all(s["status"] == "ok" for s in report["shards"])
    assert 0 < report["rows_rejected"] < report["lines"] * 0.05


@pytest.mark.slow
def test_stdin_memory_is_bounded(tmp_path):
    """A 150 MB stream through stdin must not grow the process with its size."""
    gen = [sys.executable, "-c",
           "import sys; from etl.sample import iter_lines\n"
           "for l in iter_lines(270000, seed=1): sys.stdout.buffer.write(l + b'\\n')"]
    cmd = [*ETL, "ingest", "-", "--schema", COMMENTS, "--out", str(tmp_path / "o"),
           "--batch-mb", "4", "-q"]
    script = ("import resource, subprocess, sys\n"
              f"g = subprocess.Popen({gen!r}, stdout=subprocess.PIPE)\n"
              f"e = subprocess.run({cmd!r}, stdin=g.stdout)\n"
              "g.wait()\n"
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
              "sys.exit(e.returncode)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, cwd=ROOT,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    peak_mb = int(proc.stdout.split()[-1]) / 1024
    assert peak_mb < 600, f"peak RSS {peak_mb:.0f} MB for a 150 MB stream"
    shutil.rmtree(tmp_path / "o")


def test_empty_file_fails_alone(tmp_path):
    good = write_shard(tmp_path, "good.zst", sample_bytes(200, seed=1), "zst")
    empty = tmp_path / "empty.zst"
    empty.write_bytes(b"")
    report = etl.ingest([good, empty], COMMENTS, tmp_path / "out", scheduler="synchronous")
    by_name = {Path(s["path"]).name: s for s in report["shards"]}
    assert by_name["good.zst"]["status"] == "ok"
    assert by_name["empty.zst"]["status"] == "failed"
    assert "empty file (0 bytes)" in by_name["empty.zst"]["error"]


def test_shard_changing_while_read_fails(tmp_path):
    from etl.config import IngestConfig
    from etl.job import process_shard
    from etl.schema import load_schema
    from etl.shards import find_shards

    path = write_shard(tmp_path, "growing.ndjson", sample_bytes(300, seed=2), "none")
    shard = find_shards([str(path)])[0]   # seen at this size...
    with open(path, "ab") as fh:          # ...then a writer appends before it is read
        fh.write(sample_bytes(10, seed=3))
    cfg = IngestConfig(load_schema(COMMENTS), str(tmp_path / "out"), "synchronous")
    rec = process_shard(shard, cfg)
    assert rec["status"] == "failed" and "changed while being read" in rec["error"]
    assert not list((tmp_path / "out").glob("*=*/*.parquet"))


def test_fsspec_output_url_and_load(tmp_path):
    """--out may be an fsspec URL: Parquet, rejects and manifest go there; load reads it."""
    import fsspec

    from etl.load import run_load
    from etl.schema import load_schema

    fs = fsspec.filesystem("memory")
    with fs.open("/etl-out-test/in/a.zst", "wb") as fh:
        fh.write(compress(CODECS["zst"], sample_bytes(800, seed=14)))
    out = "memory://etl-out-test/processed"
    first = etl.ingest(["memory://etl-out-test/in/a.zst"], COMMENTS, out, scheduler="threads")
    assert first["status"]["ok"] == 1 and first["rows_rejected"] > 0
    assert fs.glob("/etl-out-test/processed/_rejects/*.parquet")
    assert not fs.glob("/etl-out-test/processed/**/.*.tmp")
    assert len(etl.open_dataset(out).compute()) == first["rows_written"]
    again = etl.ingest(["memory://etl-out-test/in/a.zst"], COMMENTS, out, scheduler="threads")
    assert again["status"]["skipped"] == 1
    db = f"duckdb:///{tmp_path / 'w.duckdb'}"
    loaded = run_load(out, load_schema(COMMENTS), db)
    assert loaded["table_rows"] == first["rows_written"]
    assert run_load(out, load_schema(COMMENTS), db)["files_loaded"] == 0


def test_writer_rolls_files_and_keeps_no_batch_alive(tmp_path, monkeypatch):
    """A date's file closes after MAX_ROW_GROUPS row groups (an open writer holds every row
    group's metadata), and a flush writes every buffered row out: nothing stays behind."""
    from collections import Counter

    import pyarrow as pa

    from etl import parquet
    from etl.schema import load_schema

    monkeypatch.setattr(parquet, "MAX_ROW_GROUPS", 2)
    monkeypatch.setattr(parquet, "BUFFER_BYTES", 1)  # flush at every write
    schema = load_schema(COMMENTS)
    arrow = schema.arrow_schema()
    w = parquet.ShardWriter(str(tmp_path), "s", arrow, schema.partition_by,
                            schema.partition_column)
    day, n = 86_400 * 1_000_000, 2000
    for i in range(5):  # two dates per table, interleaved
        cols = {f.name: pa.nulls(n, f.arrow_type) for f in schema.fields}
        cols["id"] = pa.array([f"{i}-{j:08d}" for j in range(n)])
        cols["subreddit"] = pa.array(["x"] * n)
        cols["created_utc"] = pa.array([(j % 2) * day for j in range(n)],
                                       arrow.field("created_utc").type)
        table = pa.table(cols, schema=arrow)
        parts = list(w._split(table))
        assert [d for d, _ in parts] == ["1970-01-01", "1970-01-02"]
        for k, (_, part) in enumerate(parts):  # each date's rows, in their order
            assert part.column("id").to_pylist() == [f"{i}-{j:08d}" for j in range(k, n, 2)]
        w.write(table)
        assert w._pending == [] and w._buffered == 0
    files = w.commit()
    assert sum(f["rows"] for f in files) == 5 * n
    per_date = Counter(f["path"].split("/")[0] for f in files)
    assert per_date == {"created_utc_date=1970-01-01": 3, "created_utc_date=1970-01-02": 3}
    assert all(pq.ParquetFile(tmp_path / f["path"]).num_row_groups <= 2 for f in files)


def test_temporary_files_a_killed_run_left_are_removed_when_the_shard_is_redone(tmp_path):
    from etl.shards import find_shards

    src = write_shard(tmp_path, "a.ndjson", sample_bytes(300, seed=31), "none")
    sid = find_shards([str(src)])[0].id
    out = tmp_path / "out"
    left = [out / "created_utc_date=2015-01-02" / f".{sid}-000007.parquet.tmp",
            out / "created_utc_date=2015-01-02" / f".{sid}-p0001-000003.parquet.tmp",
            out / "_rejects" / f".{sid}.parquet.tmp",
            out / "_rejects" / f".{sid}.p0002.parquet.tmp"]
    other = out / "created_utc_date=2015-01-02" / ".other.zst-12345678-000000.parquet.tmp"
    for p in left + [other]:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"half a file")
    report = etl.ingest([str(src)], COMMENTS, str(out), scheduler="synchronous")
    assert report["status"]["ok"] == 1
    assert not any(p.exists() for p in left)
    assert other.exists()  # another shard's: not this shard's to remove


def test_worker_start_spares_the_pandas_import_and_breaks_nothing():
    code = ("import sys; from etl.workers import worker_start; worker_start(); "
            "import pyarrow as pa, pyarrow.compute as pc; "
            "assert 'pandas' not in sys.modules; "
            "assert pc.is_in(pa.array(['a', 'b']), value_set=pa.array(['a'])).to_pylist() "
            "== [True, False]; "
            "import pandas; assert pandas.DataFrame({'a': [1]}).shape == (1, 1); print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == b"ok", proc.stderr.decode()


WORKER_STATE = """
import sys
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from multiprocessing import forkserver
from etl import workers

def state():
    import os
    import pyarrow as pa
    try:
        import numpy  # noqa: F401
        numpy_refused = False
    except ImportError as exc:
        numpy_refused = "not loaded in etl's ingest workers" in str(exc)
    return ("etl.pipeline" in sys.modules, "pandas" in sys.modules,
            os.environ.get("OPENBLAS_NUM_THREADS"), "dask" in sys.modules,
            pa.default_memory_pool().backend_name, numpy_refused)

if __name__ == "__main__":
    import os
    os.environ.pop("OPENBLAS_NUM_THREADS", None)
    assert workers.context() == "forkserver"
    workers.start_early()
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # the server's alone
    pid = forkserver._forkserver._forkserver_pid
    ctx = multiprocessing.get_context(workers.context())
    with ProcessPoolExecutor(2, mp_context=ctx, initializer=workers.worker_start) as pool:
        print(pool.submit(state).result())
    workers.stop()
    import os
    print(os.path.exists(f"/proc/{pid}"))
"""


def test_workers_fork_from_a_preloaded_server_that_stops_with_the_run(tmp_path):
    """Workers start with etl imported and pandas, dask and numpy not (numpy refused), with
    one BLAS thread and Arrow on jemalloc; the server is reaped at the end."""
    script = tmp_path / "state.py"
    script.write_text(WORKER_STATE)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split("\n")[:2] == [
        "(True, False, '1', False, 'jemalloc', True)", "False"]


FORKED_HERE = """
import os, sys, threading
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from multiprocessing import forkserver
from etl import workers
from etl.workers import run_local

def state(_item, _arg):
    import pyarrow as pa
    return ("etl.pipeline" in sys.modules, "pandas" in sys.modules, "numpy" in sys.modules,
            os.environ.get("OPENBLAS_NUM_THREADS"), "dask" in sys.modules,
            pa.default_memory_pool().backend_name, os.getppid())

if __name__ == "__main__":
    os.environ.pop("OPENBLAS_NUM_THREADS", None)
    if sys.argv[1] == "thread":  # a thread of ours already runs: never fork then
        stop = threading.Event()
        threading.Thread(target=stop.wait, daemon=True).start()
    workers.start_early(here=True)
    seen = []
    got = run_local(state, [1, 2], None,
                    started=lambda: seen.append(len(multiprocessing.active_children())))
    print(got[0][:-1], got[0][-1] == os.getpid(), seen,
          forkserver._forkserver._forkserver_pid is not None,
          "numpy" in sys.modules)
    workers.stop()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork from the CLI: Linux")
def test_the_console_script_forks_its_workers_ready_from_its_own_process(tmp_path):
    """``start_early(here=True)`` (the ``etl`` script): the process imports what workers
    need (numpy refused, so never loaded) and forks them itself when the pool starts; a
    thread running by then would make fork unsafe: the fork server instead. ``started``
    comes once the workers run (a progress bar's thread must wait for it)."""
    script = tmp_path / "here.py"
    script.write_text(FORKED_HERE)
    for mode, want in (("alone", "(True, False, False, '1', False, 'jemalloc') True [2] "
                                 "False False"),
                       ("thread", "(True, False, False, '1', False, 'jemalloc') False [2] "
                                  "True False")):
        proc = subprocess.run([sys.executable, str(script), mode], capture_output=True,
                              cwd=ROOT, timeout=120)
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout.decode().strip() == want, (mode, proc.stderr.decode())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork from the CLI: Linux")
def test_a_terminal_run_draws_its_progress_bar_after_forking_its_workers(tmp_path):
    """On a terminal, ``etl ingest`` draws a progress bar from a thread of its own; that
    thread starts once the workers are forked, so they are still the command's own forks
    (no fork server among its children), and the run is as on a pipe."""
    import fcntl
    import pty
    import struct
    import termios

    import psutil

    for seed in (41, 42, 43, 44):
        write_shard(tmp_path, f"RC_{seed}.zst", sample_bytes(40_000, seed=seed), "zst")
    out, report = tmp_path / "out", tmp_path / "r.json"
    main_side, term = pty.openpty()
    fcntl.ioctl(term, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a width to draw in
    drawn, children = b"", []
    try:
        proc = subprocess.Popen(
            [*ETL, "ingest", *sorted(map(str, tmp_path.glob("*.zst"))), "--schema", COMMENTS,
             "--out", out, "--report", report, "--scheduler", "processes"],
            stderr=term, stdout=subprocess.DEVNULL, cwd=ROOT)
        os.close(term)
        term = None
        os.set_blocking(main_side, False)
        while proc.poll() is None:
            try:
                children.append([" ".join(c.cmdline()) for c in
                                 psutil.Process(proc.pid).children()])
            except psutil.Error:  # a child gone meanwhile
                pass
            try:
                drawn += os.read(main_side, 1 << 16)
            except (BlockingIOError, OSError):
                pass
        os.set_blocking(main_side, True)
        while True:
            try:
                got = os.read(main_side, 1 << 16)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not got:
                break
            drawn += got
    finally:
        if term is not None:
            os.close(term)
        os.close(main_side)
    assert proc.returncode == 0, drawn.decode(errors="replace")
    assert json.loads(report.read_text())["status"]["ok"] == 4
    assert b"ingest:" in drawn, drawn.decode(errors="replace")
    assert max(map(len, children)) == 2  # the two workers, and nothing else
    assert not any("forkserver" in c for seen in children for c in seen), children


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG: Linux")
@pytest.mark.parametrize("how", ["etl command", "main()"])
def test_a_killed_run_leaves_no_worker_behind_and_the_next_run_goes_on(tmp_path, how):
    """``kill -9`` of a run on local workers, forked by the ``etl`` command itself or by
    the fork server (``main()``, as the Python API runs them): its workers and the server
    end with it (they used to wait for tasks forever, and the command's own forks kept
    the output folder's lock: every later run found the folder busy), and the next run
    ingests every shard."""
    import time

    import psutil

    require_tool("xz")
    raw = compress(["xz", "-0", "-T2", "-c"], sample_bytes(100_000, seed=51, bad_rate=0))
    src = tmp_path / "in"
    src.mkdir()
    for i in range(6):  # about 0.3 GB to decompress: the run outlives the kill
        (src / f"RC_{i}.xz").write_bytes(raw)
    out = tmp_path / "out"
    args = ["ingest", str(src), "--schema", COMMENTS, "--out", str(out),
            "--scheduler", "processes", "--quiet"]
    argv = [*ETL, *args] if how == "etl command" else [
        sys.executable, "-c", "import sys; from etl.cli import main; sys.exit(main(sys.argv[1:]))",
        *args]
    proc = subprocess.Popen(argv, cwd=ROOT)
    run = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        family = run.children(recursive=True)
        if sum(c.name().startswith("python") for c in family) >= 2 and (out / "_lock").exists():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    time.sleep(0.3)  # the workers are on their first shards
    family = run.children(recursive=True)
    proc.kill()
    proc.wait()
    _, alive = psutil.wait_procs(family, timeout=15)
    assert not alive, [(p.pid, p.cmdline()) for p in alive]
    report = tmp_path / "r.json"
    run_etl(*args[:-1], "--report", report, check=0)
    assert json.loads(report.read_text())["status"]["ok"] == 6


SERVER_FROM_A_THREAD = """
import os, sys, threading, time
from multiprocessing import forkserver
from etl import workers

def task(item, _arg):
    return item * 2

def start():
    workers.start_early()
    time.sleep(1.5)  # the server is up and settled before this thread ends

if __name__ == "__main__":
    starter = threading.Thread(target=start)
    starter.start()
    starter.join()  # the thread that started the server has ended
    pid = forkserver._forkserver._forkserver_pid
    print(workers.run_local(task, [1, 2, 3], None),
          forkserver._forkserver._forkserver_pid == pid, os.path.exists(f"/proc/{pid}"))
    workers.stop()
"""


def test_a_fork_server_started_from_a_thread_outlives_it(tmp_path):
    """Linux ends a process whose parent dies with the *thread* that started it: a server
    started from another thread (a web app's, a thread pool's) must not die with that
    thread, only one started from the main thread ties itself to its process."""
    script = tmp_path / "thread.py"
    script.write_text(SERVER_FROM_A_THREAD)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, cwd=ROOT,
                          timeout=120)
    assert proc.stdout.decode().split("\n")[0] == "[2, 4, 6] True True", proc.stderr.decode()


def test_preload_module_keeps_other_processes_exit_codes():
    """etl._preload cuts the fork server's teardown short; imported elsewhere, it must not."""
    proc = subprocess.run([sys.executable, "-c", "import sys, etl._preload; sys.exit(3)"],
                          capture_output=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 3, proc.stderr.decode()


def test_workers_are_spawned_where_the_fork_server_cannot_start(monkeypatch, tmp_path):
    """No Unix sockets, say: the run goes on with spawned workers, same result."""
    from multiprocessing import forkserver

    from etl import workers

    def refuse():
        raise OSError("no AF_UNIX here")

    monkeypatch.setattr(forkserver, "ensure_running", refuse)
    monkeypatch.setattr(workers, "_server_failed", False)
    src = tmp_path / "s.ndjson"
    src.write_bytes(b"\n".join(iter_lines(300, seed=31)))
    report = etl.ingest([str(src)], COMMENTS, str(tmp_path / "out"), scheduler="processes")
    assert workers.context() == "spawn"
    assert report["status"]["ok"] == 1 and report["rows_written"] > 0


MAIN_IMPORTS = """
import sys
from etl.cli import main
code = main(sys.argv[1:])
print(code, sorted({m.split('.')[0] for m in sys.modules}
                   & {'dask', 'distributed', 'pandas', 'pyarrow', 'numpy'}))
"""


def test_a_run_on_local_processes_imports_no_dask_in_the_main_process(tmp_path):
    """Local workers take the shards from a plain process pool: the main process never
    imports dask (0.2 s before the first task, measured) nor pyarrow and numpy (the workers'
    fork server has them), and the rows are all there."""
    src = tmp_path / "in"
    src.mkdir()
    for i, codec in enumerate(("zst", "gz", "none")):
        write_shard(src, f"s{i}.ndjson", sample_bytes(400, seed=40 + i), codec)
    report = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-c", MAIN_IMPORTS, "ingest", str(src), "--schema",
                           COMMENTS, "--out", str(tmp_path / "out"), "--scheduler",
                           "processes", "--report", str(report), "--quiet"],
                          capture_output=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split() == ["0", "[]"]
    rec = json.loads(report.read_text())
    assert_accounting(rec)
    assert rec["status"]["ok"] == 3 and warehouse_rows(tmp_path / "out") == rec["rows_written"]


@pytest.mark.parametrize("scheduler", ["synchronous", "threads"])
def test_the_cli_reading_shards_itself_starts_as_a_worker(tmp_path, scheduler):
    """With the synchronous or threads scheduler the CLI's own process reads the shards:
    it starts as a worker does, so pyarrow's first pa.array does not import pandas."""
    src = tmp_path / "s.ndjson"
    src.write_bytes(sample_bytes(300, seed=44))
    report = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, "-c", MAIN_IMPORTS, "ingest", str(src), "--schema",
                           COMMENTS, "--out", str(tmp_path / "out"), "--scheduler", scheduler,
                           "--report", str(report), "--quiet"],
                          capture_output=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()
    code, imported = proc.stdout.decode().split(" ", 1)
    assert code == "0" and "pandas" not in imported  # dask and pyarrow it uses
    rec = json.loads(report.read_text())
    assert_accounting(rec)
    assert rec["rows_written"] > 0 and warehouse_rows(tmp_path / "out") == rec["rows_written"]


@pytest.mark.parametrize("argv,cores,wanted", [
    (["ingest", "in/"], 2, True),
    (["run", "in/", "--scheduler", "processes"], 4, True),
    (["ingest", "in/", "--scheduler=processes"], 2, True),
    (["ingest", "in/"], 1, False),
    (["ingest", "in/", "--scheduler", "threads"], 2, False),
    (["ingest", "in/", "--scheduler=synchronous"], 2, False),
    (["ingest", "in/", "--scheduler", "tcp://host:8786"], 2, False),
    (["ingest", "--help"], 2, False),
    (["load", "--from", "out/"], 2, False),
    ([], 2, False),
    (["ingest", "in/", "--workers", "1"], 2, False),
    (["ingest", "in/", "--workers=2"], 1, True),
    (["run", "in/", "--workers", "3", "--scheduler", "threads"], 1, False),
])
def test_the_console_script_guesses_when_to_start_the_workers_early(monkeypatch, argv, cores,
                                                                     wanted):
    from etl import cli, workers

    monkeypatch.delenv("ETL_SCHEDULER", raising=False)
    monkeypatch.delenv("ETL_WORKERS", raising=False)
    monkeypatch.setattr(workers, "usable_cores", lambda: cores)
    assert cli._asks_for_local_workers(argv) is wanted


EARLY_STOP = """
import os, sys
from multiprocessing import forkserver
from etl.cli import run
sys.argv = ['etl', 'ingest', 'in/', '--no-such-option']
try:
    run()
except SystemExit as exc:
    pid = forkserver._forkserver._forkserver_pid
    print(exc.code, pid is None or not os.path.exists(f'/proc/{pid}'))
"""


def test_a_fork_server_started_on_a_wrong_guess_is_stopped():
    """The guess starts the server; argparse then refuses the command: nothing is left."""
    proc = subprocess.run([sys.executable, "-c", EARLY_STOP], capture_output=True, cwd=ROOT,
                          timeout=120)
    assert proc.stdout.decode().split() == ["2", "True"], proc.stderr.decode()


QUICK_EXIT = """
import atexit, sys, threading, time
from etl.cli import run
atexit.register(lambda: print('exit handlers ran', flush=True))
if sys.argv[1] == 'thread':  # a thread still running: the usual exit, which waits for it
    threading.Thread(target=lambda: (time.sleep(0.5), print('thread done', flush=True))).start()
sys.argv = ['etl', *sys.argv[2:]]
print('summary follows', end=' ')  # buffered: the quick exit must flush it
run()
"""


@pytest.mark.parametrize("mode", ["alone", "thread"])
def test_the_console_script_exits_quickly_keeping_code_output_and_exit_handlers(tmp_path, mode):
    bad = tmp_path / "bad.ndjson.gz"
    bad.write_bytes(compress(CODECS["gz"], sample_bytes(200, seed=5))[:-20])  # truncated
    proc = subprocess.run([sys.executable, "-c", QUICK_EXIT, mode, "ingest", str(bad),
                           "--schema", COMMENTS, "--out", str(tmp_path / "out")],
                          capture_output=True, cwd=ROOT, timeout=300)
    out = proc.stdout.decode()
    assert proc.returncode == 3, proc.stderr.decode()  # a failed shard
    assert out.startswith("summary follows") and "exit handlers ran" in out
    assert ("thread done" in out) == (mode == "thread")
    assert "FAILED" in proc.stderr.decode() and "truncated" in proc.stderr.decode()


def test_workers_tune_malloc_where_glibc_allows():
    code = ("import platform; from etl import workers; "
            "print(workers.tune_malloc() == (platform.libc_ver()[0] == 'glibc'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, cwd=ROOT, timeout=60)
    assert proc.stdout.strip() == b"True", proc.stderr.decode()


REUSE = """
import resource, sys
from etl import workers
if sys.argv[1] == "tuned":
    assert workers.tune_malloc()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
window = bytearray(256 << 20)  # filled: every page touched, as a zstd window is
del window
before = faults()
window = bytearray(256 << 20)
print(faults() - before)
"""


@pytest.mark.skipif(__import__("platform").libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_tuned_malloc_reuses_a_big_freed_buffer_without_faulting_it_again():
    """A long-window zstd shard's window (as big as the shard) is reused by the worker's
    next shard: no fresh pages for the kernel to fault in and zero (64k faults for 256 MiB
    untuned)."""
    def faults(mode):
        proc = subprocess.run([sys.executable, "-c", REUSE, mode], capture_output=True,
                              cwd=ROOT, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()
        return int(proc.stdout)

    assert faults("plain") > 30_000  # glibc maps it afresh: one fault per page (or so)
    assert faults("tuned") < 1_000


def test_dictionaries_go_to_repetitive_columns_lists_included(tmp_path):
    import pyarrow as pa

    from etl import parquet

    n = 1000
    table = pa.table({"id": [f"{i:06d}" for i in range(n)], "sub": ["a", "b"] * (n // 2),
                      "tags": [["x", "y"]] * n, "uniq": [[f"{i}"] for i in range(n)],
                      "n": list(range(n)), "flag": [True] * n})
    assert parquet.dictionary_columns(table) == ["sub", "tags.list.element", "flag"]
    path = tmp_path / "t.parquet"
    writer = parquet._new_writer(parquet.Folder(str(tmp_path)), str(path), table.schema,
                                 use_dictionary=parquet.dictionary_columns(table))
    writer.write_table(table)
    writer.close()
    meta = pq.ParquetFile(path).metadata.row_group(0)
    encoded = {meta.column(i).path_in_schema: "RLE_DICTIONARY" in meta.column(i).encodings
               for i in range(meta.num_columns)}
    assert encoded == {"id": False, "sub": True, "tags.list.element": True,
                       "uniq.list.element": False, "n": False,
                       "flag": False}  # Parquet has no dictionary for booleans
    assert pq.read_table(path).equals(table)


def _core_waits(item, _arg):
    """Task 0: whether a core waited when it started, and once tasks 1 and 2 (0.3 s
    each, on the other worker) are done. The others: whether one waited at once."""
    import time

    from etl.workers import a_core_waits

    if item > 0:
        time.sleep(0.3 if item < 3 else 0)
        return a_core_waits()
    first, deadline = a_core_waits(), time.monotonic() + 60
    while not a_core_waits() and time.monotonic() < deadline:
        time.sleep(0.01)
    return first, a_core_waits()


def test_a_worker_learns_when_its_run_leaves_a_core_with_nothing_to_do():
    """``a_core_waits``: in a pool worker, true once fewer tasks are left unfinished
    than workers (then a task reads ahead: ``etl.job._batches``); never elsewhere."""
    from etl import workers

    assert workers.a_core_waits() is False  # not a pool worker
    assert workers.run_local(_core_waits, [0, 1, 2], None, workers=2) == [(False, True),
                                                                        False, False]
    assert workers.run_local(_core_waits, [3], None, workers=1) == [False]
    assert workers.run_local(_core_waits, [3], None, workers=2) == [False]  # one worker


def _die_on_two(item, arg):
    if item == 2:
        os.kill(os.getpid(), 9)  # as the kernel's OOM killer would
    return item * arg


def test_a_dead_worker_fails_its_shards_cleanly_and_the_rerun_finishes(tmp_path):
    from etl import workers

    # the pool: tasks not finished when a worker dies get lost(); the others their result
    got = workers.run_local(_die_on_two, [0, 1, 2], 10, lost=lambda item, why: ("lost", why))
    assert got[2][0] == "lost" and "worker process died" in got[2][1]
    assert all(g == i * 10 or g[0] == "lost" for i, g in enumerate(got))
    with pytest.raises(Exception, match="terminated abruptly"):
        workers.run_local(_die_on_two, [2], 1)

    # a whole shard lost: failed, its temporary files gone, recorded; a rerun does it
    from etl.config import IngestConfig
    from etl.job import lost_record
    from etl.shards import find_shards

    src = write_shard(tmp_path, "a.ndjson", sample_bytes(300, seed=3), "none")
    out = tmp_path / "out"
    shard = find_shards([str(src)])[0]
    tmp = out / "created_utc_date=2015-01-01" / f".{shard.id}-000000.parquet.tmp"
    tmp.parent.mkdir(parents=True)
    tmp.write_bytes(b"half")
    cfg = IngestConfig(schema=etl.load_schema(COMMENTS), out=str(out), scheduler="processes")
    rec = lost_record(shard, cfg, "a worker process died")
    assert rec["status"] == "failed" and "rerun to go on" in rec["error"] and not tmp.exists()
    status = json.loads(run_etl("status", "--out", out, "--json", check=0).stdout)
    assert status["shards_failed"] == [str(src)]
    report = etl.ingest([str(src)], COMMENTS, str(out), scheduler="processes")
    assert report["status"]["ok"] == 1 and report["rows_written"] > 0


ALLOCATOR = """
import sys
from etl.cli import main
main(sys.argv[1:])
import pyarrow as pa
print(pa.default_memory_pool().backend_name)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="jemalloc: Linux wheels")
def test_the_cli_runs_arrow_on_jemalloc_unless_the_environment_chose(tmp_path):
    src = write_shard(tmp_path, "a.ndjson", sample_bytes(50, seed=2), "none")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    for chosen, want in ((None, "jemalloc"), ("system", "system")):
        if chosen:
            env["ARROW_DEFAULT_MEMORY_POOL"] = chosen
        proc = subprocess.run([sys.executable, "-c", ALLOCATOR, "ingest", str(src), "--schema",
                               COMMENTS, "--out", str(tmp_path / f"out-{want}"), "--scheduler",
                               "synchronous", "--quiet"],
                              capture_output=True, cwd=ROOT, env=env, timeout=120)
        assert proc.stdout.decode().split() == [want], proc.stderr.decode()
