"""libzstd's streaming decoder through ctypes: zstd decompressed straight into the
buffers of ``etl.shards``' line batches, with a window allocator of our own.

The calls are those of the libzstd that backports.zstd carries and exports (no second
copy to build or install); where it does not export them, ``Libzstd.get()`` is None and
``etl.shards`` reads zstd in pieces through backports.zstd, as before. Per process: the
library handle, and the one spare window kept for the next frame or shard.
"""

from __future__ import annotations

import ctypes
import sys
import threading

from etl.shards import ZSTD, ZSTD_WINDOW_LOG_MAX, _DecoderFill, _Reader


class Libzstd:
    """The few calls of libzstd's streaming API that ``ZstdFill`` makes. ``get()``: the
    process's one, or None when backports.zstd's library does not export them."""

    class Buffer(ctypes.Structure):  # ZSTD_inBuffer and ZSTD_outBuffer: the same layout
        _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t),
                    ("pos", ctypes.c_size_t)]

    WINDOW_LOG_MAX = 100  # ZSTD_d_windowLogMax, a stable parameter
    _loaded: list = []

    def __init__(self, path: str):
        lib = ctypes.CDLL(path)
        self.free = lib.ZSTD_freeDCtx
        self.free.argtypes = [ctypes.c_void_p]
        self.windows = Windows.make()
        if self.windows:  # libzstd's experimental API, exported by this build
            made = lib.ZSTD_createDCtx_advanced
            made.restype, made.argtypes = ctypes.c_void_p, [Windows.CustomMem]
            self.create = lambda: made(self.windows.mem)
        else:
            self.create = lib.ZSTD_createDCtx
            self.create.restype, self.create.argtypes = ctypes.c_void_p, []
        self.set = lib.ZSTD_DCtx_setParameter
        self.set.restype, self.set.argtypes = ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int,
                                                                ctypes.c_int]
        buf = ctypes.POINTER(self.Buffer)
        self.stream = lib.ZSTD_decompressStream
        self.stream.restype, self.stream.argtypes = ctypes.c_size_t, [ctypes.c_void_p, buf, buf]
        self.is_error = lib.ZSTD_isError
        self.is_error.restype, self.is_error.argtypes = ctypes.c_uint, [ctypes.c_size_t]
        self.error_name = lib.ZSTD_getErrorName
        self.error_name.restype, self.error_name.argtypes = ctypes.c_char_p, [ctypes.c_size_t]

    @classmethod
    def get(cls) -> Libzstd | None:
        if not cls._loaded:
            from backports.zstd import _zstd
            try:
                cls._loaded.append(cls(_zstd.__file__))
            except (OSError, AttributeError):  # not a shared library, or not exported
                cls._loaded.append(None)
        return cls._loaded[0]


class Windows:
    """libzstd's allocator in a process that reads zstd: its small allocations from
    malloc, and its big ones (the buffer behind a window: the window the frame declares,
    or its content size when stated and smaller; with ``--long=31`` and no stated size,
    2 GiB mapped, of which the pages the shard fills are touched) in a mapping of our
    own that outlives the decoder. The next frame or
    shard takes it back, grown in place if it needs more, instead of faulting in a new
    one: 4 KiB at a time, that costs about 0.1 s of system time per 275 MB. From
    malloc, that reuse depended on where the heap had room (measured: sometimes two
    windows at once, 710 against 497 MiB, and every shard of a run faulting its own).
    At most one spare is kept: no more than the biggest window it has read."""

    BIG = 32 << 20
    Alloc = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
    Free = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)

    class CustomMem(ctypes.Structure):  # ZSTD_customMem
        _fields_ = [("alloc", ctypes.c_void_p), ("free", ctypes.c_void_p),
                    ("opaque", ctypes.c_void_p)]

    @classmethod
    def make(cls) -> Windows | None:
        if not sys.platform.startswith("linux"):  # mremap, and the flag values below
            return None
        libc = ctypes.CDLL(None, use_errno=True)
        return cls(libc) if hasattr(libc, "mremap") else None

    def __init__(self, libc):
        self.malloc, self.cfree = libc.malloc, libc.free
        self.malloc.restype, self.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        self.cfree.argtypes = [ctypes.c_void_p]
        self.mmap, self.mremap, self.munmap = libc.mmap, libc.mremap, libc.munmap
        self.mmap.restype = self.mremap.restype = ctypes.c_void_p
        self.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        self.mremap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, ctypes.c_int]
        self.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self.live: dict[int, int] = {}  # address -> size of the big buffers handed out
        self.spare: tuple[int, int] | None = None
        self.lock = threading.Lock()  # decoders in threads (the threads scheduler, dask's)
        self.callbacks = (self.Alloc(self._alloc), self.Free(self._free))  # kept alive
        self.mem = self.CustomMem(ctypes.cast(self.callbacks[0], ctypes.c_void_p),
                                  ctypes.cast(self.callbacks[1], ctypes.c_void_p), None)

    def _alloc(self, _opaque, size: int) -> int | None:
        if size < self.BIG:
            return self.malloc(size)
        with self.lock:
            return self._map(size)

    def _map(self, size: int) -> int | None:
        spare, self.spare = self.spare, None
        failed = ctypes.c_void_p(-1).value  # MAP_FAILED
        if spare and spare[1] >= size:
            addr, size = spare
        elif spare:  # grown in place when it can be, else moved: its pages come along
            addr = self.mremap(spare[0], spare[1], size, 1)  # MREMAP_MAYMOVE
            if addr == failed:
                self.munmap(*spare)
        else:
            addr = failed
        if addr == failed:  # PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS
            addr = self.mmap(None, size, 3, 0x22, -1, 0)
            if addr == failed:
                return None  # libzstd reports a memory allocation error
        self.live[addr] = size
        return addr

    def _free(self, _opaque, addr: int | None) -> None:
        with self.lock:
            size = self.live.pop(addr, None) if addr else None
            if size is not None:
                self._keep(addr, size)
                return
        self.cfree(addr)

    def _keep(self, addr: int, size: int) -> None:
        freed = (addr, size)
        if self.spare:  # keep the bigger one
            keep, drop = (self.spare, freed) if self.spare[1] >= size else (freed, self.spare)
            self.munmap(*drop)
            freed = keep
        self.spare = freed


class ZstdFill(_DecoderFill):
    """A zstd stream that ``iter_line_batches`` has decompressed straight into each
    batch's own buffer (frames one after another, skippable ones too)."""

    codec = ZSTD

    def __init__(self, head: bytes, reader: _Reader, counter: list[int] | None,
                 lib: Libzstd):
        super().__init__(reader, counter)
        self.lib, self.dctx = lib, lib.create()
        if not self.dctx:
            raise MemoryError("ZSTD_createDCtx failed")
        lib.set(self.dctx, lib.WINDOW_LOG_MAX, ZSTD_WINDOW_LOG_MAX)
        self.inp, self.out = lib.Buffer(), lib.Buffer()
        self._take(head)

    def close(self) -> None:
        """Free the decoder, and with it its window (as big as the shard with --long=31),
        so that the next shard's window can reuse the memory (measured: two windows at
        once otherwise)."""
        self.done = True
        if getattr(self, "dctx", None):
            self.lib.free(self.dctx)
            self.dctx = None

    __del__ = close

    def _take(self, data: bytes) -> None:
        self.data = data  # kept alive while libzstd reads it
        self.inp.ptr = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)
        self.inp.size, self.inp.pos = len(data), 0

    def _aim(self, address: int, size: int) -> None:
        self.out.ptr, self.out.size, self.out.pos = address, size, 0

    def _room(self) -> bool:
        return self.out.pos < self.out.size

    def _starved(self) -> bool:
        return self.inp.pos == self.inp.size

    def _step(self) -> bool:
        ret = self.lib.stream(self.dctx, self.out, self.inp)
        if self.lib.is_error(ret):
            raise self._corrupt(self.lib.error_name(ret).decode())
        return ret == 0

    def _unused(self) -> bytes:
        return self.data[self.inp.pos:]

    def _next_member(self) -> None:
        pass  # the decoder goes on to the next frame by itself

    def _written(self) -> int:
        return self.out.pos
