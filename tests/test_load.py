"""Loading into real warehouses: `etl load`, `etl run`, `etl status` on DuckDB and PostgreSQL.

Every backend-dependent test runs on a DuckDB file and on a throwaway PostgreSQL
cluster started by ``tests.pg`` (marked slow; under CI=true a cluster that cannot
start fails the test, elsewhere it skips).
"""

from __future__ import annotations

import itertools
import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import orjson
import pytest
import sqlalchemy as sa

import etl
from etl.cli import main as etl_main
from etl.errors import LoadError, TransientLoadError
from etl.load import base
from etl.load.base import run_load, with_retries
from etl.manifest import read_all_manifests
from etl.sample import generate
from etl.schema import load_schema, schema_from_dict
from tests.conftest import ROOT
from tests.pg import free_port, pg_server, pg_url  # noqa: F401  (PostgreSQL fixtures)
from tests.test_pipeline import COMMENTS, ETL, run_etl, sample_bytes, write_shard

BACKENDS = ["duckdb", pytest.param("postgres", marks=pytest.mark.slow)]
T0 = 1420070400  # 2015-01-01T00:00:00Z
DAY = 86_400
COLUMN_TYPES = {  # information_schema.columns.data_type per backend, lower-cased
    "duckdb": {"id": "varchar", "created_utc": "timestamp with time zone", "score": "bigint",
               "controversiality": "integer", "stickied": "boolean",
               "retrieved_on": "timestamp with time zone"},
    "postgres": {"id": "text", "created_utc": "timestamp with time zone", "score": "bigint",
                 "controversiality": "integer", "stickied": "boolean",
                 "retrieved_on": "timestamp with time zone"},
}


# ---------------------------------------------------------------- fixtures and helpers

@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def new_db(request, backend, tmp_path):
    """A factory of fresh, empty warehouse URLs on the test's backend."""
    if backend == "postgres":
        return request.getfixturevalue("pg_server").new_database
    names = itertools.count(1)
    return lambda: f"duckdb:///{tmp_path}/w{next(names)}.duckdb"


@pytest.fixture
def db_url(new_db) -> str:
    return new_db()


def sql(url: str, statement: str, **params) -> list[tuple]:
    """Run one statement in its own transaction and connection; return its rows."""
    engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return [tuple(r) for r in result] if result.returns_rows else []
    finally:
        engine.dispose()


def table(url: str, name: str = "comments") -> list[tuple]:
    return sql(url, f"SELECT * FROM {name} ORDER BY id")


def loads(url: str) -> list[tuple]:
    return sql(url, "SELECT file, token FROM _etl_loads ORDER BY file, token")


def manifest_files(out: Path) -> set[str]:
    return {f["path"] for r in read_all_manifests(str(out)) if r["status"] == "ok"
            for f in r["files"]}


def parquet_ids(out: Path) -> int:
    return duckdb.sql(f"SELECT count(DISTINCT id) FROM read_parquet('{out}/*=*/*.parquet')"
                      ).fetchall()[0][0]


def comment(id: str, score, retrieved, day: int = 0, body: str = "text", **extra) -> dict:
    return {"id": id, "created_utc": T0 + day * DAY + 3600, "subreddit": "test", "body": body,
            "score": score, "retrieved_on": None if retrieved is None else T0 + retrieved,
            **extra}


def ndjson(folder: Path, name: str, records: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def small_schema(folder: Path, name: str = "s.toml", *, version: bool = True,
                 extra: str = "") -> Path:
    """A small comments schema; ``extra`` appends field tables (schema evolution)."""
    path = folder / name
    path.write_text(
        '[dataset]\nname = "comments"\nkey = "id"\npartition_by = "created_utc"\n'
        + ('version = "retrieved_on"\n' if version else "")
        + '[fields.id]\ntype = "string"\nrequired = true\n'
        + '[fields.created_utc]\ntype = "timestamp"\nrequired = true\n'
        + '[fields.subreddit]\ntype = "string"\n[fields.body]\ntype = "string"\n'
        + '[fields.score]\ntype = "int64"\n[fields.retrieved_on]\ntype = "timestamp"\n' + extra)
    return path


def ingest_and_load(shards, schema: Path, out: Path, url: str, **kw) -> dict:
    etl.ingest([str(s) for s in shards], schema, out, scheduler="synchronous", **kw)
    return run_load(str(out), load_schema(schema), url)


def scores(url: str) -> dict[str, int]:
    return dict(sql(url, "SELECT id, score FROM comments"))


# ---------------------------------------------------------------- load, types, idempotence

def test_cli_load_creates_typed_keyed_table_and_rerun_loads_nothing(backend, db_url, tmp_path):
    (tmp_path / "in").mkdir()
    for seed in (1, 2):
        write_shard(tmp_path / "in", f"RC_{seed}.zst", sample_bytes(1200, seed=seed), "zst")
    out = tmp_path / "out"
    etl.ingest([tmp_path / "in"], COMMENTS, out, scheduler="synchronous")
    files = manifest_files(out)
    proc = run_etl("load", "--from", out, "--schema", COMMENTS, "--db", db_url,
                   "--report", tmp_path / "r1.json", check=0)
    assert "loaded" in proc.stderr.decode()
    first = json.loads((tmp_path / "r1.json").read_text())
    assert first["files_loaded"] == len(files) and first["files_already_loaded"] == 0
    assert first["shards_loaded"] == 2 and first["table"] == "comments"
    assert first["table_rows"] == parquet_ids(out) > 2000

    types = dict(sql(db_url, "SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'comments'"))
    assert {k: v.lower() for k, v in types.items() if k in COLUMN_TYPES[backend]} \
        == COLUMN_TYPES[backend]
    assert "created_utc_date" not in types  # the partition folder is not a column
    pk = sql(db_url, "SELECT kcu.column_name FROM information_schema.table_constraints tc "
                     "JOIN information_schema.key_column_usage kcu "
                     "ON tc.constraint_name = kcu.constraint_name "
                     "AND tc.table_name = kcu.table_name "
                     "WHERE tc.table_name = 'comments' AND tc.constraint_type = 'PRIMARY KEY'")
    assert pk == [("id",)]
    assert sql(db_url, "SELECT count(*), count(DISTINCT id) FROM comments") == \
        [(first["table_rows"], first["table_rows"])]
    before = table(db_url)

    run_etl("load", "--from", out, "--schema", COMMENTS, "--db", db_url,
            "--report", tmp_path / "r2.json", check=0)
    again = json.loads((tmp_path / "r2.json").read_text())
    assert again["files_loaded"] == again["shards_loaded"] == again["rows_merged"] == 0
    assert again["files_already_loaded"] == len(files)
    assert table(db_url) == before
    recorded = loads(db_url)
    assert len(recorded) == len(set(recorded)) == len(files)
    assert {f for f, _ in recorded} == files


# ---------------------------------------------------------------- upsert semantics

TRICKY = 'say "hi", back\\slash, comma; new\nline\ttab, café 🎉, \\N'
SHARD_A = [comment("k0", 10, 100), comment("k1", 11, 300), comment("k2", 12, None),
           comment("k3", 13, 200), comment("k5", 15, 100, body=""),
           comment("d1", 5, 5), comment("d1", 9, 9, body=TRICKY), comment("d1", 7, 7)]
SHARD_B = [comment("k0", 20, 200), comment("k1", 21, 100), comment("k2", 22, 50),
           comment("k3", 23, None), comment("k6", 26, 100, body=None), comment("d1", 8, 8)]
VERSION_WINNERS = {"k0": 20, "k1": 11, "k2": 22, "k3": 13, "k5": 15, "k6": 26, "d1": 9}


def test_greater_version_wins_in_both_load_orders(new_db, tmp_path):
    schema = small_schema(tmp_path)
    a = ndjson(tmp_path / "in", "a.ndjson", SHARD_A)
    b = ndjson(tmp_path / "in", "b.ndjson", SHARD_B)
    urls = {}
    for order in ("ab", "ba"):
        urls[order] = url = new_db()
        out = tmp_path / f"out_{order}"
        for shard in ((a, b) if order == "ab" else (b, a)):
            report = ingest_and_load([shard], schema, out, url)
            assert report["shards_loaded"] == 1  # only the new shard is loaded
        assert scores(url) == VERSION_WINNERS, order
    assert table(urls["ab"]) == table(urls["ba"])
    bodies = dict(sql(urls["ab"], "SELECT id, body FROM comments"))
    assert bodies["d1"] == TRICKY and bodies["k5"] == "" and bodies["k6"] is None


def test_without_version_the_later_load_wins(new_db, tmp_path):
    schema = small_schema(tmp_path, version=False)
    a = ndjson(tmp_path / "in", "a.ndjson",
               [comment("k0", 10, 1), comment("k1", 11, 1),
                comment("dup", 1, 1), comment("dup", 2, 1), comment("dup", 3, 1),
                comment("days", 1, 1, day=0), comment("days", 2, 1, day=1)])
    b = ndjson(tmp_path / "in", "b.ndjson", [comment("k0", 20, 0), comment("k2", 22, 0)])
    ab, ba = new_db(), new_db()
    for shard in (a, b):
        ingest_and_load([shard], schema, tmp_path / "out_ab", ab)
    for shard in (b, a):
        ingest_and_load([shard], schema, tmp_path / "out_ba", ba)
    # within a shard the last line wins, even when the duplicates fall on different days
    assert scores(ab) == {"k0": 20, "k1": 11, "k2": 22, "dup": 3, "days": 2}
    assert scores(ba) == {"k0": 10, "k1": 11, "k2": 22, "dup": 3, "days": 2}


SHARD_C = [comment("k0", 30, 150), comment("k2", 32, 50), comment("d1", 1, 9),
           comment("k7", 37, None), comment("k7", 38, None)]


@pytest.mark.parametrize("version", [True, False])
@pytest.mark.parametrize("extra", ["", '[fields.file_index]\ntype = "int64"\n'])
def test_one_load_of_many_shards_equals_loading_them_one_at_a_time(backend, new_db, tmp_path,
                                                                  monkeypatch, version, extra):
    """DuckDB merges every pending shard in one statement (ranked by file, then row);
    the result must be the one shard-by-shard loading gives, in the same order."""
    schema = small_schema(tmp_path, version=version, extra=extra)
    shards = [ndjson(tmp_path / "in", f"{name}.ndjson",
                     [dict(r, file_index=i) for i, r in enumerate(rows)])
              for name, rows in (("a", SHARD_A), ("b", SHARD_B), ("c", SHARD_C))]
    out = tmp_path / "out"
    etl.ingest([str(s) for s in shards], schema, out, scheduler="synchronous")
    together, one_by_one = new_db(), new_db()
    assert run_load(str(out), load_schema(schema), together)["shards_loaded"] == 3
    monkeypatch.setattr(base, "batches", lambda units, _: [(u,) for u in units])
    assert run_load(str(out), load_schema(schema), one_by_one)["shards_loaded"] == 3
    assert table(together) == table(one_by_one)
    assert loads(together) == loads(one_by_one)
    if version:
        assert scores(together)["k0"] == 20  # the greatest version, loaded second


@pytest.mark.slow
def test_postgres_copies_new_keys_straight_in_and_stages_the_rest(pg_url, tmp_path,  # noqa: F811
                                                                  monkeypatch):
    from etl.load.postgres import PostgresLoader

    staged = []
    stage = PostgresLoader._stage_and_merge

    def counting(self, conn, schema, out, units, cols):
        staged.append([u.shard_path for u in units])
        return stage(self, conn, schema, out, units, cols)
    monkeypatch.setattr(PostgresLoader, "_stage_and_merge", counting)
    schema = small_schema(tmp_path)
    new1 = ndjson(tmp_path / "in", "a.ndjson", [comment(f"a{i}", i, 5) for i in range(50)])
    new2 = ndjson(tmp_path / "in", "b.ndjson", [comment(f"b{i}", i, 5) for i in range(50)])
    again = ndjson(tmp_path / "in", "c.ndjson", [comment("c0", 1, 5), comment("a49", 99, 9)])
    twice = ndjson(tmp_path / "in", "d.ndjson", [comment("d0", 1, 5), comment("d0", 2, 6)])
    out = tmp_path / "out"
    for shard in (new1, new2, again, twice):
        ingest_and_load([shard], schema, out, pg_url)
    # a key already in the table (a49) or repeated within the shard (d0): staged
    assert staged == [[str(again)], [str(twice)]]
    got = scores(pg_url)
    assert len(got) == 102 and got["a49"] == 99 and got["c0"] == 1 and got["d0"] == 2
    assert len(loads(pg_url)) == len(manifest_files(out))


def test_duckdb_builds_the_key_of_an_empty_table_after_its_rows(tmp_path, monkeypatch):
    """Into an empty table keyed as etl made it, DuckDB inserts unkeyed and adds the key
    at the end, in the same transaction: a repeated key fails the commit, and the
    load ranks the rows at once (a TransactionContext error is otherwise transient)."""
    from etl.load.duckdb import DuckDBLoader

    merges = []
    merge = DuckDBLoader._merge

    def counting(self, con, schema, folder, urls, units, retry):
        merges.append(retry)
        return merge(self, con, schema, folder, urls, units, retry)
    monkeypatch.setattr(DuckDBLoader, "_merge", counting)
    schema = small_schema(tmp_path)
    twice = ndjson(tmp_path / "in", "a.ndjson",
                   [comment("k0", 1, 5), comment("k1", 2, 5), comment("k0", 3, 6)])
    later = ndjson(tmp_path / "in", "b.ndjson", [comment("k1", 9, 9), comment("k2", 4, 5)])
    url = f"duckdb:///{tmp_path}/w.duckdb"
    report = ingest_and_load([twice], schema, tmp_path / "out", url)
    assert merges == [False, True] and report["table_rows"] == 2
    ingest_and_load([later], schema, tmp_path / "out", url)  # ON CONFLICT needs the key
    assert scores(url) == {"k0": 3, "k1": 9, "k2": 4}
    assert sql(url, "SELECT constraint_type, constraint_column_names FROM duckdb_constraints() "
                    "WHERE table_name = 'comments' ORDER BY 1") == \
        [("NOT NULL", ["id"]), ("PRIMARY KEY", ["id"])]


def test_duckdb_keeps_an_empty_table_that_has_an_index_of_its_own(tmp_path):
    """A table etl would make again to add its key last is left as it is when someone
    else's index is on it: remaking the table would drop that index."""
    schema = small_schema(tmp_path)
    url = f"duckdb:///{tmp_path}/w.duckdb"
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    con.execute('CREATE TABLE comments ("id" VARCHAR, created_utc TIMESTAMPTZ, '
                "subreddit VARCHAR, body VARCHAR, score BIGINT, retrieved_on TIMESTAMPTZ, "
                "PRIMARY KEY (id))")
    con.execute("CREATE INDEX by_score ON comments (score)")
    con.close()
    shard = ndjson(tmp_path / "in", "a.ndjson", [comment("k0", 1, 5), comment("k1", 2, 5)])
    assert ingest_and_load([shard], schema, tmp_path / "out", url)["table_rows"] == 2
    assert sql(url, "SELECT index_name FROM duckdb_indexes() WHERE table_name = 'comments'") \
        == [("by_score",)]
    assert scores(url) == {"k0": 1, "k1": 2}


def test_batches_group_whole_units_up_to_a_row_count():
    units = [base.LoadUnit(f"s{i}", f"s{i}", "t", ((f"f{i}", n),))
             for i, n in enumerate([3, 3, 5, 1, 9])]
    sizes = [[sum(n for _, n in u.files) for u in b] for b in base.batches(units, 6)]
    assert sizes == [[3, 3], [5, 1], [9]]  # a unit over the limit is a batch of its own
    assert [len(b) for b in base.batches(units, 0)] == [1] * 5
    assert base.batches([], 6) == []


def test_fields_named_like_loader_internals(db_url, tmp_path):
    """DuckDB's read_parquet adds a filename column, the Postgres stage a sequence column."""
    schema = small_schema(tmp_path, extra='[fields.filename]\ntype = "string"\n'
                                          '[fields._seq]\ntype = "int64"\n')
    shard = ndjson(tmp_path / "in", "a.ndjson", [
        comment("a", 1, 1, filename="one.txt", _seq=7),
        comment("a", 2, 2, filename="two.txt", _seq=8)])
    ingest_and_load([shard], schema, tmp_path / "out", db_url)
    assert sql(db_url, 'SELECT id, score, filename, "_seq" FROM comments') == \
        [("a", 2, "two.txt", 8)]


# ---------------------------------------------------------------- exactly once under SIGKILL

KILL_BEFORE_COMMIT = """
import os, signal, sys
from etl.load import base
from etl.cli import main
record, seen = base.Loader._record, [0]
def record_then_die(conn, schema, unit):
    record(conn, schema, unit)
    seen[0] += 1
    if seen[0] == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)  # rows merged and recorded, not yet committed
base.Loader._record = staticmethod(record_then_die)
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_sigkill_during_load_then_rerun_equals_a_clean_load(backend, new_db, tmp_path):
    generate(tmp_path / "in", lines=30 * 150, shards=30, codec="zst", days=3, seed=5)
    out = tmp_path / "out"
    etl.ingest([tmp_path / "in"], COMMENTS, out, scheduler="synchronous")
    files = manifest_files(out)
    per_shard = [len(r["files"]) for r in read_all_manifests(str(out))]
    load = ["load", "--from", str(out), "--schema", COMMENTS]

    clean = new_db()
    started = time.monotonic()
    run_etl(*load, "--db", clean, check=0)
    clean_seconds = time.monotonic() - started

    # killed after the third shard's rows and records, before their commit: gone with
    # them is the whole batch (every pending shard in one transaction), or that shard
    # alone with --batch-rows 0 (one shard per transaction)
    for batch, kept in (([], 0), (["--batch-rows", "0"], sum(per_shard[:2]))):
        url = new_db()
        proc = subprocess.run([sys.executable, "-c", KILL_BEFORE_COMMIT, "3", *load, *batch,
                               "--db", url], capture_output=True, cwd=ROOT, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
        assert len(loads(url)) == kept
        assert kept or table(url) == []  # no row without its record

    rng = random.Random(20150101)
    progress = []
    for _ in range(5):  # kills at random moments: startup, mid-COPY/INSERT, commit, exit
        p = subprocess.Popen([*ETL, *load, "--db", url], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.05, min(1.0, clean_seconds)))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=60)
        progress.append(len(loads(url)))
    assert progress == sorted(progress)  # committed shards stay committed

    run_etl(*load, "--db", url, check=0)
    assert table(url) == table(clean)
    recorded = loads(url)
    assert len(recorded) == len(set(recorded)) == len(files)
    assert recorded == loads(clean) and {f for f, _ in recorded} == files


# ---------------------------------------------------------------- schema evolution

def test_added_field_adds_a_column_and_keeps_every_row(backend, new_db, tmp_path):
    url = new_db()
    v1 = small_schema(tmp_path, "v1.toml")
    v2 = small_schema(tmp_path, "v2.toml", extra='[fields.ups]\ntype = "int64"\n')
    a = ndjson(tmp_path / "in", "a.ndjson", [comment(f"a{i}", i, 10, ups=100 + i)
                                             for i in range(5)])
    c = ndjson(tmp_path / "in", "c.ndjson", [comment(f"c{i}", i, 10, ups=300 + i)
                                             for i in range(3)])
    b = ndjson(tmp_path / "in", "b.ndjson", [comment(f"b{i}", i, 10, day=1, ups=200 + i)
                                             for i in range(4)])
    out = tmp_path / "out"
    ingest_and_load([a], v1, out, url)
    etl.ingest([str(c)], v1, out, scheduler="synchronous")  # ingested under v1, not loaded
    report = ingest_and_load([b], v2, out, url)              # v2 loads c's old files too
    assert report["shards_loaded"] == 2 and report["table_rows"] == 12

    types = dict(sql(url, "SELECT column_name, data_type FROM information_schema.columns "
                          "WHERE table_name = 'comments'"))
    assert types["ups"].lower() == "bigint"
    ups = dict(sql(url, "SELECT id, ups FROM comments"))
    assert ups == {**{f"a{i}": None for i in range(5)}, **{f"c{i}": None for i in range(3)},
                   **{f"b{i}": 200 + i for i in range(4)}}

    # re-ingesting an old shard under v2 (same versions: the newer load wins) fills it in
    report = ingest_and_load([a], v2, out, url, force=True)
    assert report["shards_loaded"] == 1
    ups = dict(sql(url, "SELECT id, ups FROM comments"))
    assert [ups[f"a{i}"] for i in range(5)] == [100 + i for i in range(5)]
    assert ups["c0"] is None and len(ups) == 12


# ---------------------------------------------------------------- bad URLs, unreachable server

@pytest.mark.parametrize("url, words", [
    ("notaurl", ["not a database URL", "postgresql+psycopg://"]),
    ("mysql://u@localhost/db", ["unsupported database", "mysql"]),
    ("postgresql+psycopg://u:secretpw@127.0.0.1:notaport/x", ["not a database URL"]),
])
def test_bad_url_exits_2(tmp_path, capsys, url, words):
    (tmp_path / "out").mkdir()
    code = etl_main(["load", "--from", str(tmp_path / "out"), "--schema", COMMENTS,
                     "--db", url])
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert all(w in captured.err for w in words), captured.err
    assert "secretpw" not in captured.err + captured.out


def test_unreachable_postgres_exits_2_naming_host_and_port_not_password(tmp_path):
    pytest.importorskip("psycopg")
    port = free_port()  # nothing listens there once the probe socket is closed
    url = f"postgresql+psycopg://u:secretpw@127.0.0.1:{port}/x"
    (tmp_path / "out").mkdir()
    for args in (["load", "--from", tmp_path / "out", "--schema", COMMENTS, "--db", url],
                 ["status", "--out", tmp_path / "out", "--db", url]):
        proc = run_etl(*args)
        text = proc.stdout.decode() + proc.stderr.decode()
        assert proc.returncode == 2, text
        assert f"127.0.0.1:{port}" in text and "secretpw" not in text
        assert "Traceback" not in text


# ---------------------------------------------------------------- status and `etl run`

@pytest.mark.slow
def test_run_on_worker_processes_forked_by_the_console_script(backend, db_url, tmp_path):
    """``etl run`` as users run it: its own process forks the ingest workers, its pyarrow
    works without numpy from then on, and the load into either warehouse, in the same
    process, needs none: every row written is loaded."""
    (tmp_path / "in").mkdir()
    for seed in (3, 4, 5):
        write_shard(tmp_path / "in", f"RC_{seed}.zst", sample_bytes(900, seed=seed), "zst")
    out = tmp_path / "out"
    run_etl("run", tmp_path / "in", "--schema", COMMENTS, "--out", out, "--db", db_url,
            "--report", tmp_path / "r.json", "--scheduler", "processes", check=0)
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"]["ok"] == 3 and report["rows_written"] == parquet_ids(out) > 2000
    assert report["load"]["shards_loaded"] == 3
    assert report["load"]["table_rows"] == report["rows_written"]


def test_status_and_run_with_a_corrupt_shard(db_url, tmp_path):
    (tmp_path / "in").mkdir()
    good1 = write_shard(tmp_path / "in", "g1.zst", sample_bytes(800, seed=41), "zst")
    good2 = write_shard(tmp_path / "in", "g2.zst", sample_bytes(800, seed=42), "zst")
    whole = sample_bytes(20000, seed=43)
    bad = write_shard(tmp_path / "in", "bad.zst", whole, "zst")
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])  # truncated download
    out = tmp_path / "out"

    def status(*inputs) -> dict:
        proc = run_etl("status", "--out", out, "--db", db_url, "--json", *inputs, check=0)
        return json.loads(proc.stdout)

    etl.ingest([good1], COMMENTS, out, scheduler="synchronous")
    before = status()
    assert before["shards_done"] == 1 and before["shards_failed"] == []
    assert before["files_loaded"] == 0 and before["files_pending"] == len(manifest_files(out))
    assert before["rows"].get("comments", 0) == 0

    run_etl("run", good1, good2, bad, "--schema", COMMENTS, "--out", out, "--db", db_url,
            "--report", tmp_path / "r.json", "--scheduler", "synchronous", check=3)
    report = json.loads((tmp_path / "r.json").read_text())
    assert {Path(s["path"]).name: s["status"] for s in report["shards"]} == \
        {"g1.zst": "skipped", "g2.zst": "ok", "bad.zst": "failed"}
    assert report["load"]["shards_loaded"] == 2
    assert report["load"]["table_rows"] == parquet_ids(out)

    after = status(good1, good2, bad)
    assert after["shards_done"] == 2 and after["shards_failed"] == [str(bad)]
    assert after["shards_pending"] == [str(bad)]
    assert after["files_pending"] == 0 and after["files_loaded"] == len(manifest_files(out))
    assert after["rows"] == {"comments": report["load"]["table_rows"]}
    text = run_etl("status", "--out", out, "--db", db_url, check=0).stdout.decode()
    assert "files pending     0" in text and str(bad) in text


def test_status_never_creates_a_duckdb_file(tmp_path):
    out, db = tmp_path / "out", tmp_path / "not-yet.duckdb"
    etl.ingest([write_shard(tmp_path, "a.zst", sample_bytes(300, seed=44), "zst")], COMMENTS,
               out, scheduler="synchronous")
    st = json.loads(run_etl("status", "--out", out, "--db", f"duckdb:///{db}", "--json",
                            check=0).stdout)
    assert not db.exists()
    assert st["files_loaded"] == 0 and st["files_pending"] == len(manifest_files(out)) > 0
    assert st["rows"] == {} and "does not exist yet" in st["database"]


# ---------------------------------------------------------------- errors: retry, no partial commit

def test_with_retries_retries_transient_errors_then_gives_up():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise TransientLoadError("server closed the connection", "db")
        return "done"
    assert with_retries(flaky, "loading x", backoff=0) == "done" and len(calls) == 3

    def always():
        calls.append(1)
        raise TransientLoadError("could not serialize access", "db")
    calls.clear()
    with pytest.raises(LoadError) as info:
        with_retries(always, "loading x", backoff=0)
    assert not isinstance(info.value, TransientLoadError)
    assert len(calls) == base.RETRIES
    assert "loading x failed" in str(info.value) and "rerun" in str(info.value)

    def fatal():
        calls.append(1)
        raise LoadError("syntax error", "db")
    calls.clear()
    with pytest.raises(LoadError, match="syntax error"):
        with_retries(fatal, "loading x", backoff=0)
    assert len(calls) == 1  # fatal errors are not retried


@pytest.mark.slow
def test_postgres_connection_killed_mid_load_is_retried(pg_server, tmp_path,  # noqa: F811
                                                        monkeypatch):
    from etl.load.postgres import PostgresLoader

    generate(tmp_path / "in", lines=600, shards=3, codec="zst", days=2, seed=6)
    out = tmp_path / "out"
    etl.ingest([tmp_path / "in"], COMMENTS, out, scheduler="synchronous")
    clean = pg_server.new_database()
    run_load(str(out), load_schema(COMMENTS), clean)

    copy, calls = PostgresLoader._copy, []

    def copy_after_losing_the_connection(conn, *args):
        calls.append(1)
        if len(calls) == 1:  # the server ends our session mid-transaction
            pid = conn.connection.driver_connection.info.backend_pid
            pg_server.execute(f"SELECT pg_terminate_backend({pid})")
        return copy(conn, *args)
    monkeypatch.setattr(PostgresLoader, "_copy", staticmethod(copy_after_losing_the_connection))
    url = pg_server.new_database()
    report = run_load(str(out), load_schema(COMMENTS), url)
    assert len(calls) == 2  # the three shards' batch, twice
    assert report["shards_loaded"] == 3
    assert table(url) == table(clean) and len(loads(url)) == len(manifest_files(out))


CHECKED_TABLE = ("CREATE TABLE comments (id TEXT PRIMARY KEY, created_utc TIMESTAMPTZ, "
                 "subreddit TEXT, body TEXT, score BIGINT CHECK (score < 1000), "
                 "retrieved_on TIMESTAMPTZ)")


def test_a_refused_shard_commits_nothing_and_exits_4(db_url, tmp_path, capsys):
    schema = small_schema(tmp_path)
    sql(db_url, CHECKED_TABLE)  # made by hand, with a rule some rows break
    good = ndjson(tmp_path / "in", "a_good.ndjson", [comment(f"g{i}", i, 1) for i in range(5)])
    rows = [comment(f"x{i}", i, 1) for i in range(5)] + [comment("x5", 5000, 1)]
    bad = ndjson(tmp_path / "in", "b_bad.ndjson", rows)
    out = tmp_path / "out"
    etl.ingest([good, bad], schema, out, scheduler="synchronous")
    code = etl_main(["load", "--from", str(out), "--schema", str(schema), "--db", db_url])
    err = capsys.readouterr().err
    assert code == 4, err
    assert "check" in err.lower() and "rerun" in err
    assert sorted(scores(db_url)) == [f"g{i}" for i in range(5)]  # nothing of the bad shard
    assert {f for f, _ in loads(db_url)} == {f["path"] for r in read_all_manifests(str(out))
                                            if r["shard_id"].startswith("a_good")
                                            for f in r["files"]}

    rows[-1]["score"] = 500  # fix the data, re-ingest, rerun: only the fixed shard loads
    ndjson(tmp_path / "in", "b_bad.ndjson", rows)
    report = ingest_and_load([good, bad], schema, out, db_url)
    assert report["shards_loaded"] == 1 and report["table_rows"] == 11


@pytest.mark.slow
def test_postgres_copy_error_is_a_load_error_and_commits_nothing(pg_url, tmp_path,  # noqa: F811
                                                                 capsys):
    schema = small_schema(tmp_path)
    out = tmp_path / "out"
    ingest_and_load([ndjson(tmp_path / "in", "a.ndjson", [comment("a", 1, 1)])],
                    schema, out, pg_url)
    sql(pg_url, "ALTER TABLE comments ALTER COLUMN score TYPE boolean USING score <> 0")
    etl.ingest([ndjson(tmp_path / "in", "b.ndjson", [comment("b", 7, 1)])], schema, out,
               scheduler="synchronous")
    before, recorded = table(pg_url), loads(pg_url)
    code = etl_main(["load", "--from", str(out), "--schema", str(schema), "--db", pg_url])
    err = capsys.readouterr().err
    assert code == 4, err
    assert 'invalid input syntax for type boolean: "7"' in err and "rerun" in err
    assert table(pg_url) == before and loads(pg_url) == recorded


@pytest.mark.slow
def test_postgres_replaces_nul_in_text(tmp_path, pg_url):
    """Postgres text cannot hold U+0000 (real dumps have it): stored as U+FFFD there."""
    src = tmp_path / "nul.ndjson"
    src.write_bytes(b'{"id": "a", "created_utc": 1420070400, "subreddit": "x", '
                    b'"body": "before\\u0000after"}\n')
    etl.ingest([src], COMMENTS, tmp_path / "out", scheduler="synchronous")
    run_load(str(tmp_path / "out"), load_schema(COMMENTS), pg_url)
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        assert conn.execute(sa.text("select body from comments")).scalar() == "before\ufffdafter"
    engine.dispose()


def test_every_schema_type_gets_its_column_type_and_a_new_one_is_added(backend, db_url):
    """The DDL both loaders share (etl/load/tables.py), on the real databases."""
    fields = {"id": {"type": "string", "required": True}, "n": {"type": "int64"},
              "m": {"type": "int32"}, "x": {"type": "float64"}, "b": {"type": "bool"},
              "t": {"type": "timestamp"}, "d": {"type": "date"},
              "tags": {"type": "list<string>"}, "doc": {"type": "json"}}
    schema = schema_from_dict({"dataset": {"name": "typed", "key": "id"}, "fields": fields})
    loader = base.open_loader(db_url)
    try:
        loader.prepare(schema)
        fields["later"] = {"type": "string"}
        loader.prepare(schema_from_dict({"dataset": {"name": "typed", "key": "id"},
                                         "fields": fields}))
        loader.prepare(schema)  # nothing to add, nothing lost: additive only
    finally:
        loader.close()
    types = dict(sql(db_url, "SELECT column_name, data_type FROM information_schema.columns "
                             "WHERE table_name = 'typed'"))
    expected = {"duckdb": {"tags": "varchar", "doc": "varchar", "x": "double",
                           "later": "varchar"},
                "postgres": {"tags": "array", "doc": "jsonb", "x": "double precision",
                             "later": "text"}}[backend]
    assert {k: types[k].lower() for k in expected} == expected
    assert set(types) == set(fields)
    assert {r[0] for r in sql(db_url, "SELECT table_name FROM information_schema.tables")} \
        >= {"typed", "_etl_loads"}


@pytest.mark.parametrize("value", ["-1", "many", "1.5"])
def test_batch_rows_must_be_a_whole_number(tmp_path, value):
    (tmp_path / "out").mkdir()
    proc = run_etl("load", "--from", tmp_path / "out", "--schema", COMMENTS,
                   "--batch-rows", value)
    assert proc.returncode == 2
    assert "--batch-rows" in proc.stderr.decode() and "whole number" in proc.stderr.decode()
