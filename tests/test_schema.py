"""Tests for etl.schema: the bundled schemas load, the documented example loads, and every
bad config raises a ConfigError that names the file and the offending key."""

from __future__ import annotations

import pickle
import re
import textwrap
from pathlib import Path

import pyarrow as pa
import pytest

import etl
from etl.errors import ConfigError
from etl.schema import arrow_types, load_schema, schema_from_dict

SCHEMAS = Path(etl.__file__).parent / "schemas"
BUNDLED = sorted(SCHEMAS.glob("*.toml"))
FEB_1_2024_US = 1_706_745_600 * 1_000_000

EXAMPLE = """
[dataset]
name = "comments"
key = "id"
version = "retrieved_on"
partition_by = "created_utc"
[fields.id]
type = "string"
required = true
[fields.created_utc]
type = "timestamp"
required = true
[fields.edited_at]
path = "edited"
type = "timestamp"
[fields.retrieved_on]
type = "timestamp"
[fields.subreddit]
type = "string"
[filter]
subreddit = { in = ["AskReddit", "politics"] }
"""


def write(tmp_path, text: str, name: str = "schema.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------- good schemas

def test_bundled_schemas_exist():
    assert SCHEMAS / "reddit_comments.toml" in BUNDLED


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_bundled_schema_loads(path):
    schema = load_schema(path)
    assert schema.source == str(path)
    assert schema.fields
    names = [f.name for f in schema.fields]
    assert len(names) == len(set(names))
    for ref in (schema.key, schema.version, schema.partition_by):
        assert ref is None or ref in names
    if schema.partition_by:
        assert schema.field(schema.partition_by).type in ("timestamp", "date")
        assert schema.partition_column == f"{schema.partition_by}_date"
    arrow = schema.arrow_schema()
    assert arrow.names == names
    for f in schema.fields:
        assert arrow.field(f.name).type == arrow_types()[f.type]
        assert arrow.field(f.name).nullable is not f.required


def test_reddit_comments_schema_details(comments_schema):
    schema = load_schema(comments_schema)
    assert (schema.name, schema.key, schema.version, schema.partition_by) == (
        "comments", "id", "retrieved_on", "created_utc")
    assert schema.field("gid_2").path == ("gildings", "gid_2")
    assert schema.field("edited_at").path == ("edited",)
    assert schema.field("author").null_if == frozenset({"[deleted]", "[removed]"})
    assert schema.field("body").html_unescape
    assert schema.arrow_schema().field("created_utc").type == pa.timestamp("us", tz="UTC")
    assert schema.filters == ()


def test_example_from_the_issue_loads(tmp_path):
    path = write(tmp_path, EXAMPLE)
    schema = load_schema(path)
    assert (schema.name, schema.key, schema.version, schema.partition_by) == (
        "comments", "id", "retrieved_on", "created_utc")
    assert schema.source == str(path)
    assert schema.field("id").required and not schema.field("edited_at").required
    assert schema.field("edited_at").path == ("edited",)
    assert schema.field("edited_at").unit == "s"
    [flt] = schema.filters
    assert (flt.field, flt.op, flt.value) == ("subreddit", "in", ["AskReddit", "politics"])
    assert schema.arrow_schema() == pa.schema([
        pa.field("id", pa.string(), nullable=False),
        pa.field("created_utc", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("edited_at", pa.timestamp("us", tz="UTC")),
        pa.field("retrieved_on", pa.timestamp("us", tz="UTC")),
        pa.field("subreddit", pa.string()),
    ])


def test_every_type_and_option(tmp_path):
    path = write(tmp_path, """
        [dataset]
        name = "everything"
        partition_by = "day"
        [fields.s]
        type = "string"
        path = "a.b.c"
        null_if = ["", "n/a"]
        strip = true
        lower = true
        html_unescape = true
        description = "free text"
        [fields.i64]
        type = "int64"
        [fields.i32]
        type = "int32"
        [fields.f]
        type = "float64"
        [fields.b]
        type = "bool"
        [fields.ts]
        type = "timestamp"
        unit = "ms"
        [fields.day]
        type = "date"
        [fields.tags]
        type = "list<string>"
        [fields.raw]
        type = "json"
    """)
    schema = load_schema(path)
    assert [f.type for f in schema.fields] == list(arrow_types())
    s = schema.field("s")
    assert (s.path, s.null_if, s.strip, s.lower, s.html_unescape) == (
        ("a", "b", "c"), frozenset({"", "n/a"}), True, True, True)
    assert schema.field("ts").unit == "ms"
    assert schema.key is None and schema.version is None


def test_filter_bounds_take_the_field_type(tmp_path):
    schema = load_schema(write(tmp_path, """
        [dataset]
        name = "t"
        [fields.t]
        type = "timestamp"
        [fields.d]
        type = "date"
        [fields.n]
        type = "int64"
        [fields.x]
        type = "float64"
        [fields.s]
        type = "string"
        [fields.b]
        type = "bool"
        [filter]
        t = { between = ["2024-02-01", "2024-02-01T12:00:00Z"], ge = 1706745600 }
        d = { lt = "2024-02-01" }
        n = { in = [1, 2.0, "3"], gt = 0 }
        x = { le = 1 }
        s = { ge = 5, regex = "^a+$", not_null = true }
        b = { eq = "true" }
    """))
    got = {(f.field, f.op): f.value for f in schema.filters}
    assert got[("t", "between")] == [FEB_1_2024_US, FEB_1_2024_US + 12 * 3600 * 1_000_000]
    assert got[("t", "ge")] == FEB_1_2024_US
    assert got[("d", "lt")] == 19754
    assert got[("n", "in")] == [1, 2, 3]
    assert got[("n", "gt")] == 0
    assert got[("x", "le")] == 1.0 and type(got[("x", "le")]) is float
    assert got[("s", "ge")] == "5"
    assert got[("s", "regex")] == re.compile("^a+$")
    assert got[("s", "not_null")] is True
    assert got[("b", "eq")] is True


def test_schema_is_frozen_and_pickles(comments_schema):
    schema = load_schema(comments_schema)
    assert pickle.loads(pickle.dumps(schema)) == schema
    with pytest.raises(AttributeError):
        schema.name = "other"


# ---------------------------------------------------------------- bad schemas

HEAD = """
[dataset]
name = "t"
[fields.id]
type = "string"
[fields.n]
type = "int64"
[fields.ts]
type = "timestamp"
[fields.tags]
type = "list<string>"
"""

BAD = {
    "unknown type": (HEAD + '[fields.x]\ntype = "integer"\n', "fields.x.type"),
    "missing type": (HEAD + '[fields.x]\npath = "y"\n', "fields.x.type"),
    "type not a string": (HEAD + '[fields.x]\ntype = ["string"]\n', "fields.x.type"),
    "unknown field key": (HEAD + '[fields.x]\ntype = "string"\nnullable = true\n',
                          "fields.x.nullable"),
    "missing dataset.name": ('[dataset]\nkey = "id"\n[fields.id]\ntype = "string"\n',
                             "dataset.name"),
    "no dataset table": ('[fields.id]\ntype = "string"\n', "dataset.name"),
    "dataset.name not an identifier": (
        '[dataset]\nname = "my table"\n[fields.id]\ntype = "string"\n', "dataset.name"),
    "unknown dataset key": (
        '[dataset]\nname = "t"\nprimary = "id"\n[fields.id]\ntype = "string"\n',
        "dataset.primary"),
    "dataset not a table": ('dataset = "t"\n[fields.id]\ntype = "string"\n', "dataset"),
    "unknown top-level table": (HEAD + '[filters]\nid = { eq = "a" }\n', "filters"),
    "no fields": ('[dataset]\nname = "t"\n', "fields"),
    "fields not a table": ('fields = "id"\n[dataset]\nname = "t"\n', "fields"),
    "key names a non-field": (HEAD.replace('name = "t"', 'name = "t"\nkey = "uid"'),
                              "dataset.key"),
    "key not a string": (HEAD.replace('name = "t"', 'name = "t"\nkey = ["id", "n"]'),
                         "dataset.key"),
    "version names a non-field": (HEAD.replace('name = "t"', 'name = "t"\nversion = "v"'),
                                  "dataset.version"),
    "partition_by names a non-field": (
        HEAD.replace('name = "t"', 'name = "t"\npartition_by = "created"'),
        "dataset.partition_by"),
    "partition_by on a non-timestamp field": (
        HEAD.replace('name = "t"', 'name = "t"\npartition_by = "n"'), "dataset.partition_by"),
    "bad field name": (HEAD + '[fields."a.b"]\ntype = "string"\n', "fields.a.b"),
    "field not a table": (HEAD.replace("[fields.id]", "[fields]\nx = 1\n[fields.id]"),
                          "fields.x"),
    "empty path part": (HEAD + '[fields.x]\ntype = "int32"\npath = "gildings..gid_2"\n',
                        "fields.x.path"),
    "path not a string": (HEAD + '[fields.x]\ntype = "int32"\npath = ["a"]\n',
                          "fields.x.path"),
    "required not a bool": (HEAD + '[fields.x]\ntype = "string"\nrequired = "yes"\n',
                            "fields.x.required"),
    "null_if not a list": (HEAD + '[fields.x]\ntype = "string"\nnull_if = "[deleted]"\n',
                           "fields.x.null_if"),
    "null_if not strings": (HEAD + '[fields.x]\ntype = "string"\nnull_if = [0]\n',
                            "fields.x.null_if"),
    "unknown unit": (HEAD + '[fields.x]\ntype = "timestamp"\nunit = "ns"\n', "fields.x.unit"),
    "unit not a string": (HEAD + '[fields.x]\ntype = "timestamp"\nunit = ["s"]\n',
                          "fields.x.unit"),
    "strip on a non-string field": (HEAD + '[fields.x]\ntype = "int64"\nstrip = true\n',
                                    "fields.x"),
    "null_if on a non-string field": (HEAD + '[fields.x]\ntype = "timestamp"\n'
                                      'null_if = ["0"]\n', "fields.x"),
    "lower on a list field": (HEAD + '[fields.x]\ntype = "list<string>"\nlower = true\n',
                              "fields.x"),
    "html_unescape on a json field": (HEAD + '[fields.x]\ntype = "json"\n'
                                      'html_unescape = true\n', "fields.x"),
    "bad filter operator": (HEAD + '[filter]\nn = { gte = 3 }\n', "filter.n.gte"),
    "filter on unknown field": (HEAD + '[filter]\nsubreddit = { eq = "x" }\n',
                                "filter.subreddit"),
    "filter not a table": (HEAD.replace('[dataset]', 'filter = "id"\n[dataset]'), "filter"),
    "filter spec not a table": (HEAD + '[filter]\nn = 3\n', "filter.n"),
    "empty filter spec": (HEAD + '[filter]\nn = {}\n', "filter.n"),
    "between with 3 values": (HEAD + '[filter]\nn = { between = [1, 2, 3] }\n',
                              "filter.n.between"),
    "between with 1 value": (HEAD + '[filter]\nn = { between = [1] }\n', "filter.n.between"),
    "between not a list": (HEAD + '[filter]\nn = { between = 1 }\n', "filter.n.between"),
    "in not a list": (HEAD + '[filter]\nid = { in = "a" }\n', "filter.id.in"),
    "bad regex": (HEAD + '[filter]\nid = { regex = "([a-z" }\n', "filter.id.regex"),
    "regex not a string": (HEAD + '[filter]\nid = { regex = 3 }\n', "filter.id.regex"),
    "not_null false": (HEAD + '[filter]\nid = { not_null = false }\n', "filter.id.not_null"),
    "int bound not an int": (HEAD + '[filter]\nn = { ge = "ten" }\n', "filter.n.ge"),
    "int bound with a fraction": (HEAD + '[filter]\nn = { lt = 2.5 }\n', "filter.n.lt"),
    "timestamp bound not a date": (HEAD + '[filter]\nts = { between = ["2024-01-01", '
                                   '"soon"] }\n', "filter.ts.between"),
    "timestamp bound false": (HEAD + '[filter]\nts = { ge = false }\n', "filter.ts.ge"),
    "string bound a table": (HEAD + '[filter]\nid = { in = [{ a = 1 }] }\n', "filter.id.in"),
    "comparison on a list field": (HEAD + '[filter]\ntags = { in = ["a"] }\n',
                                   "filter.tags.in"),
}


@pytest.mark.parametrize("text, key", BAD.values(), ids=BAD.keys())
def test_bad_schema_names_file_and_key(tmp_path, text, key):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_schema(path)
    message = str(info.value)
    assert str(path) in message
    assert key in message
    assert info.value.path == str(path)
    assert info.value.field == key


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, '[dataset]\nname = "t\n')
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_schema(path)
    assert str(path) in str(info.value)
    assert "line 2" in str(info.value)


def test_duplicate_toml_key_is_invalid_toml(tmp_path):
    path = write(tmp_path, HEAD + '[fields.id]\ntype = "int64"\n')
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        load_schema(path)
    assert str(path) in str(info.value)


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="not found") as info:
        load_schema(path)
    assert str(path) in str(info.value)


def test_config_error_pickles(tmp_path):
    path = write(tmp_path, BAD["bad regex"][0])
    with pytest.raises(ConfigError) as info:
        load_schema(path)
    again = pickle.loads(pickle.dumps(info.value))
    assert str(again) == str(info.value)


def test_schema_from_dict_names_its_source():
    with pytest.raises(ConfigError) as info:
        schema_from_dict({"dataset": {"name": "t"}, "fields": {"x": {"type": "text"}}},
                         "inline.toml")
    assert "inline.toml" in str(info.value) and "fields.x.type" in str(info.value)
