"""liblzma's stream decoder through ctypes: xz decompressed straight into the buffers of
``etl.shards``' line batches.

Through Python's ``lzma`` module, each decompressed piece is a new bytes object (its
output blocks joined once more inside the module) that the line batches then join
again: two copies of every byte beyond the decoder's own. Here liblzma writes into the
batch's buffer itself (4 xz shards of the bench, one process: 2.16-2.22 CPU-s a shard
against 2.21-2.33).

The calls are those of the liblzma that Python's ``lzma`` module is linked with (no
second copy to build or install); where they cannot be reached (a static build, another
platform), ``Liblzma.get()`` is None and ``etl.shards`` reads xz in pieces, as before.
The decoder is the module's: one stream at a time, no memory limit, integrity checks
verified where liblzma supports them, every error named as the module names it.
"""

from __future__ import annotations

import ctypes

from etl.shards import XZ, _DecoderFill, _Reader

OK, STREAM_END, MEM_ERROR = 0, 1, 5  # lzma_ret
RUN = 0  # lzma_action LZMA_RUN
NO_LIMIT = (1 << 64) - 1
ERRORS = {  # lzma_ret -> what Python's lzma module says (Modules/_lzmamodule.c)
    3: "Unsupported integrity check", 6: "Memory usage limit exceeded",
    7: "Input format not supported by decoder", 8: "Invalid or unsupported options",
    9: "Corrupt input data", 10: "Insufficient buffer space", 11: "Internal error"}


class Stream(ctypes.Structure):
    """lzma_stream (lzma/base.h); LZMA_STREAM_INIT is all zeros, as ctypes makes it."""

    _fields_ = [("next_in", ctypes.c_void_p), ("avail_in", ctypes.c_size_t),
                ("total_in", ctypes.c_uint64), ("next_out", ctypes.c_void_p),
                ("avail_out", ctypes.c_size_t), ("total_out", ctypes.c_uint64),
                ("allocator", ctypes.c_void_p), ("internal", ctypes.c_void_p),
                ("reserved_ptr", ctypes.c_void_p * 4), ("seek_pos", ctypes.c_uint64),
                ("reserved_int2", ctypes.c_uint64), ("reserved_int3", ctypes.c_size_t),
                ("reserved_int4", ctypes.c_size_t), ("reserved_enum", ctypes.c_int * 2)]


class Liblzma:
    """The three calls ``XzFill`` makes. ``get()``: the process's one, or None."""

    _loaded: list = []

    def __init__(self, path: str | None):
        lib = ctypes.CDLL(path)  # the module's own library, through its dependencies
        stream = ctypes.POINTER(Stream)
        self.decoder = lib.lzma_stream_decoder
        self.decoder.restype = ctypes.c_int
        self.decoder.argtypes = [stream, ctypes.c_uint64, ctypes.c_uint32]
        self.code = lib.lzma_code
        self.code.restype, self.code.argtypes = ctypes.c_int, [stream, ctypes.c_int]
        self.end = lib.lzma_end
        self.end.restype, self.end.argtypes = None, [stream]

    @classmethod
    def get(cls) -> Liblzma | None:
        if not cls._loaded:
            import _lzma

            try:
                cls._loaded.append(cls(getattr(_lzma, "__file__", None)))
            except (OSError, AttributeError):  # built in, or static: nothing to call
                cls._loaded.append(None)
        return cls._loaded[0]


class XzFill(_DecoderFill):
    """An xz stream that ``iter_line_batches`` has decompressed straight into each
    batch's own buffer (streams one after another, with padding between them)."""

    codec = XZ

    def __init__(self, head: bytes, reader: _Reader, counter: list[int] | None,
                 lib: Liblzma):
        super().__init__(reader, counter)
        self.lib, self.strm, self.live, self.size = lib, Stream(), False, 0
        self._next_member()
        self._take(head)

    def close(self) -> None:
        """Free the decoder and its dictionary (up to 64 MiB at xz -9)."""
        self.done = True
        if getattr(self, "live", False):
            self.lib.end(ctypes.byref(self.strm))
            self.live = False

    __del__ = close

    def _next_member(self) -> None:
        ret = self.lib.decoder(ctypes.byref(self.strm), NO_LIMIT, 0)  # reuses its memory
        if ret != OK:
            raise MemoryError("lzma_stream_decoder failed") if ret == MEM_ERROR \
                else self._corrupt(ERRORS.get(ret, f"Unrecognized error from liblzma: {ret}"))
        self.live = True

    def _take(self, data: bytes) -> None:
        self.data = data  # kept alive while liblzma reads it
        self.strm.next_in = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)
        self.strm.avail_in = len(data)

    def _aim(self, address: int, size: int) -> None:
        self.strm.next_out, self.strm.avail_out, self.size = address, size, size

    def _room(self) -> bool:
        return self.strm.avail_out > 0

    def _starved(self) -> bool:
        return self.strm.avail_in == 0

    def _step(self) -> bool:
        ret = self.lib.code(ctypes.byref(self.strm), RUN)
        if ret == OK:
            return False
        if ret == STREAM_END:
            return True
        if ret == MEM_ERROR:
            raise MemoryError("liblzma ran out of memory")
        raise self._corrupt(ERRORS.get(ret, f"Unrecognized error from liblzma: {ret}"))

    def _unused(self) -> bytes:
        return self.data[len(self.data) - self.strm.avail_in:]

    def _written(self) -> int:
        return self.size - self.strm.avail_out
