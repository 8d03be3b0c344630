"""Find shards, detect their codec by magic bytes, and stream them as bounded line batches.

A shard is one input: a local file, an fsspec URL, or ``-`` for standard input.
Nothing here ever holds a whole shard: compressed input is read in
``READ_SIZE`` pieces, decompressed in ``OUT_CHUNK`` pieces, and cut into
``LineBatch`` objects of about ``batch_bytes`` at line boundaries; plain text
from a local file or standard input is read, and zstd and xz decompressed, straight
into each batch's buffer.

Codecs (by magic bytes, never by extension): gzip (multi-member), bzip2
(multi-stream), xz (multi-stream, stream padding in multiples of four bytes),
zstd (multi-frame, skippable frames, windows up to 2 GiB), else plain.
Anything after the last complete member that is not another member is
trailing garbage and fails the shard (the xz tool's rule, applied to all).
"""

from __future__ import annotations

import bz2
import glob as globlib
import hashlib
import io
import logging
import lzma
import os
import re
import stat
import sys
import zlib
from dataclasses import dataclass, replace
from functools import cached_property
from typing import BinaryIO, Callable, Iterator

from backports.zstd import DecompressionParameter, ZstdDecompressor, ZstdError
from isal import isal_zlib

from etl.errors import ConfigError, CorruptShardError, ShardError

READ_SIZE = 1 << 20          # 1 MiB: compressed bytes per read
OUT_CHUNK = 4 << 20          # 4 MiB: most decompressed bytes per decompress call
READ_AHEAD_BYTES = 32 << 20  # 32 MiB: read ahead of the parsing at most (read_ahead), or
                             # one batch if they are bigger
BATCH_BYTES = 8 << 20        # 8 MiB: default uncompressed bytes per line batch
MAX_LINE = 64 << 20          # 64 MiB: default longest line read whole (a longer one is
                             # rejected as too_long with its head; see iter_line_batches)
KEPT_OF_TOO_LONG = 64 << 10  # 64 KiB: what a too_long reject keeps of its line
FINGERPRINT_SPAN = 1 << 20   # 1 MiB: head and tail bytes hashed into a shard's fingerprint
ZSTD_WINDOW_LOG_MAX = 31     # 2 GiB windows, as Pushshift's `zstd --long=31` dumps need
STDIN = "-"
GLOB_CHARS = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class Shard:
    """One input file. ``path`` is a local path, an fsspec URL, or ``-``."""

    path: str
    size: int | None = None
    mtime: float | None = None
    name: str | None = None  # identity override, used for stdin

    @property
    def id(self) -> str:
        """Stable, file-name-safe identity: ``<basename>-<hash of the path>``."""
        ident = self.name or self.path
        base = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(ident.rstrip("/")) or "shard")
        digest = hashlib.blake2b(ident.encode(), digest_size=4).hexdigest()
        return f"{base[:80]}-{digest}"

    @property
    def is_stdin(self) -> bool:
        return self.path == STDIN


@dataclass(frozen=True)
class LineBatch:
    """Lines (terminator removed, CR kept) with where the first one starts.

    Built from a list of lines, or from ``raw`` (the lines joined by LF) alone: then
    the list is only made if someone asks for ``lines`` (the parser's scanner reads
    ``raw`` and never does, unless a line needs a closer look).
    """

    given: list[bytes] | None
    first_line_no: int   # 1-based
    first_offset: int    # byte offset of the first line in the decompressed stream
    raw: bytes | memoryview | None = None  # the lines joined by LF (a view: no copy)
    too_long: int = 0    # set: one line of this many bytes, over the limit; raw is its head

    def joined(self) -> bytes | memoryview:
        """The lines joined by LF (``raw`` when given)."""
        return self.raw if self.raw is not None else b"\n".join(self.given)

    @cached_property
    def lines(self) -> list[bytes]:
        return self.given if self.given is not None else bytes(self.raw).split(b"\n")

    def know_count(self, n: int) -> None:
        """Record the number of lines, counted by someone else (the parser's scanner)."""
        self.__dict__["count"] = n  # what cached_property would store

    @cached_property
    def count(self) -> int:
        """Number of lines."""
        # the parser's scanner counts them (know_count); else the lines are needed anyway
        return len(self.lines)


# ---------------------------------------------------------------- discovery

def _is_url(path: str) -> bool:
    return "://" in path


def _skip(name: str) -> bool:
    base = os.path.basename(name)
    return base.startswith((".", "_")) or base.endswith(".part")


def _local_shards(pattern: str) -> list[Shard]:
    unlisted: list[OSError] = []  # folders os.walk cannot list: reported, never silently skipped
    if GLOB_CHARS.search(pattern):
        paths = sorted(globlib.glob(pattern, recursive=True))
    elif os.path.isdir(pattern):
        paths = sorted(os.path.join(root, f) for root, dirs, files in
                       os.walk(pattern, onerror=unlisted.append)
                       for f in files if not any(_skip(d) for d in
                                                 os.path.relpath(root, pattern).split(os.sep)
                                                 if d != "."))
    else:
        paths = [pattern]
    shards = [Shard(os.path.abspath(e.filename)) for e in unlisted
              if not any(_skip(d) for d in os.path.relpath(e.filename, pattern).split(os.sep))]
    for p in paths:
        if _skip(p) or os.path.isdir(p):  # a directory a glob matched is never a shard
            continue
        st = os.stat(p) if os.path.exists(p) else None
        shards.append(Shard(os.path.abspath(p), st.st_size if st else None,
                            st.st_mtime if st else None))
    return shards


def _url_shards(url: str) -> list[Shard]:
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    if GLOB_CHARS.search(path):
        paths = sorted(p for p, info in fs.glob(path, detail=True).items()
                       if info.get("type") != "directory")
    elif fs.isdir(path):
        root = path.rstrip("/")  # as for local directories: skip hidden and _ directories
        paths = sorted(p for p in fs.find(path)
                       if not any(_skip(d) for d in p[len(root) + 1:].split("/")[:-1]))
    else:
        paths = [path]
    shards = []
    for p in paths:
        if _skip(p):
            continue
        info = fs.info(p) if fs.exists(p) else {}
        mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
        shards.append(Shard(fs.unstrip_protocol(p), info.get("size"),
                            mtime.timestamp() if hasattr(mtime, "timestamp") else mtime))
    return shards


def find_shards(inputs: list[str], stdin_name: str = "stdin") -> list[Shard]:
    """Expand files, globs, directories, fsspec URLs and ``-`` into shards.

    Hidden files, ``_``-prefixed files and unsealed spool files (``*.part``)
    are never taken. An input matching nothing is logged as a warning (an empty
    spool folder must not stop a scheduled run over other inputs); when no input
    matches anything, ``ConfigError``.
    """
    shards: dict[str, Shard] = {}
    missed = []
    for item in inputs:
        if item == STDIN:
            found = [Shard(STDIN, name=stdin_name)]
        else:
            found = _url_shards(item) if _is_url(item) else _local_shards(item)
        if not found:
            missed.append(item)
        for s in found:
            shards.setdefault(s.path, s)
    why = "(hidden, _-prefixed and .part files are never taken)"
    if not shards:
        raise ConfigError(f"no shards match {', '.join(map(repr, missed))} {why}")
    for item in missed:
        logging.getLogger("etl").warning("no shards match %r %s; going on with the other "
                                         "inputs", item, why)
    return list(shards.values())


def stat_shard(shard: Shard) -> Shard:
    """The shard with its size and mtime as they are now."""
    found = _url_shards(shard.path) if _is_url(shard.path) else _local_shards(shard.path)
    return found[0] if found else Shard(shard.path)


# ---------------------------------------------------------------- opening

def open_shard(shard: Shard) -> BinaryIO:
    """Open a shard's raw (still compressed) bytes for reading."""
    if shard.is_stdin:
        return os.fdopen(os.dup(sys.stdin.fileno()), "rb", buffering=0)
    try:
        if _is_url(shard.path):
            import fsspec
            return fsspec.open(shard.path, "rb").open()
        if os.path.isdir(shard.path):
            raise ShardError(_directory_problem(shard.path), shard.path)
        return open(shard.path, "rb", buffering=0)
    except OSError as exc:
        raise ShardError(f"cannot open: {exc.strerror or exc}", shard.path) from exc


def _directory_problem(path: str) -> str:
    try:
        os.listdir(path)
    except OSError as exc:
        return (f"is a directory that cannot be listed ({exc.strerror}): the shards in it "
                "cannot be found; fix its permissions and rerun")
    return "is a directory, not a shard file"


def _require_regular(shard: Shard) -> None:
    """Refuse a FIFO, socket or device before opening it (opening a FIFO can block forever)."""
    try:
        mode = os.stat(shard.path).st_mode
    except OSError:
        return  # open_shard says why
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise ShardError("not a regular file (a FIFO, socket or device): a shard must be a "
                         "complete file; stream data through standard input with '-' instead",
                         shard.path)


def fingerprint(shard: Shard) -> str | None:
    """Cheap content fingerprint: blake2b of size, first and last MiB. None for stdin."""
    if shard.is_stdin:
        return None
    if not _is_url(shard.path):
        _require_regular(shard)
    h = hashlib.blake2b(digest_size=16)
    with open_shard(shard) as fh:
        head = _read_exact(fh, FINGERPRINT_SPAN)
        size = shard.size if shard.size is not None else len(head)
        h.update(str(size).encode() + b"\0" + head)
        if size > FINGERPRINT_SPAN and fh.seekable():
            fh.seek(size - FINGERPRINT_SPAN)
            h.update(_read_exact(fh, FINGERPRINT_SPAN))
    return h.hexdigest()


def zstd_window(shard: Shard) -> int:
    """Bytes a zstd decoder holds for the shard's first frame (skippable frames passed
    over): its window, or its content size when known and smaller; with ``--long=31``,
    up to 2 GiB. 0 for stdin, another codec, or a header that cannot be read."""
    if shard.is_stdin:
        return 0
    try:
        with open_shard(shard) as fh:
            for _ in range(16):  # skippable frames first, a few at most
                head = _read_exact(fh, 18)
                skip = zstd_skippable(head)
                if skip is None:
                    frame = zstd_frame_header(head)
                    return frame[1] if frame else 0
                fh.seek(fh.tell() - len(head) + skip)
    except (OSError, ShardError, ValueError):
        pass
    return 0


def zstd_skippable(head: bytes) -> int | None:
    """The whole size of the skippable zstd frame that ``head`` starts, or None."""
    if len(head) >= 8 and head[0] & 0xF0 == 0x50 and head[1:4] == b"\x2a\x4d\x18":
        return 8 + int.from_bytes(head[4:8], "little")
    return None


def zstd_frame_header(head: bytes) -> tuple[int, int] | None:
    """(header length, window bytes) of the zstd frame that ``head`` starts (18 bytes
    hold any header), or None if it starts none. The window is the one the header
    declares, or the content size when that is given and smaller."""
    if len(head) < 6 or head[:4] != b"\x28\xb5\x2f\xfd" or head[4] & 0x08:  # reserved bit
        return None
    fhd = head[4]
    single, fcs_flag = fhd >> 5 & 1, fhd >> 6
    at, window = 5, 0
    if not single:  # the window descriptor: exponent and mantissa
        base = 1 << (10 + (head[5] >> 3))
        window, at = base + (base >> 3) * (head[5] & 7), 6
    at += (0, 1, 2, 4)[fhd & 3]  # the dictionary id
    size = ((1 if single else 0), 2, 4, 8)[fcs_flag]
    if size and len(head) >= at + size:
        content = int.from_bytes(head[at:at + size], "little") + (256 if size == 2 else 0)
        window = content if single else min(window, content)
    return at + size, window


def _read_exact(fh: BinaryIO, n: int) -> bytes:
    parts, got = [], 0
    while got < n:
        b = fh.read(n - got)
        if not b:
            break
        parts.append(b)
        got += len(b)
    return b"".join(parts)


# ---------------------------------------------------------------- codecs

class _GzipMember:
    """A gzip member's decompressobj dressed in the lzma/bz2 interface (needs_input,
    max_length). ISA-L's inflate (``isal``, zlib's interface): 2.3-2.7x zlib's speed,
    measured on the bench's text."""

    def __init__(self) -> None:
        self._d = isal_zlib.decompressobj(wbits=31)
        self._tail = b""
        self.needs_input = True

    def decompress(self, data: bytes, max_length: int) -> bytes:
        out = self._d.decompress(self._tail + data if self._tail else data, max_length)
        self._tail = self._d.unconsumed_tail
        self.needs_input = not self._tail and len(out) < max_length
        return out

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data


def _zstd_member() -> ZstdDecompressor:
    return ZstdDecompressor(options={DecompressionParameter.window_log_max: ZSTD_WINDOW_LOG_MAX})


def _xz_member():
    from etl.liblzma import xz_member  # it builds on this module

    return xz_member()


def _is_zstd_frame(buf: bytes) -> bool:
    return buf[:4] == b"\x28\xb5\x2f\xfd" or (buf[0] & 0xF0 == 0x50 and buf[1:4] == b"\x2a\x4d\x18")


@dataclass(frozen=True)
class Codec:
    name: str
    magic_len: int
    is_member: Callable[[bytes], bool]
    new_member: Callable[[], object] | None
    padding: bytes = b""      # bytes allowed between/after members
    padding_align: int = 1    # padding must be a multiple of this


CODECS = (
    Codec("gzip", 2, lambda b: b[:2] == b"\x1f\x8b", _GzipMember, padding=b"\0"),
    Codec("bzip2", 3, lambda b: b[:3] == b"BZh", bz2.BZ2Decompressor),
    Codec("xz", 6, lambda b: b[:6] == b"\xfd7zXZ\x00", _xz_member, padding=b"\0",
          padding_align=4),
    Codec("zstd", 4, _is_zstd_frame, _zstd_member),
)
BZIP2, XZ, ZSTD = CODECS[1:]
PLAIN = Codec("plain", 0, lambda b: True, None)
DECODE_ERRORS = (zlib.error, isal_zlib.error, OSError, EOFError, lzma.LZMAError, ZstdError,
                 ValueError)


def detect_codec(head: bytes) -> Codec:
    """The codec whose magic bytes start ``head``; plain text otherwise."""
    for codec in CODECS:
        if len(head) >= codec.magic_len and codec.is_member(head):
            return codec
    return PLAIN


class _Reader:
    """Raw reads with a running count of compressed bytes consumed."""

    def __init__(self, fh: BinaryIO, path: str):
        self.fh, self.path, self.bytes_read = fh, path, 0

    def read(self, n: int = READ_SIZE) -> bytes:
        try:
            b = self.fh.read(n)
        except OSError as exc:
            raise ShardError(f"read failed after {self.bytes_read} bytes: {exc}",
                             self.path) from exc
        self.bytes_read += len(b or b"")
        return b or b""

    def readinto(self, view: memoryview) -> int:
        try:
            n = self.fh.readinto(view)
        except OSError as exc:
            raise ShardError(f"read failed after {self.bytes_read} bytes: {exc}",
                             self.path) from exc
        self.bytes_read += n or 0
        return n or 0


class _Fill:
    """A plain stream that ``iter_line_batches`` reads straight into each batch's own
    buffer (``iter_chunks(..., fill=True)`` yields it as its only item)."""

    def __init__(self, head: bytes, reader: _Reader, counter: list[int] | None):
        self.head, self.reader, self.counter = head, reader, counter

    def readinto(self, view: memoryview) -> int:
        if self.head:
            n = min(len(self.head), len(view))
            view[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        n = self.reader.readinto(view)
        self._tally()
        return n

    def _tally(self) -> None:
        """Keep ``counter[0]`` (if given) equal to the compressed bytes read so far."""
        if self.counter is not None:
            self.counter[0] = self.reader.bytes_read


class _DecoderFill(_Fill):
    """A compressed stream that a C library (``etl.libzstd``, ``etl.liblzma``) decodes
    straight into each batch's own buffer: no decompressed piece to make, then join. The
    checks are ``_decode``'s: members one after another, nothing but padding and members
    after the last one, and a stream that ends inside a member is truncated.

    Subclasses make the library's calls: ``_aim`` (the output), ``_room``,
    ``_starved`` (all input used), ``_take`` (more input), ``_step`` (one decode call;
    True when a member ended and all of it is written; raises on damage), ``_unused``
    (input after that member), ``_next_member``, ``_written`` and ``close`` (frees the
    decoder; at the end of the stream, not whenever the last reference goes).
    """

    codec: Codec

    def __init__(self, reader: _Reader, counter: list[int] | None):
        super().__init__(b"", reader, counter)
        self.done = False

    def readinto(self, view: memoryview) -> int:
        import ctypes

        if self.done or not len(view):
            return 0
        reader = self.reader
        target = (ctypes.c_char * len(view)).from_buffer(view)
        self._aim(ctypes.addressof(target), len(view))
        try:
            while self._room():
                if self._starved():
                    data = reader.read()
                    self._tally()
                    if not data:
                        raise CorruptShardError(
                            f"{self.codec.name} stream is truncated: input ended inside a "
                            f"compressed member after {reader.bytes_read} compressed bytes",
                            reader.path)
                    self._take(data)
                if self._step():  # a member ended, all of it written: another, or the end
                    rest, _, more = _between_members(self.codec, self._unused(), reader, 0)
                    self._tally()
                    if not more:
                        self.close()
                        break
                    self._next_member()
                    self._take(rest)
        except BaseException:
            self.close()  # a damaged stream reads no further
            raise
        finally:
            del target  # the buffer's export ends here
        return self._written()

    def _corrupt(self, why: str) -> CorruptShardError:
        return CorruptShardError(f"corrupt {self.codec.name} data near compressed byte "
                                 f"{self.reader.bytes_read}: {why}", self.reader.path)


def _between_members(codec: Codec, buf: bytes, reader: _Reader,
                     pad: int) -> tuple[bytes, int, bool]:
    """Consume padding after a member; say whether another member starts in ``buf``.

    Returns (buf, padding count, another member follows).
    """
    while True:
        if codec.padding:
            stripped = buf.lstrip(codec.padding)
            pad += len(buf) - len(stripped)
            buf = stripped
        if len(buf) < max(codec.magic_len, 1):
            more = reader.read()
            if more:
                buf += more
                continue
            if buf:
                break
            if pad % codec.padding_align:
                raise CorruptShardError(f"{codec.name} stream padding of {pad} bytes is not a "
                                        f"multiple of {codec.padding_align}", reader.path)
            return buf, pad, False
        break
    if pad % codec.padding_align:
        raise CorruptShardError(f"{codec.name} stream padding of {pad} bytes is not a multiple "
                                f"of {codec.padding_align}", reader.path)
    if not codec.is_member(buf):
        raise CorruptShardError(
            f"trailing garbage after the end of the {codec.name} data, near compressed byte "
            f"{reader.bytes_read - len(buf)}", reader.path)
    return buf, 0, True


def _decode(codec: Codec, head: bytes, reader: _Reader) -> Iterator[bytes]:
    """Decompress every member of a stream; raise CorruptShardError on damage."""
    buf, pad, dec = head, 0, codec.new_member()
    while True:
        if dec.eof:
            buf, pad, more = _between_members(codec, dec.unused_data + buf, reader, pad)
            if not more:
                return
            dec = codec.new_member()
        if dec.needs_input:
            data, buf = (buf or reader.read()), b""
            if not data:
                raise CorruptShardError(
                    f"{codec.name} stream is truncated: input ended inside a compressed member "
                    f"after {reader.bytes_read} compressed bytes", reader.path)
        else:
            data = b""
        try:
            out = dec.decompress(data, OUT_CHUNK)
        except DECODE_ERRORS as exc:
            raise CorruptShardError(f"corrupt {codec.name} data near compressed byte "
                                    f"{reader.bytes_read}: {exc}", reader.path) from exc
        if out:
            yield out


def iter_chunks(fh: BinaryIO, path: str, counter: list[int] | None = None,
                codec: Codec | None = None, fill: bool = False,
                shared: bool = False) -> Iterator[bytes]:
    """Yield decompressed pieces of a raw shard stream, codec found by magic bytes.

    ``counter[0]`` (if given) is kept equal to the compressed bytes read so far.
    ``codec`` given: no detection (a part of a plain file may start with any bytes).
    ``fill``: for ``iter_line_batches`` only; plain text from a local file or standard
    input comes as one ``_Fill``, which it reads straight into its batches: no piece is
    joined to the next one (memmove 6.3% of a plain run's CPU down to 3.8%, perf); zstd
    and xz from anywhere as one ``etl.libzstd.ZstdFill`` or ``etl.liblzma.XzFill``,
    which decompress straight into them (zstd: memmove 12.2% of a run's CPU down to
    7.7%, 7% fewer CPU samples, perf); bzip2 from a local file as one
    ``etl.bzip2.Bz2Fill`` (indexed_bzip2's decoder) unless ``shared``: other tasks run
    in this process's threads, and that decoder holds the GIL (libbz2 lets it go).
    """
    reader = _Reader(fh, path)
    head = reader.read()
    while 0 < len(head) < 6:  # short reads from pipes: get enough for the magic
        more = reader.read()
        if not more:
            break
        head += more
    codec = codec or detect_codec(head)
    if fill and codec is PLAIN and isinstance(fh, (io.FileIO, io.BufferedReader)):
        if counter is not None:
            counter[0] = reader.bytes_read
        yield _Fill(head, reader, counter)
        return
    if fill and (codec is ZSTD or codec is XZ):
        from etl import liblzma, libzstd  # they build on this module

        lib, source = (libzstd.Libzstd.get(), libzstd.ZstdFill) if codec is ZSTD \
            else (liblzma.Liblzma.get(), liblzma.XzFill)
        if lib:
            if counter is not None:
                counter[0] = reader.bytes_read
            yield source(head, reader, counter, lib)
            return
    if fill and codec is BZIP2 and not shared:
        from etl import bzip2  # it builds on this module

        if bzip2.usable(fh, reader):
            if counter is not None:
                counter[0] = reader.bytes_read
            yield bzip2.Bz2Fill(fh, reader, counter)
            return
    pieces = _plain(head, reader) if codec is PLAIN else _decode(codec, head, reader)
    for piece in pieces:
        if counter is not None:
            counter[0] = reader.bytes_read
        yield piece
    if counter is not None:
        counter[0] = reader.bytes_read


def codec_of(shard: Shard) -> str:
    """Name of the shard's codec (reads its first bytes)."""
    with open_shard(shard) as fh:
        return detect_codec(_read_exact(fh, 6)).name


def _plain(head: bytes, reader: _Reader) -> Iterator[bytes]:
    if head:
        yield head
    while True:
        b = reader.read(OUT_CHUNK)
        if not b:
            return
        yield b


# ---------------------------------------------------------------- lines

def iter_line_batches(chunks: Iterator[bytes], batch_bytes: int = BATCH_BYTES,
                      max_line: int | None = None,
                      numbering: Numbering | None = None) -> Iterator[LineBatch]:
    """Cut decompressed pieces into batches of whole lines (LF ends a line).

    A last line without a newline counts. CR before LF stays on the line
    (JSON ignores it; rejects strip it when kept). A line longer than ``max_line``
    bytes is not held whole: it comes as a batch of its own with ``too_long`` set to
    its length and only its first ``KEPT_OF_TOO_LONG`` bytes, the rest read past up to
    its newline, so memory stays bounded whatever the input. ``max_line`` must be at
    least ``batch_bytes + OUT_CHUNK`` (``IngestConfig`` sees to it): only a batch's first
    line can then be longer (the others lie within one batch and one piece). None:
    ``MAX_LINE``, or ``batch_bytes + OUT_CHUNK`` if that is more.

    ``numbering`` (given and off): each batch's ``first_line_no`` is left for the reader
    to set (``read_ahead``): counting a batch's lines before the parser's scanner does
    would split it into a list of lines.
    """
    max_line = max_line or max(MAX_LINE, batch_bytes + OUT_CHUNK)
    lines_of = (numbering or Numbering()).lines_of
    chunks = iter(chunks)
    pending: list[bytes] = []
    pending_len, line_no, offset = 0, 1, 0
    for chunk in chunks:
        if isinstance(chunk, _Fill):  # the only item, when there is one
            yield from _filled_batches(chunk, batch_bytes, max_line, lines_of)
            return
        pending.append(chunk)
        pending_len += len(chunk)
        if pending_len < batch_bytes:
            continue
        data = b"".join(pending)
        # only the first line can be that long: past it, read on keeping only its head
        if len(data) > max_line and data.find(b"\n", 0, max_line + 1) < 0:
            end = data.find(b"\n", max_line + 1)
            if end < 0:
                batch, rest = _too_long(data, lambda: next(chunks, None), line_no, offset)
            else:
                batch, rest = _long_line(data, end, line_no, offset), data[end + 1:]
            yield batch
            line_no, offset = line_no + 1, offset + batch.too_long + 1
            pending, pending_len = ([rest], len(rest)) if rest else ([], 0)
            continue
        cut = data.rfind(b"\n")
        if cut < 0:  # one line longer than a batch: keep reading
            pending = [data]
            continue
        batch = LineBatch(None, line_no, offset, memoryview(data)[:cut])  # 8 MB not copied
        yield batch
        line_no += lines_of(batch)
        offset += cut + 1
        rest = data[cut + 1:]
        pending, pending_len = ([rest], len(rest)) if rest else ([], 0)
    data = b"".join(pending)
    if data:
        yield LineBatch(None, line_no, offset, data[:-1] if data.endswith(b"\n") else data)


def _pieces_of(src: _Fill, size: int) -> Callable[[], bytes | None]:
    """``src``'s next bytes (up to ``size``; None at the end), through one reused buffer."""
    buf = bytearray(size)

    def more() -> bytes | None:
        n = src.readinto(memoryview(buf))
        return bytes(buf[:n]) if n else None

    return more


def _too_long(head: bytes, more: Callable[[], bytes | None], line_no: int,
              offset: int) -> tuple[LineBatch, bytes]:
    """The batch of one line over the limit that starts ``head`` (no LF in it), read
    past with ``more()`` (the next bytes; None at the end) up to its LF; and what
    follows that LF. Only the first ``KEPT_OF_TOO_LONG`` bytes are kept."""
    length, rest = len(head), b""
    while (piece := more()) is not None:
        cut = piece.find(b"\n")
        if cut >= 0:
            length += cut
            rest = piece[cut + 1:]
            break
        length += len(piece)
    return _long_line(head, length, line_no, offset), bytes(rest)


def _long_line(head: bytes | memoryview, length: int, line_no: int, offset: int) -> LineBatch:
    """The batch of one line of ``length`` bytes over the limit, keeping its head."""
    batch = LineBatch(None, line_no, offset, bytes(head[:KEPT_OF_TOO_LONG]), too_long=length)
    batch.know_count(1)
    return batch


class Numbering:
    """Whether ``iter_line_batches`` numbers its batches' lines (``on``), or leaves it to
    its reader (``read_ahead``); it can be turned off between two batches."""

    def __init__(self, on: bool = True):
        self.on = on

    def lines_of(self, batch: LineBatch) -> int:
        """The lines to count past ``batch``: none when the reader numbers them."""
        return batch.count if self.on else 0


def _filled_batches(src: _Fill, batch_bytes: int, max_line: int,
                    lines_of: Callable[[LineBatch], int]) -> Iterator[LineBatch]:
    """``iter_line_batches`` over a stream read (plain text) or decompressed (zstd)
    straight into each batch's own buffer.

    A batch's buffer holds the previous batch's unfinished last line, then as much of
    the stream as fits; it is the batch's own (never refilled), like a joined piece.
    """
    from etl._scan import buffer  # not zeroed first: it is filled at once

    rest, line_no, offset = b"", 1, 0
    while True:
        # doubles for a long line, up to one byte past the longest line read whole
        size = min(len(rest) + max(batch_bytes, len(rest)), max(max_line + 1, batch_bytes))
        # in whole MiBs: the next batch's buffer then fits where this one was freed
        # (glibc's heap is never trimmed in workers; sizes that crept up by a line's
        # rest each time grew it: 4x input peaked 208-211 MiB against 199-202)
        buf = buffer(-(-size >> 20) << 20)
        view = memoryview(buf)[:size]
        view[:len(rest)] = rest
        got = len(rest)
        while got < size:
            n = src.readinto(view[got:])
            if not n:
                break
            got += n
        if got < size:  # the end of the stream: the rest is the last batch
            if got:
                yield LineBatch(None, line_no, offset, view[:got - 1 if view[got - 1] == 10
                                                            else got])
            return
        cut = buf.rfind(b"\n", 0, got)
        if cut < 0 and got > max_line:  # read past it, keeping its head
            # pieces of at most max_line - batch_bytes: what follows the line's LF (the
            # next buffer's start) then leaves room to find the next line's end
            piece = max(1, min(OUT_CHUNK, max_line - batch_bytes))
            batch, rest = _too_long(view, _pieces_of(src, piece), line_no, offset)
            yield batch
            line_no, offset = line_no + 1, offset + batch.too_long + 1
            continue
        if cut < 0:  # one line longer than the buffer: keep reading
            rest = bytes(view)
            continue
        batch = LineBatch(None, line_no, offset, view[:cut])
        yield batch
        line_no += lines_of(batch)
        offset += cut + 1
        rest = bytes(view[cut + 1:])


# ---------------------------------------------------------------- reading ahead

def read_ahead(chunks: Iterator[bytes], batch_bytes: int = BATCH_BYTES,
               max_line: int | None = None,
               when: Callable[[], bool] | None = None) -> Iterator[LineBatch]:
    """``iter_line_batches``, with the reading (decompression, the cut into lines) in a
    thread of its own, ahead of the caller's parsing: for a shard that is the only work
    of its core while another core waits (one shard that cannot split, on two cores).
    libzstd, liblzma, ISA-L's zlib (gzip), Python's bz2 and the parser's scanner run
    without the GIL (indexed_bzip2 holds it: there the two threads overlap less).
    ``when`` given: read in turn at first, asking ``when()`` after each batch, and ahead
    once it says yes (the last tasks of a run, once a worker has no task left).

    The same batches, errors and line numbers as ``iter_line_batches``: an error the
    reading raised comes after the batches read before it. Each batch's line numbers
    are set here, once the caller has parsed the batch before it (its scanner counted
    the lines). Up to ``READ_AHEAD_BYTES`` of batches wait (4 of 8 MiB), and one more is
    being read: with only one waiting, each thread often waited for the other, as the
    reading's pace moves (a long-window zstd shard decodes at half speed while its
    window's pages are first touched). When the caller stops early (closes this
    generator), the reading stops after its current batch, and the thread has ended
    when the close returns.
    """
    numbering = Numbering(on=when is not None)
    batches = iter_line_batches(chunks, batch_bytes, max_line, numbering)
    line_no = 1
    try:
        if when is not None:
            for batch in batches:
                yield batch
                line_no = batch.first_line_no + batch.count
                if when():
                    break
            else:
                return
            numbering.on = False  # from the batch after this one, counted here
    except BaseException:
        batches.close()
        raise
    yield from _ahead(batches, line_no, batch_bytes)


def _ahead(batches: Iterator[LineBatch], line_no: int,
           batch_bytes: int) -> Iterator[LineBatch]:
    """``batches`` (not numbered: theirs start at ``line_no``) read in a thread."""
    import queue
    import threading

    handed: queue.Queue = queue.Queue(max(1, READ_AHEAD_BYTES // batch_bytes))
    stop = threading.Event()

    def read() -> None:
        try:
            for batch in batches:
                handed.put((batch, None))
                if stop.is_set():
                    return
            handed.put((None, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            handed.put((None, exc))
        finally:
            batches.close()

    reader = threading.Thread(target=read, name="etl-read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            batch, exc = handed.get()
            if exc is not None:
                raise exc
            if batch is None:
                return
            batch = replace(batch, first_line_no=line_no)
            yield batch
            line_no += batch.count
    finally:
        stop.set()
        while reader.is_alive():  # unblock its put; it sees stop before reading more
            try:
                handed.get(timeout=0.05)
            except queue.Empty:
                pass
        reader.join()
