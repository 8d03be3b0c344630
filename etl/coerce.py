"""Pure value coercion: one JSON value in, one typed Python value out, or ``BadValue``.

Each ``to_<type>`` function takes a value decoded by orjson and returns what
Arrow stores for that type (timestamps as integer microseconds since the Unix
epoch, UTC; dates as days since the epoch) or ``None`` for null. A value the
type cannot take raises ``BadValue``, which becomes a ``type:<field>`` reject:
never a silent null.
"""

from __future__ import annotations

import datetime as dt
import html
import math
import re

import orjson

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1  # orjson reads integers in [INT64_MIN, UINT64_MAX] as int, others as float
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
INT_STRING = re.compile(r"\s*[+-]?\d+\s*")
UNIT_US = {"s": US_PER_S, "ms": 1_000, "us": 1}  # timestamp units: microseconds per unit


def as_orjson_reads(v):
    """An integer beyond what orjson keeps as int becomes the float orjson makes of it.

    msgspec (``Rows.decode_needed``, for lines orjson refuses) reads big integers
    exactly; this makes every path see the same value (nested ones included), so
    output never depends on the path.
    """
    t = type(v)
    if t is int:
        if INT64_MIN <= v <= UINT64_MAX:
            return v
        try:
            return float(v)
        except OverflowError:  # orjson refuses such a number outright
            raise BadValue(f"integer of {len(str(abs(v)))} digits is beyond the range of a "
                           "double") from None
    if t is list:
        return [as_orjson_reads(x) for x in v]
    if t is dict:
        return {k: as_orjson_reads(x) for k, x in v.items()}
    return v


class BadValue(Exception):
    """The value cannot be coerced to the field's type."""


def to_string(v):
    if type(v) is int:
        v = as_orjson_reads(v)
    t = type(v)
    if t is str or v is None:
        return v
    if t is bool:
        return "true" if v else "false"
    if t is int or t is float:
        return str(v)
    raise BadValue(f"expected a string, got {_kind(v)}")


def _int(v, lo: int, hi: int):
    t = type(v)
    if t is int:
        n = v
    elif v is None:
        return None
    elif t is float and v.is_integer() and v != INT64_MIN:
        # orjson parses integer literals below INT64_MIN as floats that round to
        # -2**63: refusing that float keeps them from passing as INT64_MIN
        n = int(v)
    elif t is str and INT_STRING.fullmatch(v):
        n = int(v)
    else:
        raise BadValue(f"expected an integer, got {_kind(v)}")
    if not lo <= n <= hi:
        raise BadValue(f"integer {n} is out of range")
    return n


def to_int64(v):
    return _int(v, INT64_MIN, INT64_MAX)


def to_int32(v):
    return _int(v, INT32_MIN, INT32_MAX)


def to_float64(v):
    t = type(v)
    if t is float or v is None:
        return v
    if t is int:
        return float(v)
    if t is str:
        try:
            f = float(v)
        except ValueError:
            raise BadValue(f"expected a number, got {_kind(v)}") from None
        if math.isfinite(f):
            return f
    raise BadValue(f"expected a number, got {_kind(v)}")


BOOL_STRINGS = {"true": True, "false": False, "1": True, "0": False}


def to_bool(v):
    t = type(v)
    if t is bool or v is None:
        return v
    if t is int and v in (0, 1):
        return bool(v)
    if t is str and v.strip().lower() in BOOL_STRINGS:
        return BOOL_STRINGS[v.strip().lower()]
    raise BadValue(f"expected a boolean, got {_kind(v)}")


def make_timestamp(unit: str = "s"):
    """A coercer for epoch numbers in ``unit`` (int, float, numeric string) or ISO-8601 text.

    JSON ``false`` is null (Reddit's ``edited``); naive ISO times are UTC.
    """
    scale = UNIT_US[unit]

    def to_timestamp(v):
        t = type(v)
        if t is int:
            us = v * scale
        elif t is float:
            if not math.isfinite(v):
                raise BadValue(f"expected a timestamp, got {_kind(v)}")
            us = round(v * scale)
        elif v is None or v is False:
            return None
        elif t is str:
            us = _timestamp_from_text(v, scale)
        else:
            raise BadValue(f"expected a timestamp, got {_kind(v)}")
        if not INT64_MIN <= us <= INT64_MAX:
            raise BadValue(f"timestamp {v!r} is out of range")
        return us

    return to_timestamp


def _timestamp_from_text(s: str, scale: int) -> int:
    s = s.strip()
    try:
        return int(s) * scale if INT_STRING.fullmatch(s) else round(float(s) * scale)
    except (ValueError, OverflowError):
        pass
    try:
        d = dt.datetime.fromisoformat(s)
    except ValueError:
        raise BadValue(f"expected a timestamp, got {_kind(s)}") from None
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.timezone.utc)
    delta = d - EPOCH
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def parse_instant(v) -> int:
    """Microseconds for a filter bound given as ISO date/time text or epoch seconds."""
    return make_timestamp("s")(v)


def to_date(v):
    """ISO dates, or anything a timestamp takes, as days since the epoch."""
    if type(v) is str and len(v.strip()) == 10:
        try:
            return (dt.date.fromisoformat(v.strip()) - EPOCH.date()).days
        except ValueError:
            pass
    us = make_timestamp("s")(v)
    return None if us is None else us // US_PER_DAY


def to_string_list(v):
    if v is None:
        return None
    if type(v) is not list:
        raise BadValue(f"expected a list, got {_kind(v)}")
    try:
        return [to_string(x) for x in v]
    except BadValue:
        raise BadValue("expected a list of scalars, got a nested value") from None


def to_json(v):
    if v is None:
        return None
    try:
        return orjson.dumps(v).decode()
    except orjson.JSONEncodeError:
        pass
    try:  # an integer beyond 64 bits (read by msgspec), written as orjson reads it
        return orjson.dumps(as_orjson_reads(v)).decode()
    except (orjson.JSONEncodeError, RecursionError):  # orjson reads 1024 levels, writes 254
        raise BadValue("value is nested too deeply to write as JSON text") from None


def make_cleaner(strip: bool, null_if: frozenset, unescape: bool, lower: bool):
    """String cleaning in a fixed order: strip, null_if, html_unescape, lower."""

    def clean(s):
        if s is None:
            return None
        if strip:
            s = s.strip()
        if s in null_if:
            return None
        if unescape and "&" in s:
            s = html.unescape(s)
        if lower:
            s = s.lower()
        return s

    return clean


def _kind(v) -> str:
    if v is None:
        return "null"
    try:
        text = orjson.dumps(v).decode() if not isinstance(v, str) else repr(v)
    except orjson.JSONEncodeError:  # nested deeper than orjson writes
        text = "nested too deeply to show"
    name = {bool: "boolean", int: "integer", float: "number", str: "string",
            list: "array", dict: "object"}.get(type(v), type(v).__name__)
    return f"{name} {text[:40]}{'...' if len(text) > 40 else ''}"
