"""Pure column functions: Python values of one field -> typed, cleaned Arrow; filter masks.

A column converts in C when its Python types allow it exactly (Arrow's own
conversion), else value by value through ``etl.coerce``; cleaning and filters run
in ``pyarrow.compute``.
"""

from __future__ import annotations

import html
import itertools

import pyarrow as pa
import pyarrow.compute as pc

from etl import coerce
from etl.schema import Field, Filter

NONE = type(None)
# Python types a column may hold for Arrow's own C conversion to be exact
FAST_TYPES = {
    "string": {str, NONE}, "int64": {int, NONE}, "int32": {int, NONE},
    "float64": {float, int, NONE}, "bool": {bool, NONE},
}


def _elementwise(f: Field):
    """The per-value coercion function for one field (used off the fast path)."""
    if f.type == "timestamp":
        return coerce.make_timestamp(f.unit)
    return {"string": coerce.to_string, "int64": coerce.to_int64, "int32": coerce.to_int32,
            "float64": coerce.to_float64, "bool": coerce.to_bool, "date": coerce.to_date,
            "list<string>": coerce.to_string_list, "json": coerce.to_json}[f.type]


def _slow(values: list, conv) -> tuple[list, dict[int, str]]:
    out, bad = [], {}
    for j, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        try:
            if type(v) is int and not coerce.INT64_MIN <= v <= coerce.UINT64_MAX:
                v = coerce.as_orjson_reads(v)  # as orjson reads it: both parse paths agree
            out.append(conv(v))
        except coerce.BadValue as exc:
            out.append(None)
            bad[j] = str(exc)
    return out, bad


def convert_column(values: list, f: Field) -> tuple[pa.Array, dict[int, str]]:
    """Python values of one field -> (Arrow array, {position: error} for bad values)."""
    types = set(map(type, values))
    try:
        if types <= FAST_TYPES.get(f.type, set()):
            return pa.array(values, type=f.arrow_type), {}
        if f.type == "timestamp" and (types <= {int, NONE} or types <= {float, NONE}):
            return _fast_timestamp(values, types, f), {}
        if f.type == "timestamp" and types <= {int, float, str, NONE}:
            return _mixed_timestamp(values, types, f), {}
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass  # out of range somewhere: the slow path names the value
    out, bad = _slow(values, _elementwise(f))
    return pa.array(out, type=f.arrow_type), bad


def _fast_timestamp(values: list, types: set, f: Field) -> pa.Array:
    scale = coerce.UNIT_US[f.unit]
    if float in types:
        us = pc.cast(pc.round(pc.multiply(pa.array(values, pa.float64()), float(scale))),
                     pa.int64())
    else:
        us = pc.multiply_checked(pa.array(values, pa.int64()), scale)
    return us.cast(f.arrow_type)


DIGITS = r"^[0-9]{1,18}$"  # epoch text Arrow reads exactly as int() does (no sign, space)


def _mixed_timestamp(values: list, types: set, f: Field) -> pa.Array:
    """Epoch ints, floats and digit strings mixed in one column (Pushshift's created_utc).

    Each kind is converted apart, as ``coerce.make_timestamp`` would, and put back in
    place; anything else (signs, spaces, ISO text, out of range) raises ArrowInvalid
    and the caller goes value by value.
    """
    out = pa.nulls(len(values), f.arrow_type)
    kinds = list(map(type, values))
    for kind in (int, float, str):
        if kind not in types:
            continue
        where = [k is kind for k in kinds]
        part = list(itertools.compress(values, where))
        if kind is str:
            text = pa.array(part, pa.string())
            if not pc.all(pc.match_substring_regex(text, DIGITS)).as_py():
                raise pa.ArrowInvalid("epoch text that is not plain digits")
            us = pc.multiply_checked(pc.cast(text, pa.int64()), coerce.UNIT_US[f.unit])
            us = us.cast(f.arrow_type)
        else:
            us = _fast_timestamp(part, {kind}, f)
        out = pc.replace_with_mask(out, pa.array(where, pa.bool_()), us)
    return out


def clean_column(arr: pa.Array, f: Field) -> pa.Array:
    """String cleaning in a fixed order: strip, null_if, html_unescape, lower."""
    if f.strip:
        arr = pc.utf8_trim_whitespace(arr)
    if f.null_if:
        arr = pc.if_else(pc.is_in(arr, value_set=pa.array(sorted(f.null_if))),
                         pa.scalar(None, pa.string()), arr)
    if f.html_unescape:
        arr = pa.array([html.unescape(s) if s and "&" in s else s for s in arr.to_pylist()],
                       type=pa.string())
    if f.lower:
        arr = pc.utf8_lower(arr)
    return arr


def _scalar(value, f: Field):
    return pa.scalar(value, type=f.arrow_type) if f.type in ("timestamp", "date") else value


def filter_mask(arr: pa.Array, flt: Filter, f: Field) -> pa.Array:
    """Boolean mask of rows passing one filter. Null fails every operator but ne and not_in."""
    op, x = flt.op, flt.value
    if op == "not_null":
        return pc.is_valid(arr)
    if op == "regex":
        return pa.array([v is not None and x.search(v if isinstance(v, str) else str(v))
                         is not None for v in arr.to_pylist()], pa.bool_())
    if op in ("in", "not_in"):
        hit = pc.is_in(arr, value_set=pa.array(x, type=f.arrow_type))
        return pc.invert(hit) if op == "not_in" else hit
    if op == "between":
        lo, hi = (_scalar(v, f) for v in x)
        mask = pc.and_(pc.greater_equal(arr, lo), pc.less_equal(arr, hi))
    else:
        fn = {"eq": pc.equal, "ne": pc.not_equal, "ge": pc.greater_equal, "gt": pc.greater,
              "le": pc.less_equal, "lt": pc.less}[op]
        mask = fn(arr, _scalar(x, f))
    return pc.fill_null(mask, op == "ne")
