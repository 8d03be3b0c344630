"""Shard files on disk: one frame per flush, fsync, atomic seal, the rejects log, the feed lock.

A shard is written as ``<name>.part``. Every flush appends one complete,
self-contained frame holding only whole lines: a zstd frame (with checksum)
for ``zst``, a gzip member for ``gz``, the lines themselves for ``none``. So
every frame boundary is a line boundary, and after a crash the ``.part`` is
good up to its last complete frame (see ``etl.spool.recovery``). Multi-frame
zstd and multi-member gzip are ordinary files to ``etl ingest`` and the
command-line tools.

Sealing fsyncs the file, renames ``.part`` to the final name and fsyncs the
directory: a sealed shard is complete and is never opened for writing again.
Everything in this module is blocking and runs in the feed's writer thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import zstandard

from etl.errors import ConfigError
from etl.spool import rotation
from etl.spool.lines import Reject

ZSTD_LEVEL = 3  # ~300 MB/s per core at about 1:5 on Reddit comments
GZIP_LEVEL = 6  # gzip's own default
LOCK_NAME = "_spool.lock"  # _-prefixed: ingest never takes it


@dataclass(frozen=True)
class Sealed:
    """A shard that was completed: its final path, lines and bytes on disk."""

    path: str
    lines: int
    bytes: int


def make_encoder(codec: str) -> Callable[[bytes], bytes]:
    """``codec`` -> a function turning whole lines into one complete, self-contained frame."""
    if codec == "zst":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress
    if codec == "gz":
        def gzip_member(data: bytes) -> bytes:
            packer = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 31)  # 31: gzip header + CRC
            return packer.compress(data) + packer.flush()
        return gzip_member
    if codec == "none":
        return bytes
    raise ValueError(f"unknown codec {codec!r}")


def fsync_dir(path: str) -> None:
    """Make a rename or a new entry in directory ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs_durable(path: str) -> None:
    """``os.makedirs`` that also fsyncs the parent of every directory it creates."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    makedirs_durable(parent)
    try:
        os.mkdir(path)
    except FileExistsError:
        return
    fsync_dir(parent)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class PartFile:
    """One shard being written: ``<final>.part``, created exclusively, appended, then sealed."""

    def __init__(self, final: str, window: int):
        self.final, self.path, self.window = final, final + rotation.PART, window
        self.bytes = self.lines = 0
        directory = os.path.dirname(final)
        makedirs_durable(directory)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        fsync_dir(directory)

    def write(self, frame: bytes, lines: int) -> None:
        """Append one complete frame and fsync it."""
        write_all(self._fd, frame)
        os.fsync(self._fd)
        self.bytes += len(frame)
        self.lines += lines

    def seal(self) -> Sealed:
        """fsync, close, rename to the final name (never over an existing file), fsync the dir."""
        os.fsync(self._fd)
        os.close(self._fd)
        if os.path.exists(self.final):
            raise FileExistsError(errno.EEXIST, f"{self.final} exists already; {self.path} is "
                                  "kept as is: rename it to a free seq by hand", self.final)
        os.rename(self.path, self.final)
        fsync_dir(os.path.dirname(self.final))
        return Sealed(self.final, self.lines, self.bytes)

    def abandon(self) -> None:
        """Close without sealing (the writer failed): the next start recovers the ``.part``."""
        try:
            os.close(self._fd)
        except OSError:
            pass


class RejectsLog:
    """``<feed>/_rejects/<feed>-<window stamp>.jsonl``, appended, one JSON object per reject."""

    def __init__(self, path: str, window: int):
        self.path, self.window = path, window
        makedirs_durable(os.path.dirname(path))
        self._fh = open(path, "ab")

    def write(self, rejects: list[Reject]) -> None:
        self._fh.write(b"".join(r.record() for r in rejects))
        self._fh.flush()

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


class ShardSink:
    """The files of one feed: frames into the current window's ``.part``, rolls, seals.

    Only the feed's writer thread calls it, one call at a time. Roll decisions
    are ``rotation.should_roll`` with the arrival time of the data passed in.
    """

    def __init__(self, out: str, feed: str, codec: str, window_seconds: int, max_bytes: int):
        self.out, self.feed, self.codec = out, feed, codec
        self.window_seconds, self.max_bytes = window_seconds, max_bytes
        self._encode = make_encoder(codec)
        self._part: PartFile | None = None
        self._rejects: RejectsLog | None = None

    @property
    def window(self) -> int | None:
        """Start of the open shard's window, None when no shard is open."""
        return self._part.window if self._part else None

    def append(self, data: bytes, lines: int, rejects: list[Reject], at: float) -> list[Sealed]:
        """Write lines (and rejects) that arrived at ``at``; return the shards this sealed."""
        if rejects:
            self._rejects_log(at).write(rejects)
        if not data:
            return []
        frame = self._encode(data)
        part, sealed = self._part, []
        if part and rotation.should_roll(part.window, at, part.bytes, self.window_seconds,
                                         self.max_bytes, len(frame)):
            sealed.append(self.seal())
        if self._part is None:
            self._part = self._open(rotation.window_start(at, self.window_seconds))
        self._part.write(frame, lines)
        return sealed

    def seal_ended(self, now: float) -> list[Sealed]:
        """Seal the open shard if its window ended by ``now``; close an ended rejects log."""
        ws = self.window_seconds
        if self._rejects and now >= self._rejects.window + ws:
            self._rejects.close()
            self._rejects = None
        part = self._part
        if part and rotation.should_roll(part.window, now, part.bytes, ws, self.max_bytes):
            return [self.seal()]
        return []

    def seal(self) -> Sealed | None:
        """Seal the open shard now (None if none is open)."""
        part, self._part = self._part, None
        return part.seal() if part else None

    def close(self) -> list[Sealed]:
        """Seal everything: the last call before the spooler exits."""
        if self._rejects:
            self._rejects.close()
            self._rejects = None
        sealed = self.seal()
        return [sealed] if sealed else []

    def abandon(self) -> None:
        """Stop without sealing (after a write error); the ``.part`` is recovered on start."""
        if self._part:
            self._part.abandon()
            self._part = None

    def _open(self, window: int) -> PartFile:
        directory = os.path.join(self.out, rotation.day_dir(self.feed, window))
        names = os.listdir(directory) if os.path.isdir(directory) else []
        seq = rotation.next_seq(names, self.feed, window)
        while True:
            final = os.path.join(self.out, rotation.shard_path(self.feed, window, seq, self.codec))
            try:
                return PartFile(final, window)
            except FileExistsError:
                seq += 1

    def _rejects_log(self, at: float) -> RejectsLog:
        window = rotation.window_start(at, self.window_seconds)
        if self._rejects and self._rejects.window != window:
            self._rejects.close()
            self._rejects = None
        if self._rejects is None:
            path = os.path.join(self.out, rotation.rejects_path(self.feed, window))
            self._rejects = RejectsLog(path, window)
        return self._rejects


def lock_feed(feed_dir: str) -> int:
    """Take ``<feed>/_spool.lock`` so two spoolers never write (or recover) one feed.

    Returns the lock's file descriptor; the lock lasts until the process exits.
    """
    makedirs_durable(feed_dir)
    path = os.path.join(feed_dir, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ConfigError("another spooler is writing this feed (its lock is held); stop it "
                          "or give this one another --feed or --out", path) from None
    os.ftruncate(fd, 0)
    write_all(fd, f"{os.getpid()}\n".encode())
    return fd
