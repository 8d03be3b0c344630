"""liblzma's stream decoder through ctypes: xz decompressed straight into the buffers of
``etl.shards``' line batches.

Through Python's ``lzma`` module, each decompressed piece is a new bytes object (its
output blocks joined once more inside the module) that the line batches then join
again: two copies of every byte beyond the decoder's own. Here liblzma writes into the
batch's buffer itself (4 xz shards of the bench, one process: 2.16-2.22 CPU-s a shard
against 2.21-2.33).

Which liblzma: the newest of the one that ``lzma-cf`` bundles (a dependency of etl on
Linux: liblzma 5.8.1, built by its wheel) and the one Python's ``lzma`` module is linked
with. The LZMA decoder of 5.6 and later is much faster: one shard of the bench on one
core took 1.34-1.55 s against 2.17-2.40 s with Debian 12's liblzma 5.4.1 (the same
calls, interleaved 4x). Where neither can be reached (a static build, another platform),
``Liblzma.get()`` is None and ``etl.shards`` reads xz in pieces through Python's module.
The decoder is the module's: one stream at a time, no memory limit, integrity checks
verified where liblzma supports them, every error named as the module names it.
"""

from __future__ import annotations

import ctypes
import functools
import glob
import importlib.util
import lzma
import os

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

    def __init__(self, path: str | None, source: str = "python"):
        lib = ctypes.CDLL(path)  # a library, or a module through its dependencies
        stream = ctypes.POINTER(Stream)
        self.decoder = lib.lzma_stream_decoder
        self.decoder.restype = ctypes.c_int
        self.decoder.argtypes = [stream, ctypes.c_uint64, ctypes.c_uint32]
        self.code = lib.lzma_code
        self.code.restype, self.code.argtypes = ctypes.c_int, [stream, ctypes.c_int]
        self.end = lib.lzma_end
        self.end.restype, self.end.argtypes = None, [stream]
        lib.lzma_version_string.restype = ctypes.c_char_p
        self.version = lib.lzma_version_string().decode()
        self.number = lib.lzma_version_number()  # 50080012: 5.8.1 stable
        self.path, self.source = path, source  # source: "lzma-cf" or "python"

    @classmethod
    def get(cls) -> Liblzma | None:
        """The newest liblzma of ``candidates()`` that loads (the first of equals)."""
        if not cls._loaded:
            found = []
            for source, path in candidates():
                try:
                    found.append(cls(path, source))
                except (OSError, AttributeError):  # gone, or without these calls
                    pass
            cls._loaded.append(max(found, key=lambda lib: lib.number, default=None))
        return cls._loaded[0]


def candidates() -> list[tuple[str, str]]:
    """Where a liblzma may be, as (source, path): lzma-cf's own copy (its wheel keeps it
    beside the package, in ``lzma_cf.libs``; found without importing lzma-cf), then the
    one Python's ``lzma`` module is linked with (none if built into Python)."""
    paths = []
    spec = importlib.util.find_spec("lzma_cf")
    if spec and spec.submodule_search_locations:
        for where in spec.submodule_search_locations:
            paths += [("lzma-cf", path) for path in
                      sorted(glob.glob(os.path.join(f"{where}.libs", "liblzma*.so*")))]
    import _lzma

    if getattr(_lzma, "__file__", None):
        paths.append(("python", _lzma.__file__))
    return paths


def xz_member():
    """A decompressor of one xz stream with the interface of Python's
    ``lzma.LZMADecompressor``, for ``etl.shards``' pieces path (parts of a split shard,
    recovery of spool files): lzma-cf's port of that module, over its own liblzma, when
    ``Liblzma.get()`` chose that library (one bench shard in 4 MiB pieces: 1.84-1.86
    CPU-s against 2.65-3.01), else Python's module. Its errors are Python's
    ``lzma.LZMAError``, with the same words."""
    lib = Liblzma.get()
    if lib is None or lib.source != "lzma-cf":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    return _cf_member()()


@functools.cache
def _cf_member() -> type:
    import lzma_cf

    class Member(lzma_cf.LZMADecompressor):
        def __init__(self):
            super().__init__(format=lzma_cf.FORMAT_XZ)

        def decompress(self, data: bytes, max_length: int = -1) -> bytes:
            try:
                return super().decompress(data, max_length)
            except lzma_cf.LZMAError as exc:
                raise lzma.LZMAError(*exc.args) from exc

    return Member


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
