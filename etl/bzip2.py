"""bzip2 from a local file through indexed_bzip2's decoder: decompressed straight into
the buffers of ``etl.shards``' line batches, with ``etl.shards``' rules kept.

Why: Python's ``bz2`` module decodes with libbz2, as the ``bzip2`` tool does, and
etl's own work came on top; indexed_bzip2's decoder, on one thread, is faster than
libbz2 (see ``Bz2Fill``), so etl keeps up with the tool it is measured against.

indexed_bzip2 checks every block's CRC and each stream's, and fails a stream that ends
early, but it does not fail what follows the last stream (it warns on standard error),
and it cannot decode the randomised blocks of bzip2 0.9.0. So at the first doubt (an
error, randomised blocks, the file not read to its end, or its last bytes not a
stream's end-of-stream marker and CRC), the file is decoded again from its start
through libbz2, the bytes already given skipped, and ``etl.shards`` rules as before:
trailing garbage, truncation and damage fail the shard in the same words, near the
same byte.

Only for a local, seekable file read from its start (the decoder reads it by its file
descriptor); standard input, URLs and the pieces path go through libbz2 as before.
"""

from __future__ import annotations

import io
import os
import stat

from etl.errors import CorruptShardError
from etl.shards import BZIP2, _decode, _Fill, _Reader

EOS_MAGIC = 0x177245385090  # the 48-bit end-of-stream marker, then a 32-bit CRC
TAIL = 11                   # marker + CRC (10 bytes) + up to 7 padding bits


def usable(fh, reader: _Reader) -> bool:
    """Whether ``fh`` can go to indexed_bzip2: a local regular file, read from its
    start so far (only the head), and the module installed."""
    if not isinstance(fh, (io.FileIO, io.BufferedReader)):
        return False
    try:
        import indexed_bzip2  # noqa: F401
        return stat.S_ISREG(os.fstat(fh.fileno()).st_mode) and fh.tell() == reader.bytes_read
    except (ImportError, OSError, ValueError):
        return False


def ends_with_stream_end(tail: bytes) -> bool:
    """Whether ``tail`` (a file's last bytes) ends with a bzip2 end-of-stream marker, its
    CRC and fewer than 8 padding bits: that is, nothing follows the last stream. (The
    marker is 48 bits: garbage that happens to end so is left to chance, 1 in 2**45.)"""
    bits, total = int.from_bytes(tail, "big"), len(tail) * 8
    return any(total >= pad + 80 and (bits >> (pad + 32)) & ((1 << 48) - 1) == EOS_MAGIC
               for pad in range(8))


class Bz2Fill(_Fill):
    """A local bzip2 file that ``iter_line_batches`` has decompressed straight into each
    batch's own buffer: by indexed_bzip2 while all is well; from the first doubt on (an
    error, randomised blocks, anything after the last stream), by libbz2 from the
    file's start, skipping what was given, so that the verdict and its words are
    ``etl.shards``' own (truncated, trailing garbage, corrupt, near which byte)."""

    def __init__(self, fh, reader: _Reader, counter: list[int] | None):
        import indexed_bzip2

        super().__init__(b"", reader, counter)
        self.fh, self.size = fh, os.fstat(fh.fileno()).st_size
        self.file = indexed_bzip2.open(fh.fileno(), parallelization=1)
        self.given = 0                    # decompressed bytes given so far
        self.pieces, self.pending = None, b""  # libbz2's, after a doubt
        self.done = False

    def readinto(self, view: memoryview) -> int:
        if self.done or not len(view):
            return 0
        if self.pieces is None:
            try:
                n = self.file.readinto(view)
            except (RuntimeError, ValueError, OSError):
                n = None  # damaged, or randomised blocks: libbz2 decides
            if n:
                self.given += n
                if self.counter is not None:
                    self.counter[0] = self.file.tell_compressed() // 8
                return n
            if n == 0 and self._ended_cleanly():
                self._close()
                self.done = True
                if self.counter is not None:
                    self.counter[0] = self.size
                return 0
            self._close()
            self._to_libbz2()
        return self._from_libbz2(view)

    def _ended_cleanly(self) -> bool:
        """All of the file read (the decoder reads a byte past a stream's end, looking for
        the next), and the file ends where a stream ends."""
        if self.file.tell_compressed() < self.size * 8:
            return False
        return ends_with_stream_end(os.pread(self.fh.fileno(), TAIL, max(0, self.size - TAIL)))

    def _close(self) -> None:
        file, self.file = self.file, None
        if file is not None:
            file.close()

    def _to_libbz2(self) -> None:
        """Decode again from the start through libbz2, up to what was given."""
        self.fh.seek(0)
        self.reader = _Reader(self.fh, self.reader.path)
        self.pieces, skip = _decode(BZIP2, b"", self.reader), self.given
        while skip:
            piece = next(self.pieces, b"")
            if not piece:  # cannot be: both decoders check every block's CRC
                raise CorruptShardError("bzip2 data decodes shorter on a second reading",
                                        self.reader.path)
            if len(piece) > skip:
                self.pending = piece[skip:]
                break
            skip -= len(piece)

    def _from_libbz2(self, view: memoryview) -> int:
        if not self.pending:
            self.pending = next(self.pieces, b"")
            self._tally()
            if not self.pending:
                self.done = True
                return 0
        n = min(len(view), len(self.pending))
        view[:n] = self.pending[:n]
        self.pending = self.pending[n:]
        return n
