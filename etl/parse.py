"""Pure: a batch of raw lines -> one typed Arrow table plus the rejected lines.

Per line only the unavoidable work happens in Python: orjson parses it and
non-objects are set aside (``not_object``). Everything else is columnar: each
field's values are gathered with one comprehension, converted to Arrow in C
when their Python types allow it (else value by value through ``etl.coerce``),
cleaned and filtered with ``pyarrow.compute``.

Order of decisions, per row: parse -> object? -> the fields the filter looks
at (``missing:``/``type:`` rejects) -> the filter (a row it drops is counted
as filtered; its other fields are never looked at) -> the other fields. A
required field that is absent or null -> ``missing:<field>``; a value its type
cannot take -> ``type:<field>``; when several fields are bad the first in
schema order is named. Nothing here does I/O.
"""

from __future__ import annotations

import html
import itertools
from collections import Counter
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from etl import coerce
from etl.schema import Field, Filter, Schema
from etl.shards import LineBatch

BOM = b"\xef\xbb\xbf"
BLANK = object()  # _retry's answer for a whitespace-only line (None is JSON null)
SLICE_LINES = 4096  # lines whose decoded objects live at once: bounds Python object memory
NONE = type(None)
# Python types a column may hold for Arrow's own C conversion to be exact
FAST_TYPES = {
    "string": {str, NONE}, "int64": {int, NONE}, "int32": {int, NONE},
    "float64": {float, int, NONE}, "bool": {bool, NONE},
}


@dataclass(frozen=True)
class RejectedLine:
    """A line kept byte for byte (terminator removed) with why it was refused."""

    line_no: int
    offset: int
    reason: str
    error: str
    raw: bytes


@dataclass
class BatchResult:
    table: pa.Table
    rejects: list[RejectedLine]
    lines: int
    blank_lines: int
    rows_filtered: int
    rejects_by_reason: Counter = field(default_factory=Counter)

    @property
    def rows_written(self) -> int:
        return self.table.num_rows


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
        if f.type == "timestamp" and types <= {int, float, NONE}:
            return _fast_timestamp(values, types, f), {}
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


def _dig(obj: dict, path: tuple[str, ...]):
    v = obj
    for k in path:
        if type(v) is not dict:
            return None
        v = v.get(k)
    return v


class Parser:
    """Compiled from a Schema once; turns LineBatches into BatchResults."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.arrow_schema = schema.arrow_schema()
        self.filter_fields = [f for f in schema.fields
                              if any(flt.field == f.name for flt in schema.filters)]
        self.other_fields = [f for f in schema.fields if f not in self.filter_fields]

    def parse_batch(self, batch: LineBatch) -> BatchResult:
        """Parse, check, filter and type every line of ``batch``."""
        tables, rejects, blank, filtered = [], [], 0, 0
        for lo in range(0, len(batch.lines), SLICE_LINES):
            table, rej, b, flt = self._slice(batch.lines, lo, lo + SLICE_LINES)
            tables.append(table)
            rejects += rej
            blank += b
            filtered += flt
        table = pa.concat_tables(tables) if tables else self.arrow_schema.empty_table()
        return self._result(batch, table, rejects, blank, filtered)

    def _slice(self, lines: list[bytes], lo: int, hi: int):
        objs, where, rejects, blank = [], [], [], 0
        loads = orjson.loads
        for i, line in enumerate(lines[lo:hi], lo):
            try:
                obj = loads(line)
            except orjson.JSONDecodeError as exc:
                obj = self._retry(line, exc)
                if obj is BLANK:
                    blank += 1
                    continue
                if type(obj) is tuple:
                    rejects.append((i, *obj))
                    continue
            if type(obj) is dict:
                objs.append(obj)
                where.append(i)
            else:
                rejects.append((i, "not_object",
                                f"expected a JSON object, got {coerce._kind(obj)}"))
        return self._typed(objs, where, rejects, blank)

    def _typed(self, objs: list[dict], where: list[int], rejects: list, blank: int):
        first, bad = self._convert(self.filter_fields, objs)
        mask = self._passing(first, len(objs), bad)
        keep = pc.indices_nonzero(mask) if len(objs) else pa.array([], pa.uint64())
        filtered = len(objs) - len(bad) - len(keep)
        rejects += [(where[j], *why) for j, why in bad.items()]
        kept_objs = [objs[j] for j in keep.to_pylist()] if len(keep) < len(objs) else objs
        kept_where = [where[j] for j in keep.to_pylist()]
        second, bad2 = self._convert(self.other_fields, kept_objs)
        rejects += [(kept_where[k], *why) for k, why in bad2.items()]
        final = pa.array([k for k in range(len(kept_objs)) if k not in bad2], pa.int64()) \
            if bad2 else None
        cols = []
        for f in self.schema.fields:
            arr = first[f.name].take(keep) if f.name in first else second[f.name]
            cols.append(arr.take(final) if final is not None else arr)
        return pa.Table.from_arrays(cols, schema=self.arrow_schema), rejects, blank, filtered

    @staticmethod
    def _convert(fields: list[Field], objs: list[dict]):
        """Arrays for ``fields`` over ``objs`` and {position: (reason, error)} of bad rows."""
        arrays, bad = {}, {}
        for f in fields:
            key = f.path[0]
            values = (list(map(dict.get, objs, itertools.repeat(key))) if len(f.path) == 1
                      else [_dig(o, f.path) for o in objs])
            arr, errors = convert_column(values, f)
            if f.type == "string" and (f.strip or f.null_if or f.lower or f.html_unescape):
                arr = clean_column(arr, f)
            for j, err in errors.items():
                bad.setdefault(j, (f"type:{f.name}", err))
            if f.required and arr.null_count:
                for j in pc.indices_nonzero(pc.is_null(arr)).to_pylist():
                    bad.setdefault(j, (f"missing:{f.name}", "required field is absent or null"))
            arrays[f.name] = arr
        return arrays, bad

    def _passing(self, arrays: dict, n: int, bad: dict) -> pa.Array:
        """Rows that are not rejected and pass every filter."""
        mask = pa.array([j not in bad for j in range(n)], pa.bool_()) if bad \
            else pa.array([True] * n, pa.bool_())
        for flt in self.schema.filters:
            f = self.schema.field(flt.field)
            mask = pc.and_(mask, filter_mask(arrays[f.name], flt, f))
        return mask

    @staticmethod
    def _retry(line: bytes, exc: Exception):
        """Classify a line orjson refused: BLANK, the decoded value, or (reason, error)."""
        body = line[3:] if line.startswith(BOM) else line  # documented: a leading BOM is dropped
        if not body.strip():
            return BLANK
        if body is not line:
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError as again:
                exc = again
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:
            return ("invalid_utf8", f"invalid UTF-8 at byte {bad.start}: {bad.reason}")
        return ("invalid_json", str(exc))

    def _result(self, batch: LineBatch, table, rejects, blank, filtered) -> BatchResult:
        kept = []
        if rejects:
            lines = batch.lines
            starts = list(itertools.accumulate((len(x) + 1 for x in lines), initial=0))
            for i, reason, error in sorted(rejects):
                raw = lines[i][:-1] if lines[i].endswith(b"\r") else lines[i]
                kept.append(RejectedLine(batch.first_line_no + i, batch.first_offset + starts[i],
                                         reason, error, raw))
        return BatchResult(table, kept, len(batch.lines), blank, filtered,
                           Counter(r.reason for r in kept))
