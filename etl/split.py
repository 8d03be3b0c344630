"""Cut one big shard into parts that decode independently, so one file uses every core.

Which inputs split (local files only; anything else is one partition, as before):

- plain text: at any byte;
- zstd with several frames (``pzstd``, the spooler's shards): between frames;
- xz with several blocks in one stream (``xz -T0``, ``xz --block-size``): between
  blocks, found in the stream's index;
- gzip in BGZF form (``bgzip``): between members, whose sizes the headers give.

Not: a single zstd frame (``zstd -T0`` and ``--long=31`` write one), single-stream
gzip or bzip2, standard input, fsspec URLs, and any file whose structure does not
walk cleanly (that one goes the whole-shard way, which names the damage).

A part is a run of whole members. It reads them as a complete compressed stream of
its own (``own``; for xz a stream header, index and footer are made around its
blocks), so every member is decoded and checked by exactly one part. Lines belong
to the part that holds the byte after their preceding LF: part k > 0 drops its
bytes up to its first LF, and every part finishes its last line by reading on into
the members after it (``rest``) up to the next LF. The parts thus yield disjoint,
consecutive pieces of the decompressed text whose concatenation is the whole of it;
line numbers and offsets are made global when the shard is committed
(``etl.job.finish_parts``).
"""

from __future__ import annotations

import bisect
import os
import struct
import zlib
from dataclasses import dataclass
from typing import BinaryIO, Iterator

from etl.shards import (CODECS, PLAIN, Shard, detect_codec, iter_chunks, zstd_frame_header,
                        zstd_skippable)

PART_BYTES = 128 << 20  # default compressed bytes per part
CODEC_BY_NAME = {c.name: c for c in (*CODECS, PLAIN)}

Segment = bytes | tuple[int, int]  # literal bytes, or a [start, end) range of the file


@dataclass(frozen=True)
class Part:
    """Members ``own`` of ``shard``, part ``index`` of ``count``."""

    shard: Shard
    index: int
    count: int
    codec: str
    span: tuple[int, int]            # the file bytes this part decodes (for progress)
    own: tuple[Segment, ...]         # a complete compressed stream of this part's members
    rest: tuple[Segment, ...] = ()   # the members after them, also complete; () for the last

    @property
    def id(self) -> str:
        return f"{self.shard.id}.p{self.index:04d}"

    @property
    def size(self) -> int:
        return self.span[1] - self.span[0]


def plan(shard: Shard, part_bytes: int = PART_BYTES) -> list[Part] | None:
    """The parts of ``shard``, or None when it is not worth or not able to be split."""
    if (shard.is_stdin or "://" in shard.path or not part_bytes or shard.size is None
            or shard.size <= part_bytes):
        return None
    try:
        with open(shard.path, "rb", buffering=0) as fh:
            codec = detect_codec(_pread(fh, 0, 6))
            if codec is PLAIN:
                n = -(-shard.size // part_bytes)  # equal parts: any byte is a boundary
                return _ranges(shard, "plain", [shard.size * k // n for k in range(n + 1)])
            walk = {"zstd": _zstd_members, "gzip": _bgzf_members, "xz": _xz_plan}.get(codec.name)
            found = walk(fh, shard.size) if walk else None
    except (OSError, ValueError, IndexError, struct.error):
        return None  # the whole-shard path opens it again and says what is wrong
    if found is None:
        return None
    if codec.name == "xz":
        header, blocks, index_at = found
        cuts = _group([b[0] for b in blocks] + [index_at], part_bytes)
        return _xz_parts(shard, header, blocks, index_at, cuts)
    return _ranges(shard, codec.name, _group(found, part_bytes))


def part_chunks(part: Part, counter: list[int] | None = None,
                owned: list[int] | None = None) -> Iterator[bytes]:
    """The decompressed bytes ``part`` owns (see the module text), in pieces.

    ``counter[0]`` follows the file bytes read of the part's own members;
    ``owned[0]`` the decompressed bytes yielded so far.
    """
    path = part.shard.path
    owned = owned if owned is not None else [0]
    with open(path, "rb", buffering=0) as fh:
        codec = CODEC_BY_NAME[part.codec]
        pieces = iter_chunks(_Segments(fh, part.own), path, counter, codec)
        skipping = part.index > 0
        for piece in pieces:
            if skipping:
                cut = piece.find(b"\n")
                if cut < 0:
                    continue
                skipping, piece = False, piece[cut + 1:]
                if not piece:
                    continue
            owned[0] += len(piece)
            yield piece
        if counter is not None:
            counter[0] = min(counter[0], part.size)
        if skipping or not part.rest:
            return  # no line starts here, or the file ends here
        # the line after the last LF (maybe the one right at our end) is ours: finish it
        for piece in iter_chunks(_Segments(fh, part.rest), path, None, codec):
            cut = piece.find(b"\n")
            piece = piece if cut < 0 else piece[:cut + 1]
            owned[0] += len(piece)
            yield piece
            if cut >= 0:
                return


# ---------------------------------------------------------------- reading

class _Segments:
    """A read-only file over literal bytes and ranges of ``fh``, one after another."""

    def __init__(self, fh: BinaryIO, segments: tuple[Segment, ...]):
        self.fh, self.segments, self.i, self.pos = fh, segments, 0, 0

    def read(self, n: int) -> bytes:
        while self.i < len(self.segments):
            seg = self.segments[self.i]
            if isinstance(seg, bytes):
                out = seg[self.pos:self.pos + n]
            else:
                start, end = seg
                out = _pread(self.fh, start + self.pos, min(n, end - start - self.pos))
            if out:
                self.pos += len(out)
                return out
            self.i, self.pos = self.i + 1, 0
        return b""


def _pread(fh: BinaryIO, offset: int, n: int) -> bytes:
    return os.pread(fh.fileno(), n, offset) if n > 0 else b""


def _ranges(shard: Shard, codec: str, cuts: list[int]) -> list[Part] | None:
    """Parts over consecutive file ranges ``cuts[i]..cuts[i+1]``."""
    n = len(cuts) - 1
    if n < 2:
        return None
    end = cuts[-1]
    return [Part(shard, i, n, codec, (a, b), ((a, b),), ((b, end),) if b < end else ())
            for i, (a, b) in enumerate(zip(cuts, cuts[1:]))]


def _group(bounds: list[int], part_bytes: int) -> list[int]:
    """Member boundaries (first 0, last the file size) thinned to parts of about equal size.

    As many parts as ``part_bytes`` asks for (at least one per ``part_bytes``); each cut
    is the boundary nearest its equal share, so two workers get about the same work.
    """
    size = bounds[-1] - bounds[0]
    n = min(max(-(-size // part_bytes), 1), len(bounds) - 1)
    cuts = [bounds[0]]
    inner = bounds[1:-1]
    for k in range(1, n):
        goal = bounds[0] + size * k // n
        i = bisect.bisect_left(inner, goal)
        near = [b for b in inner[max(i - 1, 0):i + 1] if b > cuts[-1]]
        if near:
            cuts.append(min(near, key=lambda b: abs(b - goal)))
    return cuts + [bounds[-1]]


# ---------------------------------------------------------------- zstd

def _zstd_members(fh: BinaryIO, size: int) -> list[int] | None:
    """Frame starts (and the file size) from the frame and block headers; None if odd."""
    bounds, o = [], 0
    while o < size:
        bounds.append(o)
        head = _pread(fh, o, 18)
        skip = zstd_skippable(head)
        if skip is not None:
            o += skip
            continue
        frame = zstd_frame_header(head)
        if frame is None:
            return None
        checksum = head[4] >> 2 & 1
        o += frame[0]
        while True:
            h = _pread(fh, o, 3)
            if len(h) < 3:
                return None
            h = int.from_bytes(h, "little")
            kind, bsize = h >> 1 & 3, h >> 3
            if kind == 3:
                return None
            o += 3 + (1 if kind == 1 else bsize)
            if h & 1:
                break
        o += 4 * checksum
    if o != size:
        return None
    return bounds + [size] if len(bounds) > 1 else None


# ---------------------------------------------------------------- gzip (BGZF)

def _bgzf_members(fh: BinaryIO, size: int) -> list[int] | None:
    """Member starts of a BGZF file (each header gives its member's size); None otherwise."""
    bounds, o = [], 0
    while o < size:
        head = _pread(fh, o, 18)
        if (len(head) < 18 or head[:4] != b"\x1f\x8b\x08\x04" or head[12:14] != b"BC"
                or struct.unpack_from("<H", head, 14)[0] != 2):
            return None
        bounds.append(o)
        o += struct.unpack_from("<H", head, 16)[0] + 1
    if o != size:
        return None
    return bounds + [size] if len(bounds) > 1 else None


# ---------------------------------------------------------------- xz

def _xz_plan(fh: BinaryIO, size: int):
    """(stream header, blocks [(offset, unpadded, uncompressed)], index offset); None if odd."""
    header, footer = _pread(fh, 0, 12), _pread(fh, size - 12, 12)
    if footer[10:] != b"YZ" or footer[8:10] != header[6:8]:
        return None  # several streams, padding or damage: no split
    index_size = (struct.unpack_from("<I", footer, 4)[0] + 1) * 4
    index_at = size - 12 - index_size
    index = _pread(fh, index_at, index_size)
    if index[:1] != b"\0" or zlib.crc32(index[:-4]) != struct.unpack_from("<I", index[-4:])[0]:
        return None
    count, i = _varint(index, 1)
    blocks, o = [], 12
    for _ in range(count):
        unpadded, i = _varint(index, i)
        uncompressed, i = _varint(index, i)
        blocks.append((o, unpadded, uncompressed))
        o += (unpadded + 3) & ~3
    if o != index_at or len(blocks) < 2:
        return None
    return header, blocks, index_at


def _xz_parts(shard: Shard, header: bytes, blocks, index_at: int, cuts: list[int]):
    n = len(cuts) - 1
    if n < 2:
        return None
    first = {b[0]: k for k, b in enumerate(blocks)}
    first[index_at] = len(blocks)

    def stream(a: int, b: int) -> tuple[Segment, ...]:
        run = blocks[first[a]:first[b]]
        return (header, (a, b), _xz_index_and_footer(run, header[6:8]))

    size = shard.size  # the spans cover the stream header, index and footer too
    return [Part(shard, k, n, "xz", (0 if k == 0 else a, size if k == n - 1 else b), stream(a, b),
                 stream(b, index_at) if b < index_at else ())
            for k, (a, b) in enumerate(zip(cuts, cuts[1:]))]


def _xz_index_and_footer(blocks, flags: bytes) -> bytes:
    """The index and stream footer of a stream holding just ``blocks``."""
    index = b"\0" + _enc_varint(len(blocks)) + b"".join(
        _enc_varint(unpadded) + _enc_varint(size) for _, unpadded, size in blocks)
    index += b"\0" * (-len(index) % 4)
    index += struct.pack("<I", zlib.crc32(index))
    tail = struct.pack("<I", len(index) // 4 - 1) + flags
    return index + struct.pack("<I", zlib.crc32(tail)) + tail + b"YZ"


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("xz index: varint too long")


def _enc_varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
