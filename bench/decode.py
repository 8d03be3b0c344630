"""Decompression alone through the decoder etl itself uses, for a limit row beside the
command-line tool's: ``python bench/decode.py FILE ... > /dev/null``.

etl's own fill path, read into one reused 1 MiB buffer that is written to standard
output, as ``xz -dc`` and ``bzip2 -dc`` write their own:

- xz: ``etl.liblzma.XzFill``, on the liblzma that ``Liblzma.get()`` loads: lzma-cf's
  5.8 where installed, which decodes much faster than the ``xz`` tool of Debian 12,
  linked with liblzma 5.4;
- bz2: ``etl.bzip2.Bz2Fill``, indexed_bzip2's decoder on one thread, where the
  ``bzip2`` tool has libbz2.

``--version`` prints which liblzma and which indexed_bzip2 those are.
"""

from __future__ import annotations

import sys

from etl.bzip2 import Bz2Fill
from etl.liblzma import Liblzma, XzFill
from etl.shards import iter_chunks

OUT = 1 << 20


def decode(path: str, write) -> int:
    """Decode the xz or bzip2 file at ``path`` through etl's fill path; return the bytes
    written."""
    with open(path, "rb", buffering=0) as fh:
        [src] = iter_chunks(fh, path, fill=True)
        if type(src) not in (XzFill, Bz2Fill):
            raise SystemExit(f"decode.py: {path} is not read through etl.liblzma or "
                             "etl.bzip2")
        view, total = memoryview(bytearray(OUT)), 0
        while n := src.readinto(view):
            write(view[:n])
            total += n
    return total


def main(argv: list[str]) -> int:
    if argv[:1] == ["--version"]:
        import indexed_bzip2

        lib = Liblzma.get()
        print(f"liblzma {lib.version} ({lib.source})" if lib else "no liblzma")
        print(f"indexed_bzip2 {indexed_bzip2.__version__}")
        return 0
    for path in argv:
        decode(path, sys.stdout.buffer.write)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
