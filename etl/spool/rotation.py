"""Pure: when a window starts, when a shard file rolls, and what the file is called.

No I/O and no clock of its own: every function takes ``now`` (UTC epoch
seconds) from its caller, so the rolling rules are tested with plain numbers.

Windows are aligned to multiples of the window length since the epoch (UTC):
``--window 60`` starts one every minute on the minute, ``--window 3600`` every
hour on the hour. A sealed shard is named after its window's start::

    <feed>/YYYY/MM/DD/<feed>-<YYYYMMDDTHHMMSSZ>-<seq>.ndjson.zst

``seq`` numbers the files of one window (``--max-bytes`` rolls, restarts) from 0.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from types import MappingProxyType

SUFFIXES = MappingProxyType({"zst": ".ndjson.zst", "gz": ".ndjson.gz", "none": ".ndjson"})
PART = ".part"          # suffix of a shard still being written; readers never take it
SEQ_DIGITS = 4          # zero-padded width of seq (wider numbers still work)
REJECTS_DIR = "_rejects"
RECOVERED_DIR = "_recovered"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_NAME = re.compile(r"^(?P<feed>.+)-(?P<stamp>\d{8}T\d{6}Z)-(?P<seq>\d+)"
                   r"(?P<suffix>\.ndjson(?:\.zst|\.gz)?)(?P<part>\.part)?$")


def window_start(now: float, seconds: int) -> int:
    """Start (epoch seconds) of the window of length ``seconds`` that holds ``now``."""
    return int(math.floor(now / seconds)) * seconds


def should_roll(window: float, now: float, bytes_written: int, window_seconds: int,
                max_bytes: int, incoming: int = 0) -> bool:
    """Whether the open file of ``window`` must be sealed before ``incoming`` more bytes.

    Parameters
    ----------
    window : start of the open file's window (epoch seconds).
    now : the current time, or the arrival time of the data about to be written.
    bytes_written : bytes already in the open file.
    window_seconds, max_bytes : ``--window`` and ``--max-bytes``.
    incoming : size of the frame about to be appended (0: just asking).

    Returns
    -------
    bool
        True when the window has ended, or when the file is full: it holds
        ``max_bytes`` already, or the next frame would take it past
        ``max_bytes``. An empty file never rolls for size, so one frame larger
        than ``max_bytes`` still goes somewhere (alone in its file).
    """
    if now >= window + window_seconds:
        return True
    if bytes_written <= 0:
        return False
    return bytes_written >= max_bytes or bytes_written + incoming > max_bytes


def stamp(window: float) -> str:
    """``YYYYMMDDTHHMMSSZ`` of a window start, UTC."""
    return time.strftime(STAMP_FORMAT, time.gmtime(window))


def day_dir(feed: str, window: float) -> str:
    """``<feed>/YYYY/MM/DD``, relative to ``--out``."""
    return f"{feed}/{time.strftime('%Y/%m/%d', time.gmtime(window))}"


def shard_name(feed: str, window: float, seq: int, codec: str) -> str:
    """File name of a sealed shard (no directory, no ``.part``)."""
    return f"{feed}-{stamp(window)}-{seq:0{SEQ_DIGITS}d}{SUFFIXES[codec]}"


def shard_path(feed: str, window: float, seq: int, codec: str) -> str:
    """``<feed>/YYYY/MM/DD/<shard_name>``, relative to ``--out``."""
    return f"{day_dir(feed, window)}/{shard_name(feed, window, seq, codec)}"


def rejects_path(feed: str, window: float) -> str:
    """``<feed>/_rejects/<feed>-<stamp>.jsonl``: never taken by ingest (``_`` prefix)."""
    return f"{feed}/{REJECTS_DIR}/{feed}-{stamp(window)}.jsonl"


def codec_of_name(name: str) -> str | None:
    """The codec a shard or ``.part`` file name says it holds, None if not a shard name."""
    m = _NAME.match(name)
    if m is None:
        return None
    return {suffix: codec for codec, suffix in SUFFIXES.items()}[m["suffix"]]


def next_seq(names: Iterable[str], feed: str, window: float) -> int:
    """The first seq after every shard or ``.part`` of ``feed`` and ``window`` in ``names``."""
    want = stamp(window)
    seqs = [int(m["seq"]) for m in map(_NAME.match, names)
            if m and m["feed"] == feed and m["stamp"] == want]
    return max(seqs) + 1 if seqs else 0
