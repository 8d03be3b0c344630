"""Pure: a batch of raw lines -> one typed Arrow table plus the rejected lines.

Two paths give the same result, line for line (tests/test_parse.py compares them):

- the scanner (``etl/_scan.c``): one pass in C proves each line is one JSON object
  of well-formed UTF-8, finds the top-level keys the schema reads, decides a simple
  string filter on raw bytes, and copies only the kept rows' raw
  values out: keys read only as top-level strings as Arrow string columns, the
  others as one JSON array per key that orjson reads in one call. No Python object
  is made for a line the filter drops. Lines the scanner is not certain about
  (see its header) take the orjson path;
- the orjson path: every line parsed to a dict, non-objects set aside (``not_object``).

Everything after is columnar: each field's values are converted to Arrow in C when
their Python types allow it (else value by value through ``etl.coerce``), cleaned
and filtered with ``pyarrow.compute``.

Order of decisions, per row: parse -> object? -> the fields the filter looks
at (``missing:``/``type:`` rejects) -> the filter (a row it drops is counted
as filtered; its other fields are never looked at) -> the other fields. A
required field that is absent or null -> ``missing:<field>``; a value its type
cannot take -> ``type:<field>``; when several fields are bad the first in
schema order is named. Nothing here does I/O.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from dataclasses import dataclass, field

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from etl import _scan, coerce
from etl.columns import clean_column, convert_column, filter_mask
from etl.rows import Rows
from etl.schema import Field, Schema
from etl.shards import LineBatch

BOM = b"\xef\xbb\xbf"
BLANK = object()  # _retry's answer for a whitespace-only line (None is JSON null)
SLICE_LINES = 4096  # lines whose decoded objects live at once: bounds Python object memory
BIG_LINE = 16 << 20  # a line this long that cannot be an object is not parsed (see _decode)
_FIRST_BYTE = re.compile(rb"[^ \t\r\n]")  # JSON's whitespace ends there
SCAN_KEYS = 1024  # most top-level keys the scanner reads (etl/_scan.c MAX_KEYS)
STRINGS_UP_TO = 1 << 31  # batches up to this size get Arrow strings (int32 offsets)


class _Columns:
    """Decoded rows held column-wise: top-level key -> the values of every row."""

    def __init__(self, cols: dict[str, list], n: int):
        self.cols, self.n = cols, n

    def __len__(self) -> int:
        return self.n

    def take(self, indices: list[int]) -> _Columns:
        return _Columns({k: v.take(pa.array(indices, pa.int64())) if isinstance(v, pa.Array)
                         else [v[j] for j in indices] for k, v in self.cols.items()},
                        len(indices))


class _ScanPlan:
    """What ``etl._scan`` needs from a schema: the keys it reads and its byte filter.

    The scanner itself applies a filter only when the schema has exactly one, on a
    top-level string field with no cleaning, by ``in``/``not_in``/``eq``/``ne``: then
    a line whose value is a plain JSON string is decided on its raw bytes, exactly as
    the Python path would (no cleaning can change the string, and no other filter
    field could reject the row first). Any other schema is filtered in Arrow as usual.
    """

    def __init__(self, schema: Schema):
        self.keys = list(dict.fromkeys(f.path[0] for f in schema.fields))
        self.usable = len(self.keys) <= SCAN_KEYS
        self.key_bytes = tuple(k.encode() for k in self.keys)
        readers = {k: [f for f in schema.fields if f.path[0] == k] for k in self.keys}
        # keys read only as top-level strings come back as Arrow string columns
        self.strings = bytes(all(f.type == "string" and len(f.path) == 1 for f in readers[k])
                             for k in self.keys)
        # keys read only as one top-level timestamp: epoch values typed in C where it can
        self.epochs = {k: (fs[0].arrow_type, coerce.UNIT_US[fs[0].unit])
                       for k, fs in readers.items()
                       if len(fs) == 1 and fs[0].type == "timestamp" and len(fs[0].path) == 1}
        self.filter_key, self.values, self.negate = -1, (), False
        if len(schema.filters) == 1:
            flt = schema.filters[0]
            f = schema.field(flt.field)
            if (flt.op in ("in", "not_in", "eq", "ne") and f.type == "string"
                    and len(f.path) == 1 and not (f.strip or f.lower or f.null_if
                                                  or f.html_unescape)):
                values = flt.value if flt.op in ("in", "not_in") else [flt.value]
                self.filter_key = self.keys.index(f.path[0])
                self.values = tuple(v.encode() for v in values)
                self.negate = flt.op in ("not_in", "ne")

    def scan(self, data: bytes):
        return _scan.scan(data, self.key_bytes, self.filter_key, self.values, self.negate,
                          self.strings if len(data) < STRINGS_UP_TO else b"")

    def columns(self, arrays: tuple, n: int) -> dict:
        """The scanner's columns as Python values (orjson), Arrow strings or Arrow
        timestamps, by key."""
        cols = {}
        for key, got in zip(self.keys, arrays):
            if type(got) is bytes:
                epoch = self.epochs.get(key)
                typed = _scan.epoch_us(got, epoch[1]) if epoch else None
                if typed is None:  # not all plain epoch values: the Python conversion
                    cols[key] = orjson.loads(got)
                else:
                    values, valid, nulls = typed
                    cols[key] = pa.Array.from_buffers(
                        epoch[0], n, [valid and pa.py_buffer(valid), pa.py_buffer(values)],
                        null_count=nulls)
                continue
            data, offsets, valid, nulls, other_rows, others = got
            arr = pa.Array.from_buffers(pa.string(), n, [pa.py_buffer(valid) if nulls else None,
                                                         pa.py_buffer(offsets),
                                                         pa.py_buffer(data)], null_count=nulls)
            if other_rows:  # numbers, bools, lists, objects: the values orjson reads
                values = arr.to_pylist()
                for row, value in zip(memoryview(other_rows).cast("q").tolist(),
                                      orjson.loads(others)):
                    values[row] = value
                arr = values
            cols[key] = arr
        return cols


def _lines_with(status: bytes, code: int) -> memoryview:
    """The indices of the lines whose status byte is ``code``, as a read-only sequence of
    ints (a view of Arrow's answer: no Python list of tens of thousands of ints)."""
    codes = pa.Array.from_buffers(pa.uint8(), len(status), [None, pa.py_buffer(status)])
    where = pc.indices_nonzero(pc.equal(codes, code))
    return memoryview(where.buffers()[1] or b"").cast("Q")[:len(where)]


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
        self.plan = _ScanPlan(schema)
        self.rows = Rows(self.plan.keys)
        self.fast = True  # the scanner first (tests turn it off to compare the paths)

    def parse_batch(self, batch: LineBatch) -> BatchResult:
        """Parse, check, filter and type every line of ``batch``."""
        if batch.too_long:  # one line, over the limit: only its head was kept
            why = (f"a line of {batch.too_long:,} bytes, longer than the longest line read "
                   f"whole (--max-line-mb): its first {len(batch.raw):,} bytes are kept here; "
                   f"the whole line is at byte {batch.first_offset:,} of the decompressed "
                   "shard")
            return self._result(batch, self.arrow_schema.empty_table(),
                                [(0, "too_long", why)], 0, 0)
        data = batch.joined()
        if self.fast and self.plan.usable:
            done = self._scan_batch(batch, data)
            if done is not None:
                return done
        tables, rejects, blank, filtered = [], [], 0, 0
        for lo in range(0, batch.count, SLICE_LINES):
            table, rej, b, flt, _ = self._slice(batch.lines, lo, lo + SLICE_LINES)
            tables.append(table)
            rejects += rej
            blank += b
            filtered += flt
        table = pa.concat_tables(tables) if tables else self.arrow_schema.empty_table()
        return self._result(batch, table, rejects, blank, filtered)

    def _scan_batch(self, batch: LineBatch, data: bytes) -> BatchResult | None:
        """The scanner path: C decides most lines; the unsure ones take ``_slice``.

        None when a value the schema reads is one orjson refuses (then the whole batch
        takes the other paths, which judge it line by line).
        """
        status, starts, arrays = self.plan.scan(data)
        n = len(status)
        if batch.given is None:
            batch.know_count(n)  # counting them again costs 0.35 ms/MB
        elif n != len(batch.given):  # an empty list of lines: one blank line to C
            return None
        kept = _lines_with(status, 1)
        try:
            cols = self.plan.columns(arrays, len(kept))
        except orjson.JSONDecodeError:
            return None
        unsure = _lines_with(status, 2)
        table, rejects, blank, filtered, rows_at = self._typed(
            _Columns(cols, len(kept)), kept, [], 0)
        filtered += n - len(kept) - len(unsure)
        if len(unsure):
            starts = memoryview(starts).cast("q")
            lines = [bytes(data[starts[i]:starts[i + 1] - 1 if i + 1 < n else len(data)])
                     for i in unsure]
            tables, at = [table], list(rows_at)
            for lo in range(0, len(lines), SLICE_LINES):  # bounded: dicts of 4096 lines
                more, rej, b, flt, more_at = self._slice(lines, lo, lo + SLICE_LINES)
                rejects += [(unsure[i], *why) for i, *why in rej]
                blank += b
                filtered += flt
                tables.append(more)
                at += [unsure[i] for i in more_at]
            order = pc.sort_indices(pa.array(at, pa.int64()))  # stable: rows in line order
            table = pa.concat_tables(tables).take(order)
        return self._result(batch, table, rejects, blank, filtered)

    def _slice(self, lines: list[bytes], lo: int, hi: int):
        """The orjson path over lines lo..hi: every line parsed to a dict."""
        objs, where, rejects, blank = self._decode(lines, range(lo, min(hi, len(lines))))
        return self._typed(objs, where, rejects, blank)

    def _decode(self, lines: list[bytes], indices) -> tuple[list[dict], list[int], list, int]:
        """orjson over ``lines[i] for i in indices``: objects, their indices, rejects, blanks."""
        objs, where, rejects, blank = [], [], [], 0
        loads = orjson.loads
        for i in indices:
            line = lines[i]
            if len(line) > BIG_LINE:
                why = _not_an_object(line)
                if why:
                    rejects.append((i, "not_object", why))
                    continue
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

    def _typed(self, objs, where: list[int], rejects: list, blank: int):
        """Filter fields, filter, other fields over dicts or _Columns.

        Returns the table, rejects, blanks, rows filtered, and each row's line index.
        """
        first, bad = self._convert(self.filter_fields, objs)
        mask = self._passing(first, len(objs), bad)
        keep = pc.indices_nonzero(mask) if len(objs) else pa.array([], pa.uint64())
        filtered = len(objs) - len(bad) - len(keep)
        rejects += [(where[j], *why) for j, why in bad.items()]
        every = len(keep) == len(objs)  # usual when the scanner applied the filter
        if every:
            kept_objs, kept_where = objs, where
        else:
            keep_list = keep.to_pylist()
            kept_objs = objs.take(keep_list) if type(objs) is _Columns \
                else [objs[j] for j in keep_list]
            kept_where = [where[j] for j in keep_list]
        second, bad2 = self._convert(self.other_fields, kept_objs)
        rejects += [(kept_where[k], *why) for k, why in bad2.items()]
        final = pa.array([k for k in range(len(kept_objs)) if k not in bad2], pa.int64()) \
            if bad2 else None
        cols = []
        for f in self.schema.fields:
            arr = second[f.name] if f.name not in first else \
                first[f.name] if every else first[f.name].take(keep)
            cols.append(arr.take(final) if final is not None else arr)
        rows_at = [kept_where[k] for k in final.to_pylist()] if final is not None else kept_where
        return (pa.Table.from_arrays(cols, schema=self.arrow_schema), rejects, blank, filtered,
                rows_at)

    def _values(self, f: Field, objs: list) -> list:
        """One field's values over decoded lines: dicts (orjson) or _Columns (scanner)."""
        if type(objs) is _Columns:
            top = objs.cols[f.path[0]]
        else:
            top = list(map(dict.get, objs, itertools.repeat(f.path[0])))
        return top if len(f.path) == 1 else [_dig(v, f.path[1:]) for v in top]

    def _convert(self, fields: list[Field], objs: list):
        """Arrays for ``fields`` over ``objs`` and {position: (reason, error)} of bad rows."""
        arrays, bad = {}, {}
        for f in fields:
            values = self._values(f, objs)
            # Arrow arrays from the scanner (strings, epoch timestamps) are typed already
            arr, errors = (values, {}) if isinstance(values, pa.Array) \
                else convert_column(values, f)
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


def _not_an_object(line: bytes) -> str | None:
    """Why a line over ``BIG_LINE`` bytes cannot be a JSON object, or None if it may be.

    Such a line is most often a whole JSON array file (``[{...}, {...}]``) given as
    NDJSON. Parsing it to learn that it is not an object would build every element
    (measured: 4.3 GB of memory for a 296 MB array line); its first byte says as much
    (after a BOM and whitespace), so it is set aside unparsed, kept whole as every
    reject is, whether the rest of it is valid JSON or not.
    """
    first = _FIRST_BYTE.search(line, 3 if line.startswith(BOM) else 0)  # no copy made
    if first is None or first.group() == b"{":
        return None
    return (f"expected a JSON object, got a line of {len(line):,} bytes starting with "
            f"{first.group().decode('latin-1')!r} (over {BIG_LINE >> 20} MiB: not parsed; "
            "is it a JSON array file rather than NDJSON?)")
