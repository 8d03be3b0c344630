"""msgspec decoding of only the keys a schema needs: the fast path of ``etl.parse``.

orjson builds every key of every line as Python objects; msgspec can decode a line
into a Struct of just the needed top-level keys, skipping the rest at C speed. With
a filter, a first pass decodes only the keys the filter reads; the lines it keeps
are decoded again in full.

Exactness: a line msgspec refuses goes to the orjson path, which classifies it. A
line msgspec accepts must be one the orjson path accepts with the same values:

- invalid UTF-8 inside a skipped value: msgspec does not check what it skips, so a
  batch is taken only after Arrow's UTF-8 check of all of it (``batch_is_safe``);
- integers beyond 64 bits: orjson reads them as doubles, msgspec as ints; the
  coercers read such ints as doubles too (``coerce.as_orjson_reads``), so both paths
  give the same values;
- a number beyond double range (``1e999``) in a value the schema never reads:
  msgspec skips it, orjson refuses the line. The documented rule follows msgspec on
  both paths: the orjson path retries such lines with ``Rows.decode_needed``, so a
  skipped value is never judged; in a field the schema reads it is ``invalid_json``.

Tests compare both paths line by line (tests/test_parse.py).
"""

from __future__ import annotations

import operator
from typing import Any

import msgspec
import orjson
import pyarrow as pa

from etl.schema import Schema

FAST_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def batch_is_safe(data: bytes) -> bool:
    """True when msgspec and orjson agree on every line of ``data``: valid UTF-8."""
    offsets = pa.array([0, len(data)], pa.int64()).buffers()[1]
    try:  # Arrow's SIMD UTF-8 check, without a copy
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]) \
            .validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _struct(name: str, keys: list[str], attr: dict[str, str]):
    return msgspec.defstruct(name, [(attr[k], Any, None) for k in keys],
                             rename={attr[k]: k for k in keys})


class Rows:
    """Decoders for one schema: ``first`` (filter keys, or all), ``full`` (all keys)."""

    def __init__(self, schema: Schema):
        keys = list(dict.fromkeys(f.path[0] for f in schema.fields))
        attr = {k: f"k{i}" for i, k in enumerate(keys)}
        self.attr = attr
        self.full_type = _struct("Row", keys, attr)
        self.full_decoder = msgspec.json.Decoder(self.full_type)
        used = {flt.field for flt in schema.filters}
        pre = list(dict.fromkeys(f.path[0] for f in schema.fields if f.name in used))
        self.pre = msgspec.json.Decoder(_struct("PreRow", pre, attr)) \
            if pre and len(pre) < len(keys) else None
        self.first = self.pre or self.full_decoder
        self.getter = {k: operator.attrgetter(a) for k, a in attr.items()}

    def decode_all(self, lines: list[bytes]) -> list | None:
        """Every line decoded in one call, or None when one needs the line-by-line path.

        ``decode_lines`` skips blank lines and would read two documents on one line, so
        its rows match the lines one to one only when no line is blank and the counts
        agree (then no line held more than one document).
        """
        if not all(map(bytes.strip, lines)):
            return None
        try:
            rows = self.first.decode_lines(b"\n".join(lines))
        except FAST_ERRORS:
            return None
        return rows if len(rows) == len(lines) else None

    def decode_needed(self, line: bytes) -> dict | None:
        """The needed keys of a line orjson refused, when msgspec reads it (see above)."""
        try:
            row = self.full_decoder.decode(line)
            line.decode("utf-8")
        except (*FAST_ERRORS, UnicodeDecodeError):
            return None
        return {k: getattr(row, a) for k, a in self.attr.items()}

    def from_dict(self, obj: dict):
        """A full Row from an orjson dict (lines the fast path handed to orjson)."""
        return self.full_type(**{a: obj.get(k) for k, a in self.attr.items()})

    def full_all(self, lines, rows: list) -> list:
        """``full`` over many rows: one ``decode_lines`` call when none is decoded in full.

        ``lines`` (made only when needed: a callable giving the list) are the rows' lines.
        Each line held one document for ``first``, so the counts agree unless the
        full decoder reads differently; then line by line.
        """
        full = self.full_type
        if all(type(r) is full for r in rows):
            return rows  # decoded in full already
        lines = lines()
        if all(type(r) is not full for r in rows):
            try:
                again = self.full_decoder.decode_lines(b"\n".join(lines))
            except FAST_ERRORS:
                again = None
            if again is not None and len(again) == len(rows):
                return again
        return [self.full(line, row) for line, row in zip(lines, rows)]

    def full(self, line: bytes, row):
        """``row`` decoded in full (re-read from ``line`` when it holds filter keys only)."""
        if type(row) is self.full_type:
            return row
        try:
            return self.full_decoder.decode(line)
        except FAST_ERRORS:  # nesting msgspec refuses deeper than orjson does
            return self.from_dict(orjson.loads(line))
