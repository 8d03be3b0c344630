"""Pure: a connection's bytes -> whole lines, and lines -> stored bytes plus rejects.

TCP delivers a byte stream, not lines: one line may arrive over many reads and
one read may hold many lines. ``LineSplitter`` reassembles them exactly and
holds at most ``max_line`` bytes of an unfinished line; a longer line is
dropped up to its LF as it streams by (only its first ``REJECT_HEAD`` bytes
are kept, for the reject record). ``sort_lines`` validates whole lines (each
must be a JSON object) and packs the good ones into one ``Chunk``.

LF ends a line and a CR right before it is dropped, so CRLF and LF both work.
At EOF an unfinished line is a line; cut short any other way (idle timeout,
shutdown, connection reset) it is an ``incomplete`` reject.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import datetime, timezone

import orjson

REJECT_HEAD = 4096  # bytes of an over-long or incomplete line kept in its reject record
REASONS = ("too_long", "invalid_json", "invalid_utf8", "not_object", "blank", "incomplete")


@dataclass(frozen=True)
class Reject:
    """A refused line: why, from whom, when (epoch seconds), and its bytes (maybe only a head)."""

    reason: str
    error: str
    peer: str
    time: float
    line: bytes
    length: int  # bytes the client sent for this line, terminator excluded

    def record(self) -> bytes:
        """One JSON line for the rejects file (``line`` as text, else ``line_base64``)."""
        rec = {"time": datetime.fromtimestamp(self.time, timezone.utc)
               .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
               "peer": self.peer, "reason": self.reason, "error": self.error,
               "length": self.length, "truncated": len(self.line) < self.length}
        try:
            rec["line"] = self.line.decode("utf-8")
        except UnicodeDecodeError:
            rec["line_base64"] = base64.b64encode(self.line).decode("ascii")
        return orjson.dumps(rec) + b"\n"


@dataclass
class Chunk:
    """What one read of one connection adds: good lines (LF-terminated, joined) and rejects."""

    data: bytes = b""
    lines: int = 0
    rejects: list[Reject] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.data or self.rejects)


@dataclass(frozen=True)
class Cut:
    """A line that was not kept whole: its first bytes and its full length."""

    head: bytes
    length: int


class LineSplitter:
    """Reassemble lines from arbitrary pieces of a byte stream, holding at most ``max_line``.

    ``feed`` returns the lines its piece completed (terminators removed) and the
    over-long lines it finished dropping; ``finish`` and ``cut`` end the stream.
    """

    def __init__(self, max_line: int):
        self.max_line = max_line
        self._partial = bytearray()
        self._skipping: Cut | None = None  # an over-long line being dropped up to its LF

    @property
    def pending(self) -> int:
        """Bytes of the unfinished line held (0 while dropping an over-long one)."""
        return len(self._partial)

    def feed(self, data: bytes) -> tuple[list[bytes], list[Cut]]:
        """Lines completed by ``data`` and over-long lines finished by it."""
        too_long: list[Cut] = []
        if self._skipping is not None:
            data = self._skip(data, too_long)
            if not data:
                return [], too_long
        has_cr = b"\r" in data
        parts = data.split(b"\n")
        tail = parts.pop()
        if parts and self._partial:
            parts[0] = bytes(self._partial) + parts[0]
            self._partial = bytearray()
        self._partial += tail
        if len(self._partial) > self.max_line + 1:  # +1: a CR that a LF may still follow
            self._skipping = Cut(bytes(self._partial[:REJECT_HEAD]), len(self._partial))
            self._partial = bytearray()
        if not parts:
            return [], too_long
        if has_cr or parts[0].endswith(b"\r"):  # a CR may have ended the previous piece
            parts = [p[:-1] if p.endswith(b"\r") else p for p in parts]
        if max(map(len, parts)) > self.max_line:
            too_long += [Cut(p[:REJECT_HEAD], len(p)) for p in parts if len(p) > self.max_line]
            parts = [p for p in parts if len(p) <= self.max_line]
        return parts, too_long

    def _skip(self, data: bytes, too_long: list[Cut]) -> bytes:
        """Drop ``data`` up to the LF ending the over-long line; return what follows it."""
        cut = self._skipping
        nl = data.find(b"\n")
        end = len(data) if nl < 0 else nl
        head = cut.head
        if len(head) < REJECT_HEAD:
            head += data[:min(end, REJECT_HEAD - len(head))]
        if nl < 0:
            self._skipping = Cut(head, cut.length + len(data))
            return b""
        too_long.append(Cut(head, cut.length + nl))
        self._skipping = None
        return data[nl + 1:]

    def finish(self) -> tuple[list[bytes], list[Cut]]:
        """At EOF: the unfinished line is a line (a trailing CR dropped)."""
        if self._skipping is not None:
            cut, self._skipping = self._skipping, None
            return [], [cut]
        line, self._partial = bytes(self._partial), bytearray()
        if not line:
            return [], []
        return [line[:-1] if line.endswith(b"\r") else line], []

    def cut(self) -> Cut | None:
        """The stream was cut (not a clean EOF): what is left of the unfinished line."""
        if self._skipping is not None:
            cut, self._skipping = self._skipping, None
            return cut
        line, self._partial = bytes(self._partial), bytearray()
        return Cut(line[:REJECT_HEAD], len(line)) if line else None


def check_line(line: bytes) -> tuple[str, str] | None:
    """None if ``line`` is one JSON object, else (reason, error)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if not line.strip():
            return ("blank", "empty or whitespace-only line")
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:
            return ("invalid_utf8", f"invalid UTF-8 at byte {bad.start}: {bad.reason}")
        return ("invalid_json", str(exc))
    if not isinstance(value, dict):
        return ("not_object", f"a JSON {type(value).__name__}, not an object")
    return None


def sort_lines(lines: list[bytes], too_long: list[Cut], peer: str, now: float,
               max_line: int) -> Chunk:
    """Validate ``lines``; join the good ones LF-terminated, turn the others into rejects."""
    good: list[bytes] = []
    rejects = [Reject("too_long", f"line of {c.length} bytes is over --max-line {max_line}; "
                      f"only its first {len(c.head)} bytes are kept here", peer, now,
                      c.head, c.length) for c in too_long]
    loads, decode_error = orjson.loads, orjson.JSONDecodeError
    for line in lines:
        try:
            ok = type(loads(line)) is dict
        except decode_error:
            ok = False
        if ok:
            good.append(line)
            continue
        reason, error = check_line(line) or ("not_object", "not an object")
        rejects.append(Reject(reason, error, peer, now, line, len(line)))
    if not good:
        return Chunk(b"", 0, rejects)
    good.append(b"")
    return Chunk(b"\n".join(good), len(good) - 1, rejects)


def incomplete(cut: Cut, why: str, peer: str, now: float) -> Reject:
    """The reject for a line a cut connection never finished."""
    return Reject("incomplete", f"connection {why} before the line's LF; "
                  f"{cut.length} bytes received", peer, now, cut.head, cut.length)
