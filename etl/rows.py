"""Helpers of ``etl.parse`` for the two paths agreeing: the UTF-8 gate and msgspec's reading.

- invalid UTF-8: the scanner (``etl/_scan.c``) does not check it, so a batch takes the
  scanner only after Arrow's UTF-8 check of all of it (``batch_is_safe``);
- integers beyond 64 bits: orjson reads them as doubles; the coercers read such ints
  as doubles too (``coerce.as_orjson_reads``), so every path gives the same values;
- a number beyond double range (``1e999``) in a value the schema never reads: orjson
  refuses the whole line, but the documented rule is that a value the schema never
  reads is never judged. The orjson path retries such lines with
  ``Rows.decode_needed`` (msgspec, which skips what it is not asked for), and the
  scanner sends lines with such a number in a field the schema reads to the orjson
  path; there it is ``invalid_json``.

Tests compare the paths line by line (tests/test_parse.py).
"""

from __future__ import annotations

from typing import Any

import msgspec
import pyarrow as pa


FAST_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


def batch_is_safe(data: bytes) -> bool:
    """True when ``data`` is valid UTF-8 (the scanner may then take the batch)."""
    offsets = pa.array([0, len(data)], pa.int64()).buffers()[1]
    try:  # Arrow's SIMD UTF-8 check, without a copy
        pa.Array.from_buffers(pa.large_string(), 1, [None, offsets, pa.py_buffer(data)]) \
            .validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


class Rows:
    """msgspec's reading of only the top-level keys a schema needs."""

    def __init__(self, keys: list[str]):
        self.attr = {k: f"k{i}" for i, k in enumerate(keys)}
        row = msgspec.defstruct("Row", [(a, Any, None) for a in self.attr.values()],
                                rename={a: k for k, a in self.attr.items()})
        self.decoder = msgspec.json.Decoder(row)

    def decode_needed(self, line: bytes) -> dict | None:
        """The needed keys of a line orjson refused, when msgspec reads it (see above)."""
        try:
            row = self.decoder.decode(line)
            line.decode("utf-8")
        except (*FAST_ERRORS, UnicodeDecodeError):
            return None
        return {k: getattr(row, a) for k, a in self.attr.items()}
