"""Helpers of ``etl.parse`` for the two paths agreeing: msgspec's reading.

- invalid UTF-8: the scanner (``etl/_scan.c``) leaves a line with any to the orjson
  path, which rejects it (``invalid_utf8``), as it would any other line;
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


FAST_ERRORS = (msgspec.DecodeError, msgspec.ValidationError, RecursionError)


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
