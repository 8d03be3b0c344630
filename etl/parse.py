"""Pure: a batch of raw lines -> one typed Arrow table plus the rejected lines.

Per line: orjson parse; not an object -> ``not_object``; then the fields the
filter looks at are extracted, coerced and tested first (a row the filter drops
is counted as filtered and its other fields are never looked at); then the rest.
A required field that is absent or null -> ``missing:<field>``; a value its type
cannot take -> ``type:<field>``. Nothing here does I/O.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import dataclass, field

import orjson
import pyarrow as pa

from etl import coerce
from etl.schema import Field, Filter, Schema
from etl.shards import LineBatch

BOM = b"\xef\xbb\xbf"


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


class _Reject(Exception):
    def __init__(self, reason: str, error: str):
        super().__init__(reason, error)
        self.reason, self.error = reason, error


def _converter(f: Field):
    """The coercion function for one field, cleaning included."""
    if f.type == "timestamp":
        return coerce.make_timestamp(f.unit)
    conv = {"string": coerce.to_string, "int64": coerce.to_int64, "int32": coerce.to_int32,
            "float64": coerce.to_float64, "bool": coerce.to_bool, "date": coerce.to_date,
            "list<string>": coerce.to_string_list, "json": coerce.to_json}[f.type]
    if f.type == "string" and (f.strip or f.null_if or f.lower or f.html_unescape):
        clean = coerce.make_cleaner(f.strip, f.null_if, f.html_unescape, f.lower)
        return lambda v: clean(conv(v))
    return conv


def _predicate(flt: Filter):
    """A test on a coerced value. Null fails every operator but ne and not_in."""
    op, x = flt.op, flt.value
    if op == "not_null":
        return lambda v: v is not None
    if op in ("ne", "not_in"):
        members = frozenset(x) if op == "not_in" else frozenset([x])
        return lambda v: v not in members
    if op == "in":
        members = frozenset(x)
        return lambda v: v in members
    if op == "regex":
        return lambda v: v is not None and x.search(v if isinstance(v, str) else str(v)) is not None
    if op == "between":
        lo, hi = x
        return lambda v: v is not None and lo <= v <= hi
    compare = {"eq": lambda v: v == x, "ge": lambda v: v >= x, "gt": lambda v: v > x,
               "le": lambda v: v <= x, "lt": lambda v: v < x}[op]
    return lambda v: v is not None and compare(v)


@dataclass(frozen=True)
class _Step:
    index: int
    name: str
    key: str
    rest: tuple[str, ...]
    convert: object
    required: bool
    predicates: tuple


class Parser:
    """Compiled from a Schema once; turns LineBatches into BatchResults."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.arrow_schema = schema.arrow_schema()
        filtered = {flt.field for flt in schema.filters}
        steps = [_Step(i, f.name, f.path[0], f.path[1:], _converter(f), f.required,
                       tuple(_predicate(flt) for flt in schema.filters if flt.field == f.name))
                 for i, f in enumerate(schema.fields)]
        # filter fields first: a row the filter drops costs no further coercion
        self.steps = tuple(sorted(steps, key=lambda s: s.name not in filtered))

    def parse_batch(self, batch: LineBatch) -> BatchResult:
        """Parse, check, filter and type every line of ``batch``."""
        cols: list[list] = [[] for _ in self.schema.fields]
        rejects: list[tuple[int, str, str]] = []
        blank = filtered = 0
        loads, row_of = orjson.loads, self._row
        for i, line in enumerate(batch.lines):
            try:
                obj = loads(line)
            except orjson.JSONDecodeError as exc:
                obj = self._retry(line, exc)
                if obj is None:
                    blank += 1
                    continue
                if isinstance(obj, _Reject):
                    rejects.append((i, obj.reason, obj.error))
                    continue
            try:
                vals = row_of(obj)
            except _Reject as r:
                rejects.append((i, r.reason, r.error))
                continue
            if vals is None:
                filtered += 1
                continue
            for col, v in zip(cols, vals):
                col.append(v)
        return self._result(batch, cols, rejects, blank, filtered)

    def _row(self, obj):
        if type(obj) is not dict:
            raise _Reject("not_object", f"expected a JSON object, got {coerce._kind(obj)}")
        vals = [None] * len(self.steps)
        for s in self.steps:
            v = obj.get(s.key)
            for k in s.rest:
                v = v.get(k) if type(v) is dict else None
            if v is not None:
                try:
                    v = s.convert(v)
                except coerce.BadValue as exc:
                    raise _Reject(f"type:{s.name}", str(exc)) from None
            if v is None and s.required:
                raise _Reject(f"missing:{s.name}", "required field is absent or null")
            for p in s.predicates:
                if not p(v):
                    return None
            vals[s.index] = v
        return vals

    @staticmethod
    def _retry(line: bytes, exc: Exception):
        """Classify a line orjson refused: None for blank, an object, or a _Reject."""
        if not line.strip():
            return None
        if line.startswith(BOM):  # documented rule: a UTF-8 BOM before a line is dropped
            try:
                return orjson.loads(line[3:])
            except orjson.JSONDecodeError as again:
                exc = again
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:
            return _Reject("invalid_utf8", f"invalid UTF-8 at byte {bad.start}: {bad.reason}")
        return _Reject("invalid_json", str(exc))

    def _result(self, batch, cols, rejects, blank, filtered) -> BatchResult:
        arrays = [pa.array(c, type=f.type) for c, f in zip(cols, self.arrow_schema)]
        table = pa.Table.from_arrays(arrays, schema=self.arrow_schema)
        kept = []
        if rejects:
            lines = batch.lines
            starts = list(itertools.accumulate((len(x) + 1 for x in lines), initial=0))
            for i, reason, error in rejects:
                raw = lines[i][:-1] if lines[i].endswith(b"\r") else lines[i]
                kept.append(RejectedLine(batch.first_line_no + i, batch.first_offset + starts[i],
                                         reason, error, raw))
        return BatchResult(table, kept, len(batch.lines), blank, filtered,
                           Counter(r.reason for r in kept))
