"""Decompression alone through the decoder etl itself uses, for a limit row beside the
command-line tool's: ``python bench/decode.py FILE ... > /dev/null``.

xz: the liblzma that ``etl.liblzma.Liblzma.get()`` loads (lzma-cf's 5.8 where installed,
which decodes much faster than the ``xz`` tool of Debian 12, linked with liblzma 5.4).
Each stream is decoded into one reused 1 MiB buffer that is written to standard output,
as ``xz -dc`` writes its own; padding and many streams in one file are not handled (the
bench's files are one stream each). ``--version`` prints which liblzma that is.
"""

from __future__ import annotations

import ctypes
import sys

from etl.liblzma import NO_LIMIT, OK, STREAM_END, Liblzma, Stream

OUT = 1 << 20


def decode(lib: Liblzma, data: bytes, write) -> int:
    """Decode one xz stream held in ``data``; return the bytes written."""
    strm, out = Stream(), ctypes.create_string_buffer(OUT)
    if lib.decoder(ctypes.byref(strm), NO_LIMIT, 0) != OK:
        raise SystemExit("lzma_stream_decoder failed")
    strm.next_in = ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p)
    strm.avail_in = len(data)
    total = 0
    try:
        while True:
            strm.next_out, strm.avail_out = ctypes.addressof(out), OUT
            ret = lib.code(ctypes.byref(strm), 0)
            n = OUT - strm.avail_out
            write(memoryview(out)[:n])
            total += n
            if ret == STREAM_END:
                return total
            if ret != OK:
                raise SystemExit(f"liblzma error {ret}")
    finally:
        lib.end(ctypes.byref(strm))


def main(argv: list[str]) -> int:
    lib = Liblzma.get()
    if lib is None:
        print("decode.py: no liblzma can be loaded", file=sys.stderr)
        return 2
    if argv[:1] == ["--version"]:
        print(f"liblzma {lib.version} ({lib.source})")
        return 0
    write = sys.stdout.buffer.write
    for path in argv:
        with open(path, "rb") as fh:
            decode(lib, fh.read(), write)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
