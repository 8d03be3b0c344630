"""etl._scan, the C line scanner: what it is sure of, orjson agrees with, value for value.

The scanner may hand any line on (status 2, "unsure"); it must never call a line
valid that orjson refuses, nor read a value orjson would read differently, nor
decide a filter the Python path would decide otherwise. These tests check that
promise on the JSONTestSuite cases, on hostile hand-made lines and on random
mutations of realistic lines. tests/test_parse.py compares whole batches.
"""

from __future__ import annotations

import functools
import itertools
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pytest

from etl import _scan
from etl.parse import _ScanPlan
from etl.sample import iter_lines
from tests.conftest import is_utf8

SUITE = Path(__file__).parent / "data" / "jsontestsuite" / "test_parsing"
FILTERED, KEPT, UNSURE = 0, 1, 2


def scan(lines: list[bytes], keys=(b"k",), filter_key=-1, values=(), negate=False,
         strings=b""):
    """The scanner's statuses, line starts and kept values (Python objects) per key.

    ``strings``: one byte per key, 1 for an Arrow string column (read back through the
    parser's own ``_ScanPlan.columns``, as the parser does).
    """
    status, starts, arrays = _scan.scan(b"\n".join(lines), tuple(keys), filter_key,
                                        tuple(values), negate, strings)
    plan = SimpleNamespace(keys=[k.decode() for k in keys], epochs={})
    cols = _ScanPlan.columns(plan, arrays, list(status).count(KEPT))
    kept = [v.to_pylist() if isinstance(v, pa.Array) else v for v in cols.values()]
    return list(status), np.frombuffer(starts, np.int64).tolist(), kept


@functools.lru_cache
def _row_type(keys):
    return msgspec.defstruct("Row", [(f"k{i}", Any, None) for i in range(len(keys))],
                             rename={f"k{i}": k.decode() for i, k in enumerate(keys)})


def python_path_reads(line: bytes, keys):
    """What the orjson path makes of a line: orjson's dict, or (a number beyond double
    range in a value never read: the documented rule) msgspec's needed keys, of a line
    that is UTF-8 throughout (as ``etl.rows.Rows.decode_needed`` checks); else None."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    row = _row_type(keys)
    try:
        got = msgspec.json.decode(line, type=row)
        line.decode()
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError):
        return None
    return {k.decode(): getattr(got, f"k{i}") for i, k in enumerate(keys)
            if getattr(got, f"k{i}") is not None}


def check_sure_means_orjson_agrees(lines: list[bytes], keys=(b"k",), filter_key=-1,
                                   values=(), negate=False, strings=b"") -> list[int]:
    """The core promise, line by line; returns the statuses."""
    status, starts, kept = scan(lines, keys, filter_key, values, negate, strings)
    assert len(status) == len(lines)
    assert starts == list(itertools.accumulate((len(x) + 1 for x in lines[:-1]), initial=0))
    row = 0
    for line, st in zip(lines, status):
        if st == UNSURE:
            continue
        obj = python_path_reads(line, keys)
        assert type(obj) is dict, f"scanner sure of a line orjson refuses: {line[:200]!r}"
        names = [k.decode() for k in keys]
        if filter_key >= 0:
            value = obj[names[filter_key]]
            assert type(value) is str
            assert ((value.encode() in values) != negate) == (st == KEPT), line[:200]
        if st == KEPT:
            for i, name in enumerate(names):
                assert kept[i][row] == obj.get(name), (name, line[:200])
            row += 1
    assert row == len(kept[0])
    return status


def suite_docs() -> list[tuple[str, bytes]]:
    return [(p.name, p.read_bytes()) for p in sorted(SUITE.glob("*.json"))
            if b"\n" not in p.read_bytes()]


def test_suite_documents_in_every_position():
    docs = suite_docs()
    assert len(docs) > 250
    sure_valid = invalid_utf8 = 0
    for name, doc in docs:
        lines = [doc, b'{"k":' + doc + b"}", b'{"other":' + doc + b',"k":1}',
                 b'{"k":[' + doc + b"]}", b'{"a":{"k":' + doc + b"}}"]
        if not is_utf8(doc):
            invalid_utf8 += 1
        status = check_sure_means_orjson_agrees(lines)
        assert check_sure_means_orjson_agrees(lines, strings=b"\1") == status  # Arrow strings
        if name.startswith("n_"):
            assert status[1] == UNSURE, name  # refused when wrapped too
        if name.startswith("y_") and status[1] != UNSURE:
            sure_valid += 1
    assert sure_valid > 70  # most valid documents are decided without the Python path
    assert invalid_utf8 >= 10  # the suite's invalid UTF-8 cases went through the scanner too


@pytest.mark.parametrize("line, status", [
    (b'{"k":1}', KEPT), (b'{"k":1} \t\r', KEPT), (b'{}', KEPT), (b'{ "k" : [ 1 , 2 ] }', KEPT),
    (b"", UNSURE), (b"  ", UNSURE), (b" {}", UNSURE), (b"\xef\xbb\xbf{}", UNSURE),
    (b"[1]", UNSURE), (b"1", UNSURE), (b'{"k":1}{}', UNSURE), (b'{"k":1,"k":2}', UNSURE),
    (b'{"\\u006b":1}', UNSURE),  # an escaped key might spell a needed one
    (b'{"x\\n":1}', UNSURE), (b'{"o":{"\\u006b":1}}', KEPT),  # escaped keys deeper are fine
    (b'{"k":1e5}', UNSURE), (b'{"x":1e5}', KEPT), (b'{"k":"1e5"}', KEPT),  # risky numbers
    (b'{"k":[1E-2]}', UNSURE), (b'{"k":' + b"9" * 301 + b"}", UNSURE),
    (b'{"k":' + b"9" * 40 + b"}", KEPT),  # beyond 64 bits: orjson reads a double, as the dicts
    (b'{"k":"\\ud83d\\ude00"}', KEPT), (b'{"k":"\\ud83d"}', UNSURE), (b'{"k":"\\ude00"}', UNSURE),
    (b'{"k":"\\ud83dx"}', UNSURE), (b'{"k":"a\x01"}', UNSURE), (b'{"k":"\\x"}', UNSURE),
    (b'{"k":' + b"[" * 63 + b"]" * 63 + b"}", KEPT),
    (b'{"k":' + b"[" * 64 + b"]" * 64 + b"}", UNSURE),  # deeper than the scanner goes
    (b'{"k":01}', UNSURE), (b'{"k":-}', UNSURE), (b'{"k":1.}', UNSURE), (b'{"k":.5}', UNSURE),
    (b'{"k":tru}', UNSURE), (b'{"k":nul}', UNSURE), (b'{"k":NaN}', UNSURE),
    (b'{"k":1,}', UNSURE), (b'{,}', UNSURE), (b'{"k"}', UNSURE), (b'{"k":[1,]}', UNSURE),
    (b'{"k":"unterminated}', UNSURE), (b'{"k":1', UNSURE), (b'{"k":1}\x00', UNSURE),
])
def test_hand_made_lines(line, status):
    assert check_sure_means_orjson_agrees([line, b'{"k":"next"}'])[0] == status


def test_filter_on_raw_bytes():
    lines = [b'{"s":"news","k":1}', b'{"s":"nfl","k":2}', b'{"k":3}', b'{"s":null}',
             b'{"s":"ne\\u0077s"}', "{\"s\":\"é\"}".encode(), b'{"s":"news "}', b'{"s":5}',
             b'{"s":"news","s":"x"}', b'{"s":"NEWS"}']
    values = (b"news", "é".encode())
    for negate in (False, True):
        status = check_sure_means_orjson_agrees(lines, (b"s", b"k"), 0, values, negate)
        a, b = (KEPT, FILTERED) if not negate else (FILTERED, KEPT)
        assert status == [a, b, UNSURE, UNSURE, UNSURE, a, b, UNSURE, UNSURE, b]


def _mutate(line: bytes, rng: random.Random) -> bytes:
    alphabet = b'{}[]:,"\\ 0123456789.eE+-tfnulrsaxu\t\r/\x80\xa0\xbf\xc3\xe2\xed\xf0\xf4\xff'
    b = bytearray(line)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(b) + 1)
        op = rng.random()
        if op < 0.4 and i < len(b):
            del b[i]
        elif op < 0.8:
            b.insert(i, rng.choice(alphabet))
        elif i < len(b):
            b[i] = rng.choice(alphabet)
    return bytes(b)


@pytest.mark.parametrize("seed", range(4))
def test_random_mutations(seed):
    """Random edits of realistic lines: whatever the scanner is sure of, orjson agrees."""
    rng = random.Random(seed)
    base = [line for line in iter_lines(600, seed=seed, bad_rate=0.1)]
    lines = [_mutate(rng.choice(base), rng) for _ in range(6000)] + base
    assert sum(not is_utf8(line) for line in lines) > 300  # invalid UTF-8 among the rest
    keys = (b"subreddit", b"id", b"created_utc", b"score", b"body", b"edited", b"gildings")
    names = {b"AskReddit", b"funny", b"news", b"pics"}
    for filter_key, strings in ((-1, b""), (0, b""), (-1, b"\1" * len(keys)),
                                (0, b"\1\1\0\0\1\0\1")):
        status = check_sure_means_orjson_agrees(lines, keys, filter_key, tuple(names), False,
                                                strings)
        assert status.count(UNSURE) > 500 and status.count(UNSURE) < len(lines) - 1000


def _utf8_cases() -> list[bytes]:
    """Every 1- and 2-byte sequence, and 3- and 4-byte ones over every lead byte with
    continuation bytes at and around the edges of their ranges (overlong forms,
    surrogates, past U+10FFFF, truncated sequences); never a quote, backslash or
    control byte, which mean something else in a JSON string."""
    edges = [0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xFF]
    cases = [bytes([a]) for a in range(0x20, 0x100)]
    cases += [bytes([a, b]) for a in range(0x80, 0x100) for b in range(0x20, 0x100)]
    cases += [bytes([a, b, c]) for a in range(0xE0, 0x100) for b in edges for c in edges]
    cases += [bytes([a, b, c, d]) for a in range(0xF0, 0x100) for b in edges
              for c in (0x80, 0xBF, 0xC0) for d in (0x7F, 0x80, 0xBF, 0xC0)]
    return [c for c in cases if not any(x in c for x in b'"\\')]


@pytest.mark.parametrize("where", [b'{"k":"a%sb"}', b'{"x%s":1,"k":"x"}', b'{"k":["%s"]}',
                                   b'{"o":{"k%s":1},"k":1}',
                                   b'{"k":"%s________________________________"}',
                                   b'{"k":"________________________________%s"}'])
def test_strings_are_well_formed_utf8(where):
    """The scanner is sure of a line only when all of it is UTF-8 (Python's strict
    decoder decides), wherever the bytes sit: a value read, a key, a nested string, at a
    16-byte boundary or not (its SIMD search), in a string column or a JSON array."""
    cases = _utf8_cases()
    assert len(cases) > 30000
    lines = [where.replace(b"%s", c) for c in cases]
    for strings in (b"", b"\1"):
        status, _, kept = scan(lines, strings=strings)
        for line, st in zip(lines, status):
            assert (st == KEPT) == is_utf8(line), line
        want = [orjson.loads(line).get("k") for line in lines if is_utf8(line)]
        assert kept[0] == want
    assert sum(map(is_utf8, lines)) > 1000


def test_strings_near_the_batch_end_are_well_formed_utf8():
    """The last 16 bytes of a batch take the scanner's byte-by-byte search: the same
    verdicts there (each line scanned alone, so its string sits in those bytes)."""
    cases = [c for c in _utf8_cases() if len(c) > 2 or c[0] in (0xC2, 0xDF, 0xE0, 0xED)]
    assert len(cases) > 2000
    for c in cases:
        line = b'{"k":"' + c + b'"}'
        status, _, _ = _scan.scan(line, (b"k",), -1, (), False)
        assert (status[0] == KEPT) == is_utf8(line), line


def test_memoryview_and_empty_input():
    data = b'{"k":1}\n{"k":2}'
    status, starts, arrays = _scan.scan(memoryview(data)[8:], (b"k",), -1, (), False)
    assert list(status) == [KEPT] and orjson.loads(arrays[0]) == [2]
    status, starts, arrays = _scan.scan(b"", (b"k",), -1, (), False)
    assert list(status) == [UNSURE] and arrays == (b"[]",)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="keys"):
        _scan.scan(b"{}", (), -1, (), False)
    with pytest.raises(ValueError, match="keys"):
        _scan.scan(b"{}", (b"k",), 1, (), False)
    with pytest.raises(TypeError):
        _scan.scan(b"{}", ("k",), -1, (), False)
    with pytest.raises(ValueError, match="differ"):
        _scan.scan(b"{}", (b"k", b"k"), -1, (), False)
    with pytest.raises(ValueError, match="keys"):
        _scan.scan(b"{}", tuple(b"k%d" % i for i in range(1025)), -1, (), False)


def test_many_keys():
    """Schemas inferred from real dumps read a hundred keys or more."""
    keys = tuple(b"key%d" % i for i in range(1024))
    line = b"{" + b",".join(b'"key%d":%d' % (i, i) for i in range(0, 1024, 3)) + b',"x":1}'
    status, _, arrays = _scan.scan(line, keys, -1, (), False)
    assert list(status) == [KEPT]
    assert [orjson.loads(a)[0] for a in arrays] == [i if i % 3 == 0 else None
                                                    for i in range(1024)]


def test_keys_told_apart_by_length_and_first_byte_or_by_hash():
    """The scanner sorts keys by length and first byte before any hash: keys that share
    both, keys of 63 bytes or more, the empty key, a needed key past the 254th, and
    keys one byte away from a needed one must all read as orjson reads them."""
    needed = [b"score", b"scare", b"", b"a" * 63, b"a" * 70, b"a" * 71, b"b" * 100,
              *(b"pad%d" % i for i in range(260)), b"zq"]
    seen = [b"score", b"scorf", b"scare", b"sxore", b"", b"a" * 63, b"a" * 64, b"a" * 70,
            b"a" * 71, b"b" * 100, b"b" * 99, b"pad259", b"pad260", b"zq", b"zr", b"z"]
    lines = [b"{" + b",".join(b'"%s":%d' % (k, i) for i, k in enumerate(ks)) + b"}"
             for ks in (seen, seen[::-1], seen[::2], seen[1::3])]
    status, _, arrays = _scan.scan(b"\n".join(lines), tuple(needed), -1, (), False)
    assert status == bytes([KEPT] * len(lines))
    got = [orjson.loads(a) for a in arrays]
    for row, line in enumerate(lines):
        want = orjson.loads(line)
        assert [col[row] for col in got] == [want.get(k.decode()) for k in needed]


ESCAPES = [b'"plain"', b'""', b'"\\"\\\\\\/\\b\\f\\n\\r\\t"', b'"\\u0000\\u001f\\u00e9\\u20ac"',
           b'"\\ud83d\\ude00 and \\uD834\\uDD1E"', "\"é€😀 raw\"".encode(), b'"a\\u0041b"',
           b"null", b"1", b"-0.5", b"true", b"false", b"[1,\"x\"]", b'{"a":"\\n"}', b"{}", b"[]"]


def test_arrow_strings_hold_what_orjson_reads():
    """Every kind of value under a key read as a string column, kept row by row."""
    lines = [b'{"k":' + v + b',"n":' + str(i).encode() + b"}" for i, v in enumerate(ESCAPES)]
    lines += [b'{"n":99}', b'{"k":"after the absent one"}']
    status, _, (ks, ns) = scan(lines, (b"k", b"n"), strings=b"\1\0")
    assert status == [KEPT] * len(lines)
    expected = [orjson.loads(line).get("k") for line in lines]
    assert ks == expected and ns == [orjson.loads(line).get("n") for line in lines]
    status, _, arrays = _scan.scan(b"\n".join(lines), (b"k", b"n"), -1, (), False, b"\1\0")
    data, offsets, valid, nulls, other_rows, others = arrays[0]
    assert nulls == 10 and np.frombuffer(other_rows, np.int64).tolist() == [8, 9, 10, 11, 12,
                                                                            13, 14, 15]


def test_arrow_strings_without_others_are_one_arrow_array():
    lines = [b'{"k":"a"}', b'{"k":null}', b'{}', b'{"k":"\\u00e9"}'] * 3
    plan = SimpleNamespace(keys=["k"], epochs={})
    _, _, arrays = _scan.scan(b"\n".join(lines), (b"k",), -1, (), False, b"\1")
    col = _ScanPlan.columns(plan, arrays, len(lines))["k"]
    assert isinstance(col, pa.StringArray)
    col.validate(full=True)
    assert col.to_pylist() == ["a", None, None, "é"] * 3 and col.null_count == 6


# ---------------------------------------------------------------- epoch timestamps

EPOCH_TOKENS = [
    b"0", b"-0", b"1420070400", b"-1420070400", b"999999999999999999", b"-999999999999999999",
    b"1000000000000000000", b"9223372036854", b"9223372036855", b"9223372036854775807",
    b"1420070400.5", b"1420070400.25", b"0.5", b"1.5", b"2.5", b"-2.5", b"0.0000005",
    b"0.0000015", b"1.0000005", b"1420070400.1234567", b"9223372036854.775807", b"1e5",
    b"1.5E3", b'"1420070400"', b'"0001"', b'"999999999999999999"', b'"1000000000000000000"',
    b'""', b'" 12"', b'"-12"', b'"12.5"', b'"2015-01-01"', b'"12\\u0030"', b"null",
    b"false", b"true", b"[]", b'{"a":1}', b"0." + b"1" * 70,
]


def _reference(token: bytes, unit: str):
    """make_timestamp's answer for one token: microseconds, None, or 'error'."""
    from etl import coerce

    try:
        return coerce.make_timestamp(unit)(orjson.loads(token))
    except (coerce.BadValue, orjson.JSONDecodeError):
        return "error"


def _epoch_values(tokens: list[bytes], unit: str):
    from etl import coerce

    got = _scan.epoch_us(b"[" + b",".join(tokens) + b"]", coerce.UNIT_US[unit])
    if got is None:
        return None
    values, valid, nulls = got
    arr = pa.Array.from_buffers(pa.int64(), len(tokens),
                                [valid and pa.py_buffer(valid), pa.py_buffer(values)],
                                null_count=nulls)
    return arr.to_pylist()


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_epoch_tokens_read_as_make_timestamp_reads_them_or_are_declined(unit):
    """Each token alone: a value equal to the reference's, or None (declined: the Python
    conversion takes the whole column), never a different value."""
    decided = 0
    for token in EPOCH_TOKENS:
        got = _epoch_values([token], unit)
        want = _reference(token, unit)
        if got is not None:
            assert got == [want], (token, unit)
            decided += 1
        elif token not in (b"1e5", b"1.5E3", b"0." + b"1" * 70):  # exact, but left to Python
            assert want == "error" or token.startswith(b'"') or len(token) > 18, (token, unit)
    assert decided >= 15


def test_epoch_columns_mix_kinds_and_decline_as_a_whole():
    rng = random.Random(7)
    plain = [b"1420070400", b"1420070400.5", b'"1420070401"', b"null", b"false", b"-5",
             b"1420070399.9999995"]
    for _ in range(300):
        tokens = [rng.choice(plain) for _ in range(rng.randrange(1, 40))]
        assert _epoch_values(tokens, "s") == [_reference(t, "s") for t in tokens]
    assert _epoch_values(plain + [b"true"], "s") is None
    assert _epoch_values(plain + [b'"2015-01-01T00:00:00"'], "s") is None
    assert _epoch_values([], "s") == []
    for broken in (b"", b"[", b"[1,", b"[1]x", b"[1 ,2]", b"1"):
        assert _scan.epoch_us(broken, 1) is None
