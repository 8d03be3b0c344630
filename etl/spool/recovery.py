"""Recover ``.part`` shards a killed spooler left behind: cut back to whole frames, seal.

The writer appends one complete frame (zstd frame, gzip member, or plain
lines) per flush, and only whole lines go into a frame. After SIGKILL or a
power loss the file is therefore good up to some frame boundary and may end
in half a frame (or, after a power loss, in zeros). The rule:

- ``zst`` / ``gz``: keep the longest prefix of complete frames that decode
  without error (checksums included) and whose content ends with LF;
- ``none``: keep everything up to the last LF.

The cut-off bytes are not thrown away: they go to
``<feed>/_recovered/<shard name>.cut``. The kept prefix is fsynced and renamed
to the shard's sealed name; a ``.part`` with nothing to keep is removed.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass
from typing import BinaryIO

from etl.shards import DECODE_ERRORS, OUT_CHUNK, READ_SIZE, detect_codec
from etl.spool import rotation
from etl.spool.files import fsync_dir, makedirs_durable, write_all

log = logging.getLogger("etl.spool")


@dataclass(frozen=True)
class Recovered:
    """What recovery did with one ``.part``: the sealed path (None if nothing was kept)."""

    part: str
    path: str | None
    kept_bytes: int
    lines: int
    cut_bytes: int
    cut_path: str | None


def whole_frames(fh: BinaryIO) -> tuple[int, int]:
    """(bytes, lines) of the longest prefix of complete frames that each end with LF."""
    head = fh.read(READ_SIZE)
    codec = detect_codec(head)
    if codec.new_member is None:
        return 0, 0
    good = lines = 0
    pending, pos = head, 0  # pos: file offset of pending[0]
    while True:
        while len(pending) < codec.magic_len:
            more = fh.read(READ_SIZE)
            if not more:
                return good, lines
            pending += more
        if not codec.is_member(pending):
            return good, lines
        frame = _one_frame(codec, pending, fh)
        if frame is None:
            return good, lines
        size, frame_lines, last, pending = frame
        pos += size
        if last != b"\n":
            return good, lines
        good, lines = pos, lines + frame_lines


def _one_frame(codec, pending: bytes, fh: BinaryIO):
    """Decode one frame starting at ``pending``: (size, LFs, last byte, rest) or None."""
    dec, consumed, lfs, last = codec.new_member(), 0, 0, b""
    while not dec.eof:
        if dec.needs_input:
            data, pending = (pending or fh.read(READ_SIZE)), b""
            if not data:
                return None  # the file ends inside this frame
            consumed += len(data)
        else:
            data = b""
        try:
            out = dec.decompress(data, OUT_CHUNK)
        except DECODE_ERRORS:
            return None
        if out:
            lfs += out.count(b"\n")
            last = out[-1:]
    rest = dec.unused_data
    return consumed - len(rest), lfs, last, rest


def whole_lines(fh: BinaryIO, size: int) -> int:
    """Bytes of a plain file up to and including its last LF (0 if it has none)."""
    end = size
    while end > 0:
        start = max(0, end - READ_SIZE)
        fh.seek(start)
        nl = fh.read(end - start).rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        end = start
    return 0


def _count_lines(fh: BinaryIO, end: int) -> int:
    fh.seek(0)
    lines, left = 0, end
    while left > 0:
        block = fh.read(min(READ_SIZE, left))
        if not block:
            break
        lines += block.count(b"\n")
        left -= len(block)
    return lines


def recover_part(part: str, feed_dir: str) -> Recovered:
    """Cut ``part`` back to whole frames, keep the rest in ``_recovered/``, seal it."""
    codec = rotation.codec_of_name(os.path.basename(part))
    size = os.path.getsize(part)
    with open(part, "rb") as fh:
        if codec == "none":
            keep = whole_lines(fh, size)
            lines = _count_lines(fh, keep)
        else:
            keep, lines = whole_frames(fh)
    cut_path = _save_cut(part, keep, size, feed_dir) if keep < size else None
    if keep == 0:
        os.remove(part)
        fsync_dir(os.path.dirname(part))
        return Recovered(part, None, 0, 0, size, cut_path)
    final = part[: -len(rotation.PART)]
    if os.path.exists(final):
        raise FileExistsError(f"cannot recover {part}: {final} exists already; rename the "
                              ".part to a free seq by hand and restart")
    with open(part, "r+b") as fh:
        fh.truncate(keep)
        os.fsync(fh.fileno())
    os.rename(part, final)
    fsync_dir(os.path.dirname(final))
    return Recovered(part, final, keep, lines, size - keep, cut_path)


def _save_cut(part: str, keep: int, size: int, feed_dir: str) -> str:
    directory = os.path.join(feed_dir, rotation.RECOVERED_DIR)
    makedirs_durable(directory)
    name = os.path.basename(part)[: -len(rotation.PART)] + ".cut"
    path = os.path.join(directory, name)
    with open(part, "rb") as src, open(path, "wb") as dst:
        src.seek(keep)
        for block in iter(lambda: src.read(READ_SIZE), b""):
            write_all(dst.fileno(), block)
        os.fsync(dst.fileno())
    fsync_dir(directory)
    return path


def find_parts(feed_dir: str) -> list[str]:
    """Every shard ``.part`` under ``feed_dir`` (``_``-prefixed folders skipped), sorted."""
    found = []
    for root, dirs, files in os.walk(feed_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        found += [os.path.join(root, f) for f in files
                  if f.endswith(rotation.PART) and rotation.codec_of_name(f)]
    return sorted(found)


def recover_feed(feed_dir: str) -> list[Recovered]:
    """Recover every leftover ``.part`` of a feed (call with the feed lock held)."""
    done = []
    for part in find_parts(feed_dir):
        rec = recover_part(part, feed_dir)
        done.append(rec)
        extra = {"event": "spool.recovered", "data": asdict(rec)}
        if rec.path:
            log.info("recovered %s: %d lines, %d bytes kept, %d bytes cut%s", rec.path,
                     rec.lines, rec.kept_bytes, rec.cut_bytes,
                     f" (saved in {rec.cut_path})" if rec.cut_path else "", extra=extra)
        else:
            log.warning("recovered %s: no whole line in it, removed%s", part,
                        f"; its {rec.cut_bytes} bytes are in {rec.cut_path}"
                        if rec.cut_bytes else "", extra=extra)
    return done
