"""Tests for etl.parse: lines in, typed Arrow table and byte-exact rejects out, no Dask."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

import etl
from etl.parse import BatchResult, Parser
from etl.schema import Schema, load_schema, schema_from_dict
from etl.shards import LineBatch, iter_line_batches
from tests.conftest import is_utf8

DATA = Path(__file__).resolve().parent / "data"
SUITE = DATA / "jsontestsuite" / "test_parsing"
SUITE_FILES = sorted(SUITE.iterdir())
REDDIT_COMMENTS = DATA / "reddit" / "test_comments.json"
COMMENTS_SCHEMA = Path(etl.__file__).parent / "schemas" / "reddit_comments.toml"
UTC = dt.timezone.utc
BOM = b"\xef\xbb\xbf"


def make_schema(fields: dict, filters: dict | None = None) -> Schema:
    return schema_from_dict({"dataset": {"name": "t"}, "fields": fields,
                             "filter": filters or {}})


def parse(schema: Schema, lines: list[bytes], first_line_no: int = 1,
          first_offset: int = 0) -> BatchResult:
    result = Parser(schema).parse_batch(LineBatch(lines, first_line_no, first_offset))
    assert_accounting(result)
    return result


def assert_accounting(result: BatchResult) -> None:
    assert result.lines == (result.rows_written + result.rows_filtered + len(result.rejects)
                            + result.blank_lines)
    assert sum(result.rejects_by_reason.values()) == len(result.rejects)
    for r in result.rejects:
        assert result.rejects_by_reason[r.reason] >= 1
        assert r.error


def reasons(result: BatchResult) -> list[str]:
    return [r.reason for r in result.rejects]


def column(result: BatchResult, name: str) -> list:
    return result.table.column(name).to_pylist()


def ndjson_lines(data: bytes) -> list[bytes]:
    """Split a stream as etl.shards does: LF ends a line, CR stays, a last line needs no LF."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


def expected_raw(line: bytes) -> bytes:
    return line[:-1] if line.endswith(b"\r") else line


# ---------------------------------------------------------------- reject reasons

SCHEMA = make_schema({
    "id": {"type": "string", "required": True},
    "n": {"type": "int64"},
    "small": {"type": "int32"},
    "x": {"type": "float64"},
    "flag": {"type": "bool"},
    "ts": {"type": "timestamp"},
    "day": {"type": "date"},
    "tags": {"type": "list<string>"},
    "raw": {"type": "json"},
    "gid_2": {"type": "int32", "path": "gildings.gid_2"},
})
DEEP = b"[" * 300 + b"]" * 300  # orjson reads it; nested too deeply to write back

REJECTS = [
    (b'\xff{"id": "a"}', "invalid_utf8"),
    (b'{"id": "caf\xe9"}', "invalid_utf8"),  # Latin-1 inside a string
    (b'{"id": "\xed\xa0\x80"}', "invalid_utf8"),  # an encoded surrogate
    (b'{"id": "\xc0\xaf"}', "invalid_utf8"),  # overlong encoding
    (b'{"id": "a"', "invalid_json"),
    (b'{id: "a"}', "invalid_json"),
    (b'{"id": "a",}', "invalid_json"),
    (b'{"id": "a"} {"id": "b"}', "invalid_json"),
    (b'{"id": "a", "x": NaN}', "invalid_json"),
    (b'{"id": "\\ud800"}', "invalid_json"),  # lone surrogate escape
    (b"\x00", "invalid_json"),
    (BOM + b"{", "invalid_json"),
    (b"[1, 2]", "not_object"),
    (b'"text"', "not_object"),
    (b"42", "not_object"),
    (b"null", "not_object"),
    (b"true", "not_object"),
    (BOM + b"null", "not_object"),
    (BOM + b"[]", "not_object"),
    (b"{}", "missing:id"),
    (b'{"id": null}', "missing:id"),
    (b'{"ID": "a"}', "missing:id"),
    (b'{"id": ["a"]}', "type:id"),
    (b'{"id": {"a": 1}}', "type:id"),
    (b'{"id": "a", "n": 1.5}', "type:n"),
    (b'{"id": "a", "n": "4.2"}', "type:n"),
    (b'{"id": "a", "n": true}', "type:n"),
    (b'{"id": "a", "n": ""}', "type:n"),
    (b'{"id": "a", "n": 9223372036854775808}', "type:n"),
    (b'{"id": "a", "n": -9223372036854775809}', "type:n"),
    (b'{"id": "a", "small": 2147483648}', "type:small"),
    (b'{"id": "a", "x": "abc"}', "type:x"),
    (b'{"id": "a", "flag": "yes"}', "type:flag"),
    (b'{"id": "a", "ts": true}', "type:ts"),
    (b'{"id": "a", "ts": "not-a-date"}', "type:ts"),
    (b'{"id": "a", "day": "2024-02-30"}', "type:day"),
    (b'{"id": "a", "tags": "a"}', "type:tags"),
    (b'{"id": "a", "tags": [["a"]]}', "type:tags"),
    (b'{"id": "a", "raw": ' + DEEP + b"}", "type:raw"),
    (b'{"id": "a", "gildings": {"gid_2": "x"}}', "type:gid_2"),
    (b'{"id": "a", "gildings": {"gid_2": 2147483648}}', "type:gid_2"),
]


@pytest.mark.parametrize("line, reason", REJECTS, ids=[repr(x[0][:40]) for x in REJECTS])
def test_reject_reason(line, reason):
    result = parse(SCHEMA, [line])
    assert reasons(result) == [reason]
    [rej] = result.rejects
    assert (rej.line_no, rej.offset, rej.raw) == (1, 0, line)
    assert result.rows_written == 0 and result.table.schema == SCHEMA.arrow_schema()


def test_reject_reasons_are_counted():
    result = parse(SCHEMA, [b"[1]", b"{}", b"{", b"{}", b"\xff"])
    assert dict(result.rejects_by_reason) == {
        "not_object": 1, "missing:id": 2, "invalid_json": 1, "invalid_utf8": 1}


def test_a_huge_line_that_cannot_be_an_object_is_set_aside_unparsed(monkeypatch):
    """A line over ``BIG_LINE`` whose first byte (past a BOM and whitespace) is not ``{``
    is a ``not_object`` reject without being parsed, valid JSON or not: parsing a JSON
    array file's one line builds every element (4.3 GB for a 296 MB line, measured).
    Shorter lines, and huge lines that may be objects, are parsed as ever."""
    import etl.parse

    array = b"[" + b",".join(b'{"id": "a%d"}' % i for i in range(1_400_000)) + b"]"
    assert len(array) > etl.parse.BIG_LINE
    huge_object = b'{"id": "big", "pad": "' + b"x" * (etl.parse.BIG_LINE + 10) + b'"}'
    result = parse(SCHEMA, [array, huge_object, b"[1]"])
    assert reasons(result) == ["not_object", "not_object"] and result.rows_written == 1
    first = result.rejects[0]
    assert first.raw == array and f"{len(array):,} bytes starting with '['" in first.error
    assert "not parsed" in first.error and "not parsed" not in result.rejects[1].error
    monkeypatch.setattr(etl.parse, "BIG_LINE", 16)
    lines = [b"[1, 2, 3, 4, 5, 6, 7, 8, 9]", BOM + b' \t "a string of 16+ bytes"',
             b"[1, 2, 3, 4, 5, 6, 7, 8, 9,]", b"  " * 9 + b"{}", b"[1]", b'{"id": "short"}',
             b" " * 20]
    result = parse(SCHEMA, lines)
    assert reasons(result) == ["not_object"] * 3 + ["missing:id", "not_object"]
    assert ["not parsed" in r.error for r in result.rejects] == [True] * 3 + [False] * 2
    assert "starting with '\"'" in result.rejects[1].error
    assert result.rows_written == 1 and result.blank_lines == 1


def test_a_line_over_the_limit_is_a_too_long_reject_of_its_head():
    """The line batches hand over a line longer than the limit alone, with its length and
    head (etl.shards): one too_long reject, kept as far as it was, saying where it is."""
    batch = LineBatch(None, 7, 1234, b'{"id": "a", "body": "xxx', too_long=90_000_000)
    batch.know_count(1)
    result = Parser(SCHEMA).parse_batch(batch)
    assert_accounting(result)
    [rej] = result.rejects
    assert (rej.line_no, rej.offset, rej.reason, rej.raw) == \
        (7, 1234, "too_long", b'{"id": "a", "body": "xxx')
    assert "90,000,000 bytes" in rej.error and "at byte 1,234" in rej.error
    assert result.rows_written == 0 and result.lines == 1


def test_first_bad_field_in_schema_order_names_the_reject():
    result = parse(SCHEMA, [b'{"n": "x", "ts": "y"}', b'{"id": "a", "n": "x", "ts": "y"}'])
    assert reasons(result) == ["missing:id", "type:n"]


# ---------------------------------------------------------------- bytes, line numbers, offsets

def test_rejects_keep_raw_bytes_exactly():
    lines = [
        b'{"id": "caf\xe9"}',             # invalid UTF-8 kept as is
        b'{"id": "caf\xe9"}\r',           # ... and the CR of CRLF removed
        b'  {"broken"  \t',               # surrounding whitespace kept
        b'{"id": "a"} trailing\r\r',       # only the one CR before LF goes
        b"[1,\r2]\r",                     # a CR inside the line stays
        b"\xff\xfe\x00\x00",
    ]
    result = parse(SCHEMA, lines)
    assert [r.raw for r in result.rejects] == [
        b'{"id": "caf\xe9"}',
        b'{"id": "caf\xe9"}',
        b'  {"broken"  \t',
        b'{"id": "a"} trailing\r',
        b"[1,\r2]",
        b"\xff\xfe\x00\x00",
    ]
    assert reasons(result) == ["invalid_utf8", "invalid_utf8", "invalid_json", "invalid_json",
                               "not_object", "invalid_utf8"]


def test_line_numbers_and_offsets_are_exact():
    lines = [
        b'{"id": "a"}',        # line 101, offset 5000, written
        b"bad",               # line 102, offset 5012
        b"",                  # line 103, offset 5016, blank
        b'{"id": "b"}\r',      # line 104, offset 5017, written (CRLF)
        b"oops\r",            # line 105, offset 5030
        b"\xe9t\xe9\r",       # line 106, offset 5036
        b"[]",                # line 107, offset 5041
    ]
    result = parse(SCHEMA, lines, first_line_no=101, first_offset=5000)
    assert [(r.line_no, r.offset, r.reason, r.raw) for r in result.rejects] == [
        (102, 5012, "invalid_json", b"bad"),
        (105, 5030, "invalid_json", b"oops"),
        (106, 5036, "invalid_utf8", b"\xe9t\xe9"),
        (107, 5041, "not_object", b"[]"),
    ]
    assert (result.rows_written, result.blank_lines) == (2, 1)


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
@pytest.mark.parametrize("batch_bytes", [1, 40, 1 << 20])
def test_offsets_point_into_the_stream(newline, batch_bytes):
    lines = [b'{"id": "a"}', b"", b"not json", b'{"id": "\xff"}', b"   ", b"[1]",
             b'{"n": 1}', b'{"id": "b", "n": "x"}', b"\xef\xbb\xbf{", b"tail"]
    stream = newline.join(lines)  # no newline after the last line
    rejects, written, blank = [], 0, 0
    for batch in iter_line_batches(iter([stream]), batch_bytes):
        result = Parser(SCHEMA).parse_batch(batch)
        assert_accounting(result)
        rejects += result.rejects
        written += result.rows_written
        blank += result.blank_lines
    assert (written, blank, len(rejects)) == (1, 2, 7)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + len(newline))
    for r in rejects:
        assert r.raw == lines[r.line_no - 1]
        assert r.offset == starts[r.line_no - 1]
        assert stream[r.offset:r.offset + len(r.raw)] == r.raw


# ---------------------------------------------------------------- blank lines and accounting

@pytest.mark.parametrize("line", [b"", b" ", b"\t", b"\r", b"  \t \r", BOM, BOM + b"  \r"],
                         ids=repr)
def test_blank_lines_are_counted_not_rejected(line):
    result = parse(SCHEMA, [line])
    assert (result.blank_lines, result.rejects, result.rows_written) == (1, [], 0)


def test_accounting_on_a_mixed_batch():
    schema = make_schema({"id": {"type": "string", "required": True},
                          "sub": {"type": "string"}}, {"sub": {"ne": "spam"}})
    lines = [b'{"id": "1"}', b"", b'{"id": "2", "sub": "spam"}', b"{", b'{"id": "3"}\r',
             b"  ", b"[]", b'{"sub": "spam"}', b'{"sub": "ok"}', b'{"id": "4", "sub": "ok"}']
    result = parse(schema, lines)
    assert result.lines == 10
    assert (result.rows_written, result.rows_filtered, len(result.rejects),
            result.blank_lines) == (3, 2, 3, 2)
    assert column(result, "id") == ["1", "3", "4"]


def test_empty_batch():
    result = parse(SCHEMA, [])
    assert (result.lines, result.rows_written, result.table.schema) == (
        0, 0, SCHEMA.arrow_schema())


# ---------------------------------------------------------------- values

def test_every_type_lands_in_its_arrow_type():
    line = (b'{"id": "a", "n": "42", "small": 7.0, "x": 2, "flag": 1, '
            b'"ts": "2024-02-01T01:00:00+01:00", "day": "2024-02-01", '
            b'"tags": ["x", 1, null], "raw": {"k": [1, {"z": null}]}, '
            b'"gildings": {"gid_2": 3}}')
    result = parse(SCHEMA, [line])
    assert result.table.schema == SCHEMA.arrow_schema()
    assert result.table.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert result.table.to_pylist() == [{
        "id": "a", "n": 42, "small": 7, "x": 2.0, "flag": True,
        "ts": dt.datetime(2024, 2, 1, tzinfo=UTC), "day": dt.date(2024, 2, 1),
        "tags": ["x", "1", None], "raw": '{"k":[1,{"z":null}]}', "gid_2": 3,
    }]


def test_missing_optional_fields_are_null():
    nulls = b'{"id": "b", "n": null, "ts": false, "tags": null, "raw": null, "extra": [1, 2]}'
    result = parse(SCHEMA, [b'{"id": "a"}', nulls])
    rows = result.table.to_pylist()
    assert [r["id"] for r in rows] == ["a", "b"]
    for row in rows:
        assert all(v is None for k, v in row.items() if k != "id")
    assert result.table.schema == SCHEMA.arrow_schema()


@pytest.mark.parametrize("line, gid_2", [
    (b'{"id": "a", "gildings": {"gid_2": 3}}', 3),
    (b'{"id": "a", "gildings": {"gid_2": 0, "gid_1": 5}}', 0),
    (b'{"id": "a", "gildings": {"gid_2": "12"}}', 12),
    (b'{"id": "a", "gildings": {"gid_2": null}}', None),
    (b'{"id": "a", "gildings": {}}', None),
    (b'{"id": "a", "gildings": null}', None),
    (b'{"id": "a"}', None),
    (b'{"id": "a", "gid_2": 9}', None),          # only the nested path counts
    (b'{"id": "a", "gildings.gid_2": 9}', None),  # the path is not a flat key
    # a non-object on the way is treated as absent (documented choice, see report)
    (b'{"id": "a", "gildings": []}', None),
    (b'{"id": "a", "gildings": 5}', None),
], ids=repr)
def test_nested_path(line, gid_2):
    result = parse(SCHEMA, [line])
    assert column(result, "gid_2") == [gid_2]


def test_deeper_nested_path():
    schema = make_schema({"c": {"type": "string", "path": "a.b.c"}})
    result = parse(schema, [b'{"a": {"b": {"c": "x"}}}', b'{"a": {"b": {}}}', b'{"a": {}}'])
    assert column(result, "c") == ["x", None, None]


def test_string_cleaning_applies_in_the_parser():
    schema = make_schema({"author": {"type": "string", "null_if": ["[deleted]"], "strip": True,
                                     "lower": True, "html_unescape": True}})
    lines = [b'{"author": " Bob "}', b'{"author": "[deleted]"}', b'{"author": "A &amp; B"}',
             b'{"author": 5}']
    assert column(parse(schema, lines), "author") == ["bob", None, "a & b", "5"]


def test_required_field_nulled_by_cleaning_is_missing():
    schema = make_schema({"author": {"type": "string", "required": True,
                                     "null_if": ["[deleted]"]}})
    result = parse(schema, [b'{"author": "[deleted]"}'])
    assert reasons(result) == ["missing:author"]


def test_required_timestamp_false_is_missing():
    schema = make_schema({"ts": {"type": "timestamp", "required": True}})
    assert reasons(parse(schema, [b'{"ts": false}'])) == ["missing:ts"]


def test_timestamps_are_utc_and_unit_aware():
    schema = make_schema({"s": {"type": "timestamp"}, "ms": {"type": "timestamp", "unit": "ms"}})
    result = parse(schema, [b'{"s": 1706745600.5, "ms": 1706745600123}',
                            b'{"s": "1706745600", "ms": "2024-02-01T00:00:00Z"}',
                            b'{"s": "2024-01-31T19:00:00-05:00", "ms": false}'])
    feb1 = dt.datetime(2024, 2, 1, tzinfo=UTC)
    assert column(result, "s") == [feb1 + dt.timedelta(microseconds=500_000), feb1, feb1]
    assert column(result, "ms") == [feb1 + dt.timedelta(milliseconds=123), feb1, None]
    for name in ("s", "ms"):
        assert result.table.schema.field(name).type == pa.timestamp("us", tz="UTC")


def test_duplicate_keys_last_wins():
    assert column(parse(SCHEMA, [b'{"id": "a", "id": "b"}']), "id") == ["b"]


@pytest.mark.parametrize("line", [BOM + b'{"id": "a"}', BOM + b'  {"id": "a"}\r'], ids=repr)
def test_bom_at_line_start_is_dropped(line):
    result = parse(SCHEMA, [b'{"id": "0"}', line])
    assert (result.rows_written, result.rejects) == (2, [])
    assert column(result, "id") == ["0", "a"]


def test_bom_elsewhere_is_not_dropped():
    line = b'{"id": "a"}' + BOM
    result = parse(SCHEMA, [BOM + BOM + b'{"id": "a"}', b" " + BOM + b'{"id": "a"}', line])
    assert reasons(result) == ["invalid_json"] * 3
    assert result.rejects[2].raw == line


# ---------------------------------------------------------------- filters

FILTER_FIELDS = {
    "n": {"type": "int64"},
    "s": {"type": "string"},
    "t": {"type": "timestamp"},
    "x": {"type": "float64"},
    "b": {"type": "bool"},
}
N_LINES = [b'{"n": 1}', b'{"n": 2}', b'{"n": "3"}', b"{}", b'{"n": null}']


@pytest.mark.parametrize("spec, kept", [
    ({"eq": 2}, [2]),
    ({"eq": "2"}, [2]),
    ({"ne": 2}, [1, 3, None, None]),
    ({"in": [1, 3]}, [1, 3]),
    ({"not_in": [1, 3]}, [2, None, None]),
    ({"ge": 2}, [2, 3]),
    ({"gt": 2}, [3]),
    ({"le": 2}, [1, 2]),
    ({"lt": 2}, [1]),
    ({"between": [2, 3]}, [2, 3]),
    ({"between": [3, 2]}, []),
    ({"not_null": True}, [1, 2, 3]),
    ({"regex": "^[12]$"}, [1, 2]),
    ({"ge": 2, "lt": 3}, [2]),
    ({"in": []}, []),
    ({"not_in": []}, [1, 2, 3, None, None]),
], ids=repr)
def test_int_filter_operators(spec, kept):
    result = parse(make_schema(FILTER_FIELDS, {"n": spec}), N_LINES)
    assert column(result, "n") == kept
    assert (result.rows_filtered, result.rejects) == (len(N_LINES) - len(kept), [])


S_LINES = [b'{"s": "apple"}', b'{"s": "banana"}', b'{"s": "cherry"}', b'{"s": null}',
           b'{"s": 5}']


@pytest.mark.parametrize("spec, kept", [
    ({"eq": "apple"}, ["apple"]),
    ({"eq": 5}, ["5"]),  # the bound takes the field's type, as the value does
    ({"ne": "apple"}, ["banana", "cherry", None, "5"]),
    ({"in": ["apple", "cherry", "fig"]}, ["apple", "cherry"]),
    ({"not_in": ["apple", "cherry"]}, ["banana", None, "5"]),
    ({"ge": "b"}, ["banana", "cherry"]),
    ({"gt": "banana"}, ["cherry"]),
    ({"le": "banana"}, ["apple", "banana", "5"]),
    ({"lt": "banana"}, ["apple", "5"]),
    ({"between": ["b", "c"]}, ["banana"]),
    ({"not_null": True}, ["apple", "banana", "cherry", "5"]),
    ({"regex": "an"}, ["banana"]),
    ({"regex": "^[a-c]"}, ["apple", "banana", "cherry"]),
    ({"regex": "^\\d+$"}, ["5"]),
], ids=repr)
def test_string_filter_operators(spec, kept):
    result = parse(make_schema(FILTER_FIELDS, {"s": spec}), S_LINES)
    assert column(result, "s") == kept
    assert result.rows_filtered == len(S_LINES) - len(kept)


T_LINES = [
    b'{"t": "2024-01-31T23:59:59Z"}',
    b'{"t": "2024-02-01T00:00:00Z"}',
    b'{"t": 1706788800}',            # 2024-02-01T12:00:00Z
    b'{"t": "1706832000"}',          # 2024-02-02T00:00:00Z
    b'{"t": 1706832001.5}',          # 2024-02-02T00:00:01.5Z
    b'{"t": false}',
    b"{}",
]
T = {
    "jan31": dt.datetime(2024, 1, 31, 23, 59, 59, tzinfo=UTC),
    "feb1": dt.datetime(2024, 2, 1, tzinfo=UTC),
    "feb1noon": dt.datetime(2024, 2, 1, 12, tzinfo=UTC),
    "feb2": dt.datetime(2024, 2, 2, tzinfo=UTC),
    "feb2+": dt.datetime(2024, 2, 2, 0, 0, 1, 500_000, tzinfo=UTC),
}


@pytest.mark.parametrize("spec, kept", [
    # ISO dates are midnight UTC; both bounds are inclusive instants
    ({"between": ["2024-02-01", "2024-02-02"]}, ["feb1", "feb1noon", "feb2"]),
    ({"between": ["2024-02-01T00:00:01Z", "2024-02-01T12:00:00+00:00"]}, ["feb1noon"]),
    ({"between": ["2024-02-01T01:00:00+01:00", "2024-02-01T12:00:00"]}, ["feb1", "feb1noon"]),
    ({"between": [1706745600, 1706788800]}, ["feb1", "feb1noon"]),
    ({"ge": "2024-02-02"}, ["feb2", "feb2+"]),
    ({"gt": "2024-02-02"}, ["feb2+"]),
    ({"lt": "2024-02-01"}, ["jan31"]),
    ({"le": "2024-02-01"}, ["jan31", "feb1"]),
    ({"eq": "2024-02-01T12:00:00Z"}, ["feb1noon"]),
    ({"in": ["2024-02-01", 1706832000]}, ["feb1", "feb2"]),
    ({"not_null": True}, ["jan31", "feb1", "feb1noon", "feb2", "feb2+"]),
    ({"ne": "2024-02-01"}, ["jan31", "feb1noon", "feb2", "feb2+", None, None]),
    ({"not_in": ["2024-02-01", "2024-02-02"]}, ["jan31", "feb1noon", "feb2+", None, None]),
], ids=repr)
def test_timestamp_filter_operators(spec, kept):
    result = parse(make_schema(FILTER_FIELDS, {"t": spec}), T_LINES)
    assert column(result, "t") == [T.get(k) for k in kept]
    assert result.rows_filtered == len(T_LINES) - len(kept)


def test_float_and_bool_filters():
    schema = make_schema(FILTER_FIELDS, {"x": {"between": [0.5, 2]}, "b": {"eq": True}})
    lines = [b'{"x": 1, "b": true}', b'{"x": 0.25, "b": true}', b'{"x": 2.0, "b": "1"}',
             b'{"x": 1.5, "b": false}', b'{"x": 1.5}', b'{"b": true}']
    result = parse(schema, lines)
    assert column(result, "x") == [1.0, 2.0]
    assert result.rows_filtered == 4


NULL_RULE = {"eq": 1, "ne": 1, "in": [1], "not_in": [1], "ge": 1, "gt": 1, "le": 1, "lt": 1,
             "between": [0, 9], "not_null": True, "regex": "."}


@pytest.mark.parametrize("op, bound", NULL_RULE.items(), ids=NULL_RULE.keys())
@pytest.mark.parametrize("line", [b"{}", b'{"n": null}'], ids=["absent", "null"])
def test_null_fails_every_operator_but_ne_and_not_in(op, bound, line):
    result = parse(make_schema(FILTER_FIELDS, {"n": {op: bound}}), [line])
    assert result.rows_written == (1 if op in ("ne", "not_in") else 0)
    assert result.rows_filtered == 1 - result.rows_written


def test_all_filters_must_hold():
    schema = make_schema(FILTER_FIELDS, {"n": {"ge": 2}, "s": {"in": ["a", "b"]},
                                         "t": {"ge": "2024-01-01"}})
    lines = [b'{"n": 2, "s": "a", "t": "2024-06-01"}',
             b'{"n": 1, "s": "a", "t": "2024-06-01"}',
             b'{"n": 2, "s": "c", "t": "2024-06-01"}',
             b'{"n": 2, "s": "b", "t": "2023-06-01"}',
             b'{"n": 3, "s": "b", "t": "2025-06-01"}']
    result = parse(schema, lines)
    assert column(result, "n") == [2, 3]
    assert result.rows_filtered == 3


# ---------------------------------------------------------------- filter first (documented design)

FILTER_FIRST = make_schema({
    "id": {"type": "string", "required": True},
    "score": {"type": "int64"},
    "created": {"type": "timestamp"},
    "subreddit": {"type": "string"},
}, {"subreddit": {"in": ["AskReddit"]}})


@pytest.mark.parametrize("line", [
    b'{"subreddit": "pics", "id": "a", "score": "lots"}',
    b'{"subreddit": "pics", "score": 1}',                       # required id missing
    b'{"subreddit": "pics", "id": "a", "created": "yesterday"}',
    b'{"id": "a", "score": [1]}',                               # null subreddit fails `in`
], ids=repr)
def test_row_dropped_by_filter_is_filtered_even_if_another_field_is_bad(line):
    result = parse(FILTER_FIRST, [line])
    assert (result.rows_filtered, result.rejects, result.rows_written) == (1, [], 0)


@pytest.mark.parametrize("line, reason", [
    (b'{"subreddit": "AskReddit", "id": "a", "score": "lots"}', "type:score"),
    (b'{"subreddit": "AskReddit", "score": 1}', "missing:id"),
    (b'{"subreddit": "AskReddit", "id": "a", "created": "yesterday"}', "type:created"),
    (b'{"subreddit": ["AskReddit"], "id": "a"}', "type:subreddit"),  # the filter cannot decide
], ids=repr)
def test_row_kept_by_filter_is_still_checked(line, reason):
    result = parse(FILTER_FIRST, [line])
    assert reasons(result) == [reason]


def test_filter_field_type_error_is_a_reject_not_a_filter():
    schema = make_schema(FILTER_FIELDS, {"t": {"ge": "2024-01-01"}})
    assert reasons(parse(schema, [b'{"t": "soon"}', b'{"t": true}'])) == ["type:t"] * 2


# ---------------------------------------------------------------- JSONTestSuite

TRIVIAL = make_schema({"x": {"type": "json", "path": "not.in.any.file"}})
ORJSON_ACCEPTS_N = []  # n_ files orjson parses although they are not JSON: none


def _suite_value(data: bytes):
    """The document's value as orjson reads it (the BOM rule applied), or a marker."""
    try:
        return orjson.loads(data[3:] if data.startswith(BOM) else data)
    except orjson.JSONDecodeError:
        return _suite_value


@pytest.mark.parametrize("path", SUITE_FILES, ids=lambda p: p.name)
def test_jsontestsuite(path):
    data = path.read_bytes()
    multi_line = b"\n" in data or b"\r" in data
    lines = ndjson_lines(data) if multi_line else [data]
    result = parse(TRIVIAL, lines)  # never raises
    assert result.lines == len(lines)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    for r in result.rejects:
        assert r.raw == expected_raw(lines[r.line_no - 1])
        assert r.offset == starts[r.line_no - 1]
        assert data[r.offset:r.offset + len(r.raw)] == r.raw
    if len(lines) != 1:
        return  # a document cut into NDJSON lines: only the accounting is defined
    kind = path.name[0]
    if kind == "y":
        if isinstance(json.loads(data), dict):
            assert (result.rows_written, result.rejects) == (1, [])
            assert column(result, "x") == [None]
        else:
            assert reasons(result) == ["not_object"]
    elif kind == "n":
        if not data.removeprefix(BOM).strip():  # n_single_space, n_structure_UTF8_BOM_no_data
            assert result.blank_lines == 1
        elif path.name in ORJSON_ACCEPTS_N:
            assert reasons(result) == ["not_object"]
        else:
            assert reasons(result) in (["invalid_json"], ["invalid_utf8"])
    else:
        assert kind == "i"
        value = _suite_value(data)
        if isinstance(value, dict):
            assert result.rows_written == 1
        elif value is not _suite_value:
            assert reasons(result) == ["not_object"]
        else:
            assert reasons(result) in (["invalid_json"], ["invalid_utf8"])


def test_jsontestsuite_n_files_orjson_accepts():
    accepted = []
    for path in SUITE_FILES:
        if path.name.startswith("n_") and _suite_value(path.read_bytes()) is not _suite_value:
            accepted.append(path.name)
    assert accepted == ORJSON_ACCEPTS_N


def test_jsontestsuite_is_all_there():
    names = [p.name for p in SUITE_FILES]
    assert len(names) == 318
    assert {n[:2] for n in names} == {"y_", "n_", "i_"}


# ---------------------------------------------------------------- real Reddit comments

@pytest.fixture(scope="module")
def reddit():
    data = REDDIT_COMMENTS.read_bytes()
    assert not data.endswith(b"\n")
    lines = ndjson_lines(data)
    result = parse(load_schema(COMMENTS_SCHEMA), lines)
    return [json.loads(line) for line in lines], result


def test_reddit_comments_are_all_written(reddit):
    raw, result = reddit
    assert len(raw) == 27
    assert (result.rows_written, result.rejects, result.blank_lines, result.rows_filtered) == (
        27, [], 0, 0)
    assert result.table.schema == load_schema(COMMENTS_SCHEMA).arrow_schema()
    assert column(result, "id") == [r["id"] for r in raw]


def test_reddit_created_utc_in_every_form(reddit):
    raw, result = reddit
    assert {type(r["created_utc"]) for r in raw} == {str, int, float}
    got = column(result, "created_utc")
    for r, ts in zip(raw, got):
        assert ts == dt.datetime.fromtimestamp(float(r["created_utc"]), tz=UTC)
        assert ts.tzinfo is not None and ts.utcoffset() == dt.timedelta(0)
    by_id = dict(zip(column(result, "id"), got))
    assert by_id["kod0bkd"] == dt.datetime(2024, 2, 1, tzinfo=UTC)            # 1706745600.0
    assert by_id["c0cmuol"] == dt.datetime(2009, 9, 1, tzinfo=UTC)            # "1251763200"
    assert by_id["c13"] == dt.datetime(2005, 12, 12, 5, 26, 28, tzinfo=UTC)   # 1134365188
    assert by_id["efhgeqn"] == dt.datetime(2019, 2, 1, 0, 48, 42, tzinfo=UTC)  # 1548982122


def test_reddit_deleted_authors_are_null(reddit):
    raw, result = reddit
    authors = column(result, "author")
    assert sum(r["author"] == "[deleted]" for r in raw) == 5
    for r, author in zip(raw, authors):
        assert author == (None if r["author"] in ("[deleted]", "[removed]") else r["author"])


def test_reddit_other_quirks(reddit):
    raw, result = reddit
    assert column(result, "edited_at") == [None] * 27                 # "edited": false
    gid_2 = dict(zip(column(result, "id"), column(result, "gid_2")))
    assert gid_2["efhgeqn"] == 0 and gid_2["kod0bkd"] is None          # gildings {} or absent
    assert column(result, "score") == [r["score"] for r in raw]
    assert column(result, "distinguished").count("special") == 1
    assert column(result, "retrieved_on")[0] == dt.datetime.fromtimestamp(1706745615, tz=UTC)


# ---------------------------------------------------------------- fast path == orjson path

def _hostile_lines() -> list[bytes]:
    """Lines on which msgspec and orjson could disagree, wrapped every way a schema meets them."""
    from etl.sample import iter_lines

    base = b'{"id":"h%d","created_utc":1420070400,"subreddit":"AskReddit","score":3,'
    docs = [p.read_bytes() for p in sorted(SUITE.glob("*.json"))
            if b"\n" not in p.read_bytes() and b"\r" not in p.read_bytes()]
    docs += [b"1e999", b"-1e999", b"123123e100000", b"1" * 25, b"-" + b"9" * 30, b"1.5e308",
             b"18446744073709551616", b'"\xff\xfe"', b'"ok \\ud800"', b"[" * 900 + b"]" * 900,
             b"[" * 1000 + b"]" * 1000, b"[" * 1100 + b"]" * 1100, b'{"a":1,"a":2}']
    out = list(iter_lines(400, seed=3, bad_rate=0.2))
    for i, doc in enumerate(docs):
        out.append(base % i + b'"skipped":' + doc + b"}")                # a key nobody reads
        out.append(base.replace(b'"score":3,', b"") % i + b'"score":' + doc + b"}")  # needed
        out.append(doc)                                                       # the whole line
    out += [b"", b"   ", b"\r", b'\xef\xbb\xbf{"id":"bom","created_utc":1,"subreddit":"x"}',
            b'{"id":"two","created_utc":1,"subreddit":"x"} {"id":"docs"}',
            b'{"id":"dup","id":"dup2","created_utc":1,"subreddit":"x"}']
    for sub in (b'"\\u00e9"', "\"é\"".encode(), b'"Ask\\u0052eddit"', b'"x\\"', b"null", b"1",
                b'["x"]', b'"x"', b'"funny"', b'"AskReddit "', b'"x","subreddit":"x"'):
        out.append(b'{"id":"s","created_utc":1,"subreddit":' + sub + b"}")  # the filter key
    out += [b'{"id":"s","created_utc":1}', b'{"id":"s","created_utc":1,"sub\\u0072eddit":"x"}']
    return out


def _result_key(res):
    return (res.table, [(r.line_no, r.offset, r.reason, r.raw) for r in res.rejects],
            res.lines, res.blank_lines, res.rows_filtered)


def _orjson_only(schema):
    p = Parser(schema)
    p.fast = False
    return p


FILTERED = {"subreddit": {"in": ["AskReddit", "funny", "x"]}, "score": {"ge": 0}}
# one string filter: the scanner decides it on raw bytes (etl/_scan.c)
BYTE_FILTERS = [{"subreddit": {"in": ["AskReddit", "funny", "x", "é"]}},
                {"subreddit": {"not_in": ["AskReddit", "x"]}},
                {"subreddit": {"eq": "AskReddit"}}, {"subreddit": {"ne": "x"}}]


READS_SKIPPED = {"skipped_json": {"path": "skipped", "type": "json"},
                 "skipped_text": {"path": "skipped", "type": "string"},
                 "skipped_float": {"path": "skipped", "type": "float64"}}


@pytest.mark.parametrize("filters, extra",
                         [(None, None), (FILTERED, None), (None, READS_SKIPPED),
                          (None, {"skipped_text": READS_SKIPPED["skipped_text"]}),
                          *((f, None) for f in BYTE_FILTERS)],
                         ids=["no-filter", "filter", "reads-every-type", "reads-as-string",
                              "byte-in", "byte-not-in", "byte-eq", "byte-ne"])
def test_fast_path_equals_orjson_path(filters, extra):
    import tomllib

    doc = tomllib.loads(COMMENTS_SCHEMA.read_text())
    if filters:
        doc["filter"] = filters
    if extra:
        doc["fields"].update(extra)
    schema = schema_from_dict(doc)
    lines = _hostile_lines()
    assert any(not is_utf8(line) for line in lines)
    fast, slow = Parser(schema), _orjson_only(schema)
    sure = sure_beside_bad_utf8 = 0
    for size in (len(lines), 64, 7):  # whole, and batches that put hostile lines alone
        for lo in range(0, len(lines), size):
            batch = LineBatch(lines[lo:lo + size], lo + 1, 0)
            decided = sum(st != 2 for st in fast.plan.scan(batch.joined())[0])
            sure += decided
            if not all(map(is_utf8, batch.lines)):
                sure_beside_bad_utf8 += decided
            a, b = _result_key(fast.parse_batch(batch)), _result_key(slow.parse_batch(batch))
            assert a[0].equals(b[0]), f"tables differ in lines {lo}..{lo + size}"
            assert a[1:] == b[1:], f"rejects or counts differ in lines {lo}..{lo + size}"
    assert sure > 300  # the scanner really decided lines, on hostile batches too
    assert sure_beside_bad_utf8 > 50  # ... in batches holding invalid UTF-8 as well


def test_invalid_utf8_leaves_the_rest_of_its_batch_to_the_scanner():
    """A line of invalid UTF-8 is one unsure line: the scanner decides the others, and
    the line is rejected as the orjson path rejects it (reason, message, line number)."""
    from etl.sample import iter_lines

    schema = load_schema(COMMENTS_SCHEMA)
    lines = list(iter_lines(2000, seed=4, bad_rate=0))
    bad = [b'{"id":"z1","body":"caf\xe9"}', b'{"id":"z2","subreddit":"\xed\xa0\x80"}',
           b'{"id":"z3","x":{"deep":"\xf4\x90\x80\x80"}}', b'{"id":"z4","\xc0\xaf":1}']
    for i, line in zip((5, 700, 1500, 1999), bad):
        lines.insert(i, line)
    fast, slow = Parser(schema), _orjson_only(schema)
    status = fast.plan.scan(b"\n".join(lines))[0]
    assert [i for i, st in enumerate(status) if st == 2] == [5, 700, 1500, 1999]
    batch = LineBatch(lines, 1, 0)
    result = fast.parse_batch(batch)
    a, b = _result_key(result), _result_key(slow.parse_batch(batch))
    assert a[0].equals(b[0]) and a[1:] == b[1:]
    assert [(r.line_no, r.reason, r.raw) for r in result.rejects] == \
        [(i + 1, "invalid_utf8", line) for i, line in zip((5, 700, 1500, 1999), bad)]
    assert all("invalid UTF-8 at byte" in r.error for r in result.rejects)
    assert result.table.num_rows == 2000


def test_skipped_huge_numbers_follow_the_documented_rule():
    """1e999 where the schema never reads: the line is kept; where it reads: invalid_json."""
    schema = load_schema(COMMENTS_SCHEMA)
    lines = [b'{"id":"a","created_utc":1,"subreddit":"x","unused":1e999}',
             b'{"id":"b","created_utc":1,"subreddit":"x","score":1e999}']
    for parser in (Parser(schema), _orjson_only(schema)):
        res = parser.parse_batch(LineBatch(lines, 1, 0))
        assert res.table.column("id").to_pylist() == ["a"]
        assert [r.reason for r in res.rejects] == ["invalid_json"]


@pytest.mark.parametrize("filters", [None, FILTERED, BYTE_FILTERS[0]],
                         ids=["no-filter", "filter", "byte-filter"])
def test_scanner_equals_orjson_path_on_raw_batches(filters):
    """The scanner over a joined batch changes nothing, lines it hands on included.

    Lines it must hand to the orjson path, sprinkled among clean ones: blank and
    whitespace-only lines, two documents on one line, a BOM, an array, a bad line;
    CRLF it decides itself.
    """
    import tomllib

    from etl.sample import iter_lines

    doc = tomllib.loads(COMMENTS_SCHEMA.read_text())
    if filters:
        doc["filter"] = filters
    schema = schema_from_dict(doc)
    lines = list(iter_lines(9000, seed=9, bad_rate=0))
    odd = [b"", b"  \r", b'{"id":"two","created_utc":1,"subreddit":"x"} {"id":"docs"}',
           b'{"id":"crlf","created_utc":1,"subreddit":"x"}\r', b"[1]",
           b'\xef\xbb\xbf{"id":"bom","created_utc":1,"subreddit":"x"}', b'{"id": nope}']
    for i, line in enumerate(odd):
        lines.insert(1000 + i * 1100, line)
    raw = b"\n".join(lines)
    fast, slow = Parser(schema), _orjson_only(schema)
    statuses = []
    scan = fast.plan.scan
    fast.plan.scan = lambda data: statuses.append(scan(data)[0]) or scan(data)
    for batch in (LineBatch(None, 5, 100, raw), LineBatch(lines, 5, 100)):
        a, b = _result_key(fast.parse_batch(batch)), _result_key(slow.parse_batch(batch))
        assert a[0].equals(b[0]) and a[1:] == b[1:]
        assert a[3] >= 2 and len(a[1]) >= 2  # blank lines counted, bad lines rejected
    assert len(statuses) == 2  # the scanner took both batches
    assert all(st.count(2) == len(odd) - 1 for st in statuses)  # and handed on all but CRLF
    if filters == BYTE_FILTERS[0]:
        assert all(st.count(0) > 1000 for st in statuses)  # it decided the filter itself


def test_many_unsure_lines_go_through_orjson_in_bounded_slices(monkeypatch):
    """A batch the scanner hands on almost whole: slices of SLICE_LINES, rows in order."""
    from etl import parse
    from etl.sample import iter_lines

    monkeypatch.setattr(parse, "SLICE_LINES", 50)
    schema = load_schema(COMMENTS_SCHEMA)
    lines = []
    for i, line in enumerate(iter_lines(400, seed=11, bad_rate=0.1)):
        # an escaped top-level key: the scanner cannot vouch for it
        lines.append(line.replace(b'"id":', b'"\\u0069d":', 1) if i % 3 else line)
    batch = LineBatch(None, 1, 0, b"\n".join(lines))
    fast, slow = Parser(schema), _orjson_only(schema)
    a, b = _result_key(fast.parse_batch(batch)), _result_key(slow.parse_batch(batch))
    assert a[0].equals(b[0]) and a[1:] == b[1:]
    assert a[0].num_rows > 200
