"""The output folder, local or an fsspec URL (``s3://bucket/processed``), and the few
file operations the stages need.

Local folders use the OS directly (renames are atomic, files are fsynced); URLs go
through fsspec, where a rename may be a copy then a delete: readers never look at
``.``-prefixed temporary names and a shard counts only once its manifest exists, so
a half-finished rename is redone by the next run.
"""

from __future__ import annotations

import glob as globlib
import os
import posixpath
from functools import cached_property


def temp_name(path: str) -> str:
    """The hidden temporary name a file is written under before its rename."""
    head, tail = posixpath.split(path)
    return posixpath.join(head, f".{tail}.tmp")


class Folder:
    """A folder of the output tree; paths below it are joined with ``/``."""

    def __init__(self, root: str):
        self.local = "://" not in root
        if self.local:
            self.root = os.path.abspath(root)
        else:
            import fsspec  # here: a local run never pays its import (0.06-0.1 s)

            self.fs, path = fsspec.core.url_to_fs(root)
            self.root = path.rstrip("/")

    def join(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    def rel(self, path: str) -> str:
        return posixpath.relpath(path, self.root) if self.local else path[len(self.root) + 1:]

    def url(self, path: str) -> str:
        """A path other tools (DuckDB, dask) can open."""
        return path if self.local else self.fs.unstrip_protocol(path)

    @cached_property
    def arrow_fs(self):
        """A pyarrow filesystem for URLs, None for local paths."""
        if self.local:
            return None
        from pyarrow.fs import FSSpecHandler, PyFileSystem

        return PyFileSystem(FSSpecHandler(self.fs))

    def makedirs(self, path: str) -> None:
        if self.local:
            os.makedirs(path, exist_ok=True)
        else:
            self.fs.makedirs(path, exist_ok=True)

    def exists(self, path: str) -> bool:
        return os.path.exists(path) if self.local else self.fs.exists(path)

    def replace(self, src: str, dst: str) -> None:
        if self.local:
            os.replace(src, dst)
        else:
            self.fs.mv(src, dst)

    def remove(self, path: str) -> None:
        """Delete a file; a missing one is fine."""
        try:
            os.remove(path) if self.local else self.fs.rm(path)
        except FileNotFoundError:
            pass

    def glob(self, pattern: str) -> list[str]:
        """Paths matching ``pattern`` (a path below the root, with glob characters)."""
        return sorted(globlib.glob(pattern) if self.local else self.fs.glob(pattern))

    def read_bytes(self, path: str) -> bytes:
        if self.local:
            with open(path, "rb") as fh:
                return fh.read()
        return self.fs.cat_file(path)

    def write_atomic(self, path: str, data: bytes) -> None:
        """Write under a temporary name, flush (fsync locally), then rename into place."""
        tmp = temp_name(path)
        self.makedirs(posixpath.dirname(path))
        try:
            if self.local:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            else:
                with self.fs.open(tmp, "wb") as fh:
                    fh.write(data)
        except BaseException:  # e.g. the disk is full: no half-written temporary file stays
            self.remove(tmp)
            raise
        self.replace(tmp, path)

    def escape(self, text: str) -> str:
        """``text`` with glob characters made literal."""
        return globlib.escape(text)
