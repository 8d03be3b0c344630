"""Decompression alone through the decoder etl itself uses, for a limit row beside the
command-line tool's: ``python bench/decode.py FILE ... > /dev/null``.

xz: etl's own fill path (``etl.liblzma.XzFill``, on the liblzma that
``Liblzma.get()`` loads: lzma-cf's 5.8 where installed, which decodes much faster than
the ``xz`` tool of Debian 12, linked with liblzma 5.4), read into one reused 1 MiB
buffer that is written to standard output, as ``xz -dc`` writes its own.
``--version`` prints which liblzma that is.
"""

from __future__ import annotations

import sys

from etl.liblzma import Liblzma, XzFill
from etl.shards import iter_chunks

OUT = 1 << 20


def decode(path: str, write) -> int:
    """Decode the xz file at ``path`` through etl's fill path; return the bytes written."""
    with open(path, "rb") as fh:
        [src] = iter_chunks(fh, path, fill=True)
        if type(src) is not XzFill:
            raise SystemExit(f"decode.py: {path} is not read through etl.liblzma")
        view, total = memoryview(bytearray(OUT)), 0
        while n := src.readinto(view):
            write(view[:n])
            total += n
    return total


def main(argv: list[str]) -> int:
    lib = Liblzma.get()
    if lib is None:
        print("decode.py: no liblzma can be loaded", file=sys.stderr)
        return 2
    if argv[:1] == ["--version"]:
        print(f"liblzma {lib.version} ({lib.source})")
        return 0
    for path in argv:
        decode(path, sys.stdout.buffer.write)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
