"""Tests for etl.coerce: every coercer, with the values it takes and the ones it refuses."""

from __future__ import annotations

import datetime as dt

import pytest

from etl import coerce
from etl.coerce import (
    BadValue,
    make_cleaner,
    make_timestamp,
    parse_instant,
    to_bool,
    to_date,
    to_float64,
    to_int32,
    to_int64,
    to_json,
    to_string,
    to_string_list,
)

FEB_1_2024 = 1_706_745_600  # 2024-02-01T00:00:00Z, epoch seconds
US = 1_000_000
DAY_FEB_1_2024 = FEB_1_2024 // 86_400  # days since the epoch


def us_of(*args, **kw) -> int:
    """Microseconds since the epoch of a UTC datetime (the coercers' timestamp unit)."""
    delta = dt.datetime(*args, tzinfo=dt.timezone.utc, **kw) - coerce.EPOCH
    return delta // dt.timedelta(microseconds=1)


# ---------------------------------------------------------------- integers

INT_OK = [
    (0, 0),
    (42, 42),
    (-7, -7),
    (1.0, 1),
    (-3.0, -3),
    (1e3, 1000),
    ("42", 42),
    (" 7 ", 7),
    ("-5", -5),
    ("+5", 5),
    ("007", 7),
    (None, None),
]
INT_REFUSED = [
    1.5,
    -0.1,
    "4.2",
    "1e3",
    "",
    "  ",
    "abc",
    "1_000",
    "0x10",
    True,
    False,
    [1],
    {"a": 1},
]


@pytest.mark.parametrize("coercer", [to_int64, to_int32], ids=["int64", "int32"])
@pytest.mark.parametrize("value, expected", INT_OK, ids=repr)
def test_int_accepts(coercer, value, expected):
    got = coercer(value)
    assert got == expected
    assert got is None or type(got) is int


@pytest.mark.parametrize("coercer", [to_int64, to_int32], ids=["int64", "int32"])
@pytest.mark.parametrize("value", INT_REFUSED, ids=repr)
def test_int_refuses(coercer, value):
    with pytest.raises(BadValue):
        coercer(value)


@pytest.mark.parametrize("coercer, lo, hi", [
    (to_int32, -(2**31), 2**31 - 1),
    (to_int64, -(2**63), 2**63 - 1),
], ids=["int32", "int64"])
def test_int_range_limits(coercer, lo, hi):
    assert coercer(lo) == lo
    assert coercer(hi) == hi
    assert coercer(str(hi)) == hi
    for outside in (lo - 1, hi + 1, str(hi + 1), float(hi + 1) * 2):
        with pytest.raises(BadValue, match="out of range"):
            coercer(outside)


def test_int64_refuses_float_that_an_overflowing_integer_became():
    # orjson turns integer literals below int64's minimum into floats that round
    # to -2**63: accepting those would store a different number than the input.
    with pytest.raises(BadValue):
        to_int64(-9.223372036854775808e18)
    assert to_int32(float(-(2**31))) == -(2**31)


def test_int64_refuses_unsigned_64_bit_values():
    # orjson gives a Python int up to 2**64 - 1
    with pytest.raises(BadValue, match="out of range"):
        to_int64(2**64 - 1)


# ---------------------------------------------------------------- float64

@pytest.mark.parametrize("value, expected", [
    (1.5, 1.5),
    (-0.25, -0.25),
    (3, 3.0),
    (0, 0.0),
    ("2.5", 2.5),
    (" 3 ", 3.0),
    ("1e3", 1000.0),
    (2**64 - 1, float(2**64 - 1)),
    (None, None),
], ids=repr)
def test_float64_accepts(value, expected):
    got = to_float64(value)
    assert got == expected
    assert got is None or type(got) is float


@pytest.mark.parametrize("value", [
    True, False, "abc", "", "nan", "NaN", "inf", "-Infinity", [1.0], {"a": 1},
], ids=repr)
def test_float64_refuses(value):
    with pytest.raises(BadValue):
        to_float64(value)


# ---------------------------------------------------------------- bool

@pytest.mark.parametrize("value, expected", [
    (True, True),
    (False, False),
    (1, True),
    (0, False),
    ("true", True),
    ("False", False),
    (" TRUE ", True),
    ("1", True),
    ("0", False),
    (None, None),
], ids=repr)
def test_bool_accepts(value, expected):
    assert to_bool(value) is expected


@pytest.mark.parametrize("value", [2, -1, 1.0, 0.0, "yes", "no", "", "t", [True], {"a": True}],
                         ids=repr)
def test_bool_refuses(value):
    with pytest.raises(BadValue):
        to_bool(value)


# ---------------------------------------------------------------- timestamp

TIMESTAMP_OK = [
    (FEB_1_2024, FEB_1_2024 * US),
    (0, 0),
    (-1, -US),
    (1706745600.0, FEB_1_2024 * US),
    (1706745600.5, FEB_1_2024 * US + 500_000),
    (1.000001, 1_000_001),
    (-1.5, -1_500_000),
    ("1706745600", FEB_1_2024 * US),
    (" 1706745600 ", FEB_1_2024 * US),
    ("1706745600.25", FEB_1_2024 * US + 250_000),
    ("2024-02-01T00:00:00Z", FEB_1_2024 * US),
    ("2024-02-01T00:00:00+00:00", FEB_1_2024 * US),
    ("2024-02-01T01:00:00+01:00", FEB_1_2024 * US),
    ("2024-01-31T19:00:00-05:00", FEB_1_2024 * US),
    ("2024-02-01T00:00:00", FEB_1_2024 * US),  # naive: UTC
    ("2024-02-01 00:00:00", FEB_1_2024 * US),
    ("2024-02-01T00:00:00.123456Z", FEB_1_2024 * US + 123_456),
    ("2024-02-01", FEB_1_2024 * US),
    ("1969-12-31T23:59:59Z", -US),
    (False, None),  # Reddit's "edited": false
    (None, None),
]


@pytest.mark.parametrize("value, expected", TIMESTAMP_OK, ids=repr)
def test_timestamp_accepts(value, expected):
    got = make_timestamp()(value)
    assert got == expected
    assert got is None or type(got) is int


@pytest.mark.parametrize("value", [
    True, "not-a-date", "", "  ", "2024-13-01", "2024-02-30T00:00:00Z", "nan", "inf",
    float("nan"), float("inf"), 1e20, "1e20", [FEB_1_2024], {"t": FEB_1_2024},
], ids=repr)
def test_timestamp_refuses(value):
    with pytest.raises(BadValue):
        make_timestamp()(value)


@pytest.mark.parametrize("unit, value, expected", [
    ("s", FEB_1_2024, FEB_1_2024 * US),
    ("ms", 1_706_745_600_123, FEB_1_2024 * US + 123_000),
    ("ms", "1706745600123", FEB_1_2024 * US + 123_000),
    ("ms", 1_706_745_600_123.5, FEB_1_2024 * US + 123_500),
    ("ms", "2024-02-01T00:00:00Z", FEB_1_2024 * US),  # ISO text ignores the unit
    ("us", 1_706_745_600_000_001, FEB_1_2024 * US + 1),
    ("us", "2024-02-01", FEB_1_2024 * US),
], ids=repr)
def test_timestamp_units(unit, value, expected):
    assert make_timestamp(unit)(value) == expected


def test_timestamp_ms_keeps_its_own_range_limit():
    with pytest.raises(BadValue, match="out of range"):
        make_timestamp("ms")(2**62)


@pytest.mark.parametrize("value, expected", [
    ("2024-02-01", FEB_1_2024 * US),
    ("2024-02-01T12:00:00Z", FEB_1_2024 * US + 12 * 3600 * US),
    (FEB_1_2024, FEB_1_2024 * US),
], ids=repr)
def test_parse_instant(value, expected):
    assert parse_instant(value) == expected


def test_iso_timestamps_agree_with_datetime():
    assert make_timestamp()("2005-12-12T05:26:28Z") == us_of(2005, 12, 12, 5, 26, 28)
    assert make_timestamp()("0001-01-01T00:00:00Z") == us_of(1, 1, 1)


# ---------------------------------------------------------------- date

@pytest.mark.parametrize("value, expected", [
    ("2024-02-01", DAY_FEB_1_2024),
    (" 2024-02-01 ", DAY_FEB_1_2024),
    ("1970-01-01", 0),
    ("1969-12-31", -1),
    ("2024-02-01T23:59:59Z", DAY_FEB_1_2024),
    ("2024-02-01T23:30:00-01:00", DAY_FEB_1_2024 + 1),
    (FEB_1_2024, DAY_FEB_1_2024),
    (FEB_1_2024 - 1, DAY_FEB_1_2024 - 1),
    (-1, -1),  # floor, not truncation toward zero
    ("1706745600", DAY_FEB_1_2024),
    (False, None),
    (None, None),
], ids=repr)
def test_date_accepts(value, expected):
    assert to_date(value) == expected


@pytest.mark.parametrize("value", [True, "2024-02-30", "not-a-date", "", [1], {"d": 1}],
                         ids=repr)
def test_date_refuses(value):
    with pytest.raises(BadValue):
        to_date(value)


# ---------------------------------------------------------------- string, list<string>, json

@pytest.mark.parametrize("value, expected", [
    ("a", "a"),
    ("", ""),
    (" x ", " x "),  # no cleaning unless asked
    (1, "1"),
    (-2.5, "-2.5"),
    (True, "true"),
    (False, "false"),
    (None, None),
], ids=repr)
def test_string_accepts(value, expected):
    assert to_string(value) == expected


@pytest.mark.parametrize("value", [[], ["a"], {}, {"a": "b"}], ids=repr)
def test_string_refuses(value):
    with pytest.raises(BadValue):
        to_string(value)


@pytest.mark.parametrize("value, expected", [
    (["a", "b"], ["a", "b"]),
    ([], []),
    ([1, 2.5, True, None], ["1", "2.5", "true", None]),
    (None, None),
], ids=repr)
def test_string_list_accepts(value, expected):
    assert to_string_list(value) == expected


@pytest.mark.parametrize("value", ["a", "", 1, True, {"a": "b"}, [["a"]], [{"a": 1}]], ids=repr)
def test_string_list_refuses(value):
    with pytest.raises(BadValue):
        to_string_list(value)


@pytest.mark.parametrize("value, expected", [
    ({"a": [1, 2], "b": {"c": None}}, '{"a":[1,2],"b":{"c":null}}'),
    ({}, "{}"),
    ([], "[]"),
    ([1, "x", False], '[1,"x",false]'),
    ("text", '"text"'),
    ("é\u2028", '"é\u2028"'),
    (3, "3"),
    (1.5, "1.5"),
    (True, "true"),
    (None, None),
], ids=repr)
def test_json_serializes_any_value(value, expected):
    assert to_json(value) == expected


# ---------------------------------------------------------------- string cleaning

def cleaner(strip=False, null_if=(), unescape=False, lower=False):
    return make_cleaner(strip, frozenset(null_if), unescape, lower)


@pytest.mark.parametrize("options, value, expected", [
    ({}, " A&amp;B ", " A&amp;B "),
    ({}, None, None),
    ({"strip": True}, " \t x \n", "x"),
    ({"lower": True}, "AbC", "abc"),
    ({"unescape": True}, "a &amp; b &lt;3 &#39;q&#39;", "a & b <3 'q'"),
    ({"unescape": True}, "no entities", "no entities"),
    ({"null_if": ["[deleted]", "[removed]"]}, "[deleted]", None),
    ({"null_if": ["[deleted]", "[removed]"]}, "[removed]", None),
    ({"null_if": ["[deleted]"]}, "deleted", "deleted"),
    ({"null_if": [""]}, "", None),
    # strip runs before null_if
    ({"strip": True, "null_if": ["[deleted]"]}, "  [deleted] ", None),
    ({"null_if": ["[deleted]"]}, "  [deleted] ", "  [deleted] "),
    ({"strip": True, "null_if": [""]}, "   ", None),
    # null_if runs before html_unescape: only the raw text is compared
    ({"null_if": ["[deleted]"], "unescape": True}, "&#91;deleted&#93;", "[deleted]"),
    ({"null_if": ["a&b"], "unescape": True}, "a&amp;b", "a&b"),
    # null_if runs before lower: the comparison is case-sensitive
    ({"null_if": ["[deleted]"], "lower": True}, "[DELETED]", "[deleted]"),
    # strip runs before html_unescape: an escaped no-break space survives
    ({"strip": True, "unescape": True}, " &nbsp;x ", "\xa0x"),
    # html_unescape runs before lower: &Dagger; is ‡, &dagger; would be †
    ({"unescape": True, "lower": True}, "&Dagger;", "‡"),
    ({"unescape": True, "lower": True}, "&AMP; B", "& b"),
], ids=repr)
def test_cleaning_order(options, value, expected):
    assert cleaner(**options)(value) == expected


def nested(depth: int) -> list:
    """A list nested ``depth`` levels, built as orjson.loads would return it."""
    v: list = []
    for _ in range(depth - 1):
        v = [v]
    return v


def test_json_refuses_values_nested_deeper_than_orjson_writes():
    # orjson reads up to 1024 levels but writes at most 254
    assert to_json(nested(254)) == "[" * 254 + "]" * 254
    with pytest.raises(BadValue, match="nested too deeply"):
        to_json(nested(255))


@pytest.mark.parametrize("coercer", [to_string, to_int64, to_float64, to_bool, make_timestamp(),
                                     to_date, to_string_list],
                         ids=lambda c: c.__name__)
def test_deeply_nested_values_are_refused_not_crashed(coercer):
    with pytest.raises(BadValue):
        coercer(nested(500))


@pytest.mark.parametrize("unit", ["s", "ms", "us"])
def test_mixed_timestamp_column_equals_value_by_value(unit):
    """ints, floats and epoch text in one column (Pushshift's created_utc): the columnar
    path gives exactly what value-by-value coercion gives, or steps aside for it."""
    import random

    import pyarrow as pa

    from etl.columns import _elementwise, _mixed_timestamp, _slow, convert_column
    from etl.schema import Field

    f = Field("t", "timestamp", ("t",), unit=unit)
    pool = [0, 1, -1, 1420070400, 2**40, 2**62, 2**63, 1.5, 2.5, -0.5, 0.5e-6, 1420070400.0,
            9.2e18, float("nan"), "1420070400", "0", "007", "123456789012345678",
            "1234567890123456789", " 12", "+3", "-4", "1.5", "2015-01-01", "x", "", "\u0663",
            None, True, False]
    rng = random.Random(5)
    fast_taken = 0
    for _ in range(400):
        values = rng.choices(pool[:3] + pool[7:9] + pool[14:17] + [None], k=rng.randint(1, 9)) \
            if rng.random() < 0.5 else rng.choices(pool, k=rng.randint(1, 9))
        arr, bad = convert_column(values, f)
        out, want_bad = _slow(values, _elementwise(f))
        assert arr.equals(pa.array(out, f.arrow_type)), values
        assert bad == want_bad, values
        types = set(map(type, values))
        if str in types and types <= {int, float, str, type(None)}:
            try:
                assert _mixed_timestamp(values, types, f).equals(arr)
                fast_taken += 1
            except (pa.ArrowInvalid, OverflowError):
                pass  # the columnar path stepped aside: value by value did it
    assert fast_taken > 50
