"""etl infer: a schema from a sample that etl ingest takes as is."""

from __future__ import annotations

import json

import orjson
import pytest

from etl.infer import FieldStats, _walk, choose_type, infer_schema
from etl.schema import load_schema
from tests.conftest import DATA
from tests.test_pipeline import run_etl, sample_bytes, write_shard

REAL = [DATA / "reddit" / "test_comments.json", DATA / "reddit" / "test_submissions.json",
        DATA / "ndjson" / "sample.jsonl", DATA / "ndjson" / "sample-no-eol-at-eof.jsonl",
        DATA / "ndjson" / "sample-crlf-line-separators.jsonl"]


def infer_and_ingest(tmp_path, shards) -> tuple[str, dict]:
    proc = run_etl("infer", *shards, check=0)
    schema = tmp_path / "inferred.toml"
    schema.write_bytes(proc.stdout)
    load_schema(schema)  # valid as written
    run_etl("ingest", *shards, "--schema", schema, "--out", tmp_path / "out", "--scheduler",
            "synchronous", "--report", tmp_path / "r.json", check=0)
    return proc.stdout.decode(), json.loads((tmp_path / "r.json").read_text())


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_samples_ingest_with_no_rejects(tmp_path, path):
    text, report = infer_and_ingest(tmp_path, [path])
    assert report["rows_rejected"] == 0 and report["rows_written"] == report["lines"] - \
        report["blank_lines"]


def test_reddit_quirks_are_noted(tmp_path):
    text, _ = infer_and_ingest(tmp_path, [DATA / "reddit" / "test_comments.json"])
    schema = load_schema(tmp_path / "inferred.toml")
    assert schema.key == "id" and schema.partition_by == "created_utc"
    assert schema.field("created_utc").type == "timestamp"
    block = text.split("[fields.created_utc]")[1].split("[fields.")[0]
    assert "changes type" in block and "a string of digits" in block and "epoch seconds" in block
    assert schema.field("edited").type == "bool"  # never an epoch in these 27 comments
    assert schema.field("gildings_gid_2").path == ("gildings", "gid_2")
    text, _ = infer_and_ingest(tmp_path, [DATA / "reddit" / "test_submissions.json"])
    schema = load_schema(tmp_path / "inferred.toml")
    assert schema.field("edited").type == "timestamp"  # false, or an epoch float
    assert "false is read as null" in text.split("[fields.edited]")[1].split("[fields.")[0]


def test_generated_data_with_bad_lines(tmp_path):
    shard = write_shard(tmp_path, "RC_2015-01.zst", sample_bytes(3000, seed=8, bad_rate=0.02),
                        "zst")
    text, report = infer_and_ingest(tmp_path, [shard])
    schema = load_schema(tmp_path / "inferred.toml")
    assert (schema.name, schema.key, schema.version) == ("rc_2015_01", "id", "retrieved_on")
    assert schema.field("score").type == "int64"
    assert "would be rejected as type:score" in text
    assert set(report["rejects_by_reason"]) <= {"invalid_json", "invalid_utf8", "not_object",
                                                "missing:id", "type:created_utc", "type:score"}
    assert "% of sampled rows" in text  # gildings come and go


def test_choose_type_rules():
    def stats(*values):
        s = FieldStats()
        for v in values:
            _walk({"x": v}, (), {("x",): s}, set())
        return s

    assert choose_type("n", stats(1, 2, "3"))[0] == "int64"
    assert choose_type("n", stats(1, 2.5))[0] == "float64"
    assert choose_type("n", stats(True, False))[0] == "bool"
    assert choose_type("n", stats("a", 1))[0] == "string"
    assert choose_type("created_at", stats("2024-01-01T00:00:00Z"))[0] == "timestamp"
    assert choose_type("tags", stats(["a", "b"], []))[0] == "list<string>"
    assert choose_type("x", stats([{"a": 1}]))[0] == "json"
    assert choose_type("x", stats(None, None)) == ("string", ["always null in the sample"])


def test_wide_objects_become_json(tmp_path):
    rows = [{"id": str(i), "media": {f"k{i}_{j}": j for j in range(3)}, "meta": {"a": {"b": i}}}
            for i in range(40)]
    src = tmp_path / "wide.ndjson"
    src.write_bytes(b"\n".join(orjson.dumps(r) for r in rows))
    schema = load_schema_text(tmp_path, infer_schema([str(src)]))
    assert schema.field("media").type == "json"
    assert schema.field("meta_a_b").path == ("meta", "a", "b")


def load_schema_text(tmp_path, text):
    p = tmp_path / "s.toml"
    p.write_text(text)
    return load_schema(p)
