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

import itertools
import operator
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from etl import coerce
from etl.columns import clean_column, convert_column, filter_mask
from etl.rows import FAST_ERRORS, Rows, batch_is_safe
from etl.schema import Field, Schema
from etl.shards import LineBatch

BOM = b"\xef\xbb\xbf"
BLANK = object()  # _retry's answer for a whitespace-only line (None is JSON null)
FULL_FIRST = 0.2  # keep rate above which the fast path decodes every needed key at once
SLICE_LINES = 4096  # lines whose decoded objects live at once: bounds Python object memory


class _Spans:
    """Where each line of a joined batch starts and stops, and which start with ``{``."""

    def __init__(self, data: bytes, ends: np.ndarray):
        starts = np.concatenate(([0], ends + 1))
        stops = np.concatenate((ends, [len(data)]))
        self.count = len(starts)
        self.objects = np.zeros(self.count, bool)
        full = starts < stops
        self.objects[full] = np.frombuffer(data, np.uint8)[starts[full]] == 0x7B  # "{"
        self.starts, self.stops, self.data = starts.tolist(), stops.tolist(), data

    def line(self, i: int) -> bytes:
        return self.data[self.starts[i]:self.stops[i]]


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


def _dig(v, path: tuple[str, ...]):
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
        self.rows = Rows(schema)
        self.fast = True  # msgspec where it gives what orjson would (tests turn it off)
        self.keep_rate = 0.0  # share of rows the filter kept lately (moving average)

    def parse_batch(self, batch: LineBatch) -> BatchResult:
        """Parse, check, filter and type every line of ``batch``."""
        tables, rejects, blank, filtered = [], [], 0, 0
        data = batch.joined()
        spans = _Spans(data, batch.ends) if self.fast and batch_is_safe(data) else None
        n = spans.count if spans else batch.count
        for lo in range(0, n, SLICE_LINES):
            hi = min(lo + SLICE_LINES, n)
            part = self._span_slice(data, spans, lo, hi) if spans else None
            if part is None:
                part = (self._fast_slice if spans else self._slice)(batch.lines, lo, hi)
            table, rej, b, flt = part
            tables.append(table)
            rejects += rej
            blank += b
            filtered += flt
        table = pa.concat_tables(tables) if tables else self.arrow_schema.empty_table()
        return self._result(batch, table, rejects, blank, filtered)

    def _slice(self, lines: list[bytes], lo: int, hi: int):
        """The orjson path: every line parsed to a dict."""
        objs, where, rejects, blank = self._decode(lines, range(lo, min(hi, len(lines))))
        return self._typed(objs, where, rejects, blank)

    def _span_slice(self, data: bytes, spans: _Spans, lo: int, hi: int):
        """The fastest path: lines lo..hi decoded straight from ``data``, never split.

        Taken when every line starts with ``{`` (so none is blank) and msgspec reads
        exactly one document per line (the counts agree); else None.
        """
        if not spans.objects[lo:hi].all():
            return None
        # the filter keeps many rows: decoding them all in full at once costs less than
        # the filter keys of all, then the kept ones again (crossover measured near 17%)
        decoder = self.rows.full_decoder if self.keep_rate > FULL_FIRST else self.rows.first
        try:
            objs = decoder.decode_lines(
                memoryview(data)[spans.starts[lo]:spans.stops[hi - 1]])
        except FAST_ERRORS:
            return None
        if len(objs) != hi - lo:
            return None
        return self._typed(objs, list(range(lo, hi)), [], 0, spans.line)

    def _fast_slice(self, lines: list[bytes], lo: int, hi: int):
        """The msgspec path: needed keys only; lines msgspec refuses go through orjson."""
        objs = self.rows.decode_all(lines[lo:hi])
        if objs is not None:
            return self._typed(objs, list(range(lo, hi)), [], 0, lines.__getitem__)
        decode = self.rows.first.decode
        objs, where, slow = [], [], []
        for i in range(lo, hi):
            try:
                objs.append(decode(lines[i]))
                where.append(i)
            except FAST_ERRORS:
                slow.append(i)
        rejects, blank = [], 0
        if slow:
            dicts, more, rejects, blank = self._decode(lines, slow)
            merged = sorted(zip(where + more, objs + [self.rows.from_dict(d) for d in dicts]),
                            key=operator.itemgetter(0))
            where, objs = [w for w, _ in merged], [o for _, o in merged]
        return self._typed(objs, where, rejects, blank, lines.__getitem__)

    def _decode(self, lines: list[bytes], indices) -> tuple[list[dict], list[int], list, int]:
        """orjson over ``lines[i] for i in indices``: objects, their indices, rejects, blanks."""
        objs, where, rejects, blank = [], [], [], 0
        loads = orjson.loads
        for i in indices:
            line = lines[i]
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
        return objs, where, rejects, blank

    def _typed(self, objs: list, where: list[int], rejects: list, blank: int, line=None):
        """Filter fields, filter, other fields; ``line(i)`` given: re-decode kept Rows in full."""
        first, bad = self._convert(self.filter_fields, objs)
        mask = self._passing(first, len(objs), bad)
        keep = pc.indices_nonzero(mask) if len(objs) else pa.array([], pa.uint64())
        filtered = len(objs) - len(bad) - len(keep)
        rejects += [(where[j], *why) for j, why in bad.items()]
        kept_objs = [objs[j] for j in keep.to_pylist()] if len(keep) < len(objs) else objs
        kept_where = [where[j] for j in keep.to_pylist()]
        if len(objs):
            self.keep_rate += (len(keep) / len(objs) - self.keep_rate) * 0.3
        if line is not None and self.rows.pre is not None:
            kept_objs = self.rows.full_all(lambda: [line(w) for w in kept_where], kept_objs)
        second, bad2 = self._convert(self.other_fields, kept_objs)
        rejects += [(kept_where[k], *why) for k, why in bad2.items()]
        final = pa.array([k for k in range(len(kept_objs)) if k not in bad2], pa.int64()) \
            if bad2 else None
        cols = []
        for f in self.schema.fields:
            arr = first[f.name].take(keep) if f.name in first else second[f.name]
            cols.append(arr.take(final) if final is not None else arr)
        return pa.Table.from_arrays(cols, schema=self.arrow_schema), rejects, blank, filtered

    def _values(self, f: Field, objs: list) -> list:
        """One field's values over decoded lines: dicts (orjson) or Rows (msgspec)."""
        if objs and type(objs[0]) is dict:
            top = list(map(dict.get, objs, itertools.repeat(f.path[0])))
        else:
            top = list(map(self.rows.getter[f.path[0]], objs))
        return top if len(f.path) == 1 else [_dig(v, f.path[1:]) for v in top]

    def _convert(self, fields: list[Field], objs: list):
        """Arrays for ``fields`` over ``objs`` and {position: (reason, error)} of bad rows."""
        arrays, bad = {}, {}
        for f in fields:
            arr, errors = convert_column(self._values(f, objs), f)
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

    def _retry(self, line: bytes, exc: Exception):
        """Classify a line orjson refused: BLANK, the decoded value, or (reason, error)."""
        body = line[3:] if line.startswith(BOM) else line  # documented: a leading BOM is dropped
        if not body.strip():
            return BLANK
        if body is not line:
            try:
                return orjson.loads(body)
            except orjson.JSONDecodeError as again:
                exc = again
        needed = self.rows.decode_needed(body)  # a huge number in a value we never read
        if needed is not None:
            return needed
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
        return BatchResult(table, kept, batch.count, blank, filtered,
                           Counter(r.reason for r in kept))
