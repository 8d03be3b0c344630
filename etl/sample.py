"""Synthetic Pushshift-style Reddit comment shards, byte-identical for a seed.

``generate`` writes NDJSON shards named like the Pushshift monthly dumps
(``RC_2015-01.zst``, ``.gz``, ``.xz``, ``.bz2``, or plain ``.ndjson``);
``iter_lines`` yields the same lines uncompressed, for tests.

Quirks of the real dumps that every good line may carry:

- ``created_utc`` is an int in most rows, a float (``1420070400.0``) in ~10%
  and a numeric string (``"1420070400"``) in ~10%;
- ``author`` and ``body`` are ``"[deleted]"`` (~5%), ``body`` is
  ``"[removed]"`` (~3%); bodies keep Reddit's HTML escaping (``&gt;`` quotes,
  ``&amp;``, ``&lt;3``) and some hold non-ASCII text (``café``, emoji);
- ``score`` is sometimes negative and ~2% null; ``edited`` is ``false`` or, in
  ~5% of rows, an epoch int a little after ``created_utc``;
- ``gildings`` is present in about half of the rows and absent in the others;
- ``subreddit`` follows a Zipf-like skew over ~40 real subreddit names.

With ``bad_rate > 0`` a seeded share of lines is bad, cycling through
``BAD_KINDS``: truncated JSON, invalid UTF-8 inside a string, a JSON array, an
object without ``id``, a non-numeric ``score``, a non-date ``created_utc``, and
a blank line. About 0.5% of the good lines then end in CRLF instead of LF.
Bad lines count toward ``lines``.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import pathlib
import random
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from types import MappingProxyType
from typing import BinaryIO

import orjson
import zstandard

from etl.errors import ConfigError

DEFAULT_NAME = "RC_2015-01"
DEFAULT_START = "2015-01-01"  # UTC day the created_utc range starts on
DEFAULT_DAYS = 31  # days the created_utc range covers

CODEC_SUFFIXES = MappingProxyType(
    {"zst": ".zst", "gz": ".gz", "xz": ".xz", "bz2": ".bz2", "none": ".ndjson"}
)
DEFAULT_LEVELS = MappingProxyType({"zst": 3, "gz": 6, "xz": 1, "bz2": 9, "none": None})
ZSTD_LONG_WINDOW_LOG = 31  # 2 GiB window, as Pushshift's `zstd --long=31`; readers need it too

CHUNK_LINES = 10_000  # lines joined per write: bounds memory to a few MB per shard
SECONDS_PER_DAY = 86_400

ID_FLOOR = int("c000000", 36)  # 7-char base36 comment ids, like early-2015 comments
ID_SPAN = 36**6  # distinct comment ids available per seed
ID_STRIDE = 1_000_003  # coprime with 36, so index -> id is one-to-one within ID_SPAN
SEED_ID_SHIFT = 7_919  # indices each seed moves the id sequence by
LINK_FLOOR = int("2r0000", 36)  # 6-char base36 link ids, like early-2015 submissions
LINK_SPAN = 36**4 * 4  # distinct link ids drawn from
SUB_ID_FLOOR = int("2qh00", 36)  # 5-char base36 subreddit ids
SUB_ID_SPAN = 36**4  # distinct subreddit ids a name can hash to

P_CREATED_FLOAT = 0.10  # share of created_utc written as float
P_CREATED_STR = 0.10  # share of created_utc written as numeric string
P_BODY_DELETED = 0.05  # body and author "[deleted]"
P_BODY_REMOVED = 0.03  # body "[removed]" by a moderator
P_AUTHOR_GONE = 0.01  # account deleted, body kept
P_QUOTE = 0.04  # body starts with an HTML-escaped "> quote"
P_AMP = 0.03  # body holds "&amp;"
P_HEART = 0.01  # body holds "&lt;3"
P_NON_ASCII = 0.04  # body holds a non-ASCII word
P_PARAGRAPHS = 0.15  # body has two paragraphs
P_SCORE_NULL = 0.02
P_SCORE_NEGATIVE = 0.08
P_CONTROVERSIAL = 0.03
P_GILDED = 0.004
P_GILDINGS = 0.5  # rows carrying the gildings object at all
P_EDITED = 0.05
P_DISTINGUISHED = 0.005
P_STICKIED = 0.002
P_FLAIR = 0.12
P_TOP_LEVEL = 0.4  # comments replying to the submission itself
P_CRLF = 0.005  # good lines ending in CRLF when bad_rate > 0
MEAN_BODY_WORDS = 22
MAX_BODY_WORDS = 400
RETRIEVAL_DELAY_MIN = 3 * SECONDS_PER_DAY  # crawler lag after posting, lower bound
RETRIEVAL_DELAY_SPAN = 120 * SECONDS_PER_DAY  # crawler lag spread
EDIT_DELAY_MIN = 60  # seconds between posting and an edit, lower bound
EDIT_DELAY_SPAN = 2 * SECONDS_PER_DAY

SUBREDDITS = (
    "AskReddit", "politics", "funny", "pics", "worldnews", "gaming", "news",
    "todayilearned", "videos", "movies", "nfl", "nba", "leagueoflegends", "soccer",
    "pcmasterrace", "DotA2", "AdviceAnimals", "WTF", "SquaredCircle", "hockey",
    "GlobalOffensive", "trees", "relationships", "CFB", "technology", "science",
    "explainlikeimfive", "Showerthoughts", "aww", "gifs", "books", "Music",
    "television", "Fitness", "personalfinance", "programming", "askscience",
    "DestinyTheGame", "GlobalOffensiveTrade", "fantasyfootball",
)
ZIPF_EXPONENT = 1.1  # subreddit popularity skew: weight of rank r is 1 / r**1.1
ZIPF_TABLE_SIZE = 2_000  # slots in the lookup table; one slot = 0.05% of rows
SLUG_TABLE_SIZE = 4_096  # distinct permalink slugs

WORD_TEXT = (
    "the a to and of I you it is that in this for was on not be with but have are "
    "just like they my what if so do can at all he would about people one get "
    "there more your or think an no from up out will me don't it's they're "
    "because when time good really know them how some even much other make "
    "game year think right only should still any way then want well also see "
    "thing actually pretty lot better going never back which new first could "
    "than most work same said being point need great probably something man "
    "team those while love why best who play sure thanks fuck shit lol yeah "
    "money world bad reason where season every post comment internet vote "
    "someone nothing life guy movie show look little thought city country "
    "player watch last down over after through everyone though here server "
    "news law state police car house food school sense question maybe agree"
)
WORDS = tuple(WORD_TEXT.split())  # common comment vocabulary; bodies draw from it
NON_ASCII = ("café", "naïve", "über", "jalapeño", "Zürich", "—", "…",
             "😂", "👍", "🔥", "日本", "€5")
FLAIRS = ("Verified", "Moderator", "United States", "Arsenal", "Green Bay Packers",
          "Team Liquid", "PC Master Race", "Toronto Maple Leafs", "🇩🇪 Germany")
AUTHOR_STEMS = ("throwaway", "dan", "pizza", "the_real", "captain", "mr", "lazy",
                "happy", "dark", "blue", "old", "not_a", "cat", "sir", "wolf", "ninja")
AUTHOR_TAILS = ("_lover", "man", "Guy", "_ftw", "er", "_42", "face", "", "lord", "Bot")
BAD_KINDS = ("truncated", "invalid_utf8", "array", "missing_id", "score_text",
             "created_text", "blank")


BASE36_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
BASE36_PAIRS = tuple(a + b for a in BASE36_DIGITS for b in BASE36_DIGITS)  # two digits per step


def base36(number: int) -> str:
    """Return ``number`` (>= 0) in lowercase base 36, as Reddit writes ids."""
    out = ""
    while True:
        number, rest = divmod(number, 1296)
        out = BASE36_PAIRS[rest] + out
        if not number:
            return out.lstrip("0") or "0"


def _zipf_table(names: tuple[str, ...], size: int, exponent: float) -> tuple[str, ...]:
    """Repeat each name in proportion to 1 / rank**exponent, ``size`` slots in all."""
    weights = [1 / (rank + 1) ** exponent for rank in range(len(names))]
    total = sum(weights)
    table: list[str] = []
    for name, weight in zip(names, weights):
        table.extend([name] * max(1, round(size * weight / total)))
    return tuple(table)


def _slug_table(size: int) -> tuple[str, ...]:
    """Return ``size`` permalink title slugs; a link's slug is picked by its id."""
    rng = random.Random("etl.sample:slugs")
    return tuple("_".join(rng.choices(WORDS, k=2 + rank % 5)) for rank in range(size))


SLUGS = _slug_table(SLUG_TABLE_SIZE)
SUBREDDIT_TABLE = _zipf_table(SUBREDDITS, ZIPF_TABLE_SIZE, ZIPF_EXPONENT)
SUBREDDIT_IDS = MappingProxyType(
    {name: "t5_" + base36(SUB_ID_FLOOR + zlib.crc32(name.encode()) % SUB_ID_SPAN)
     for name in SUBREDDITS}
)


@dataclass(frozen=True)
class _Plan:
    """What every line of one shard shares."""

    start_epoch: int  # created_utc lower bound, seconds since the epoch
    span: int  # seconds the created_utc range covers
    id_offset: int  # seed-dependent shift of the comment id sequence


def shard_sizes(lines: int, shards: int) -> list[int]:
    """Split ``lines`` over ``shards`` as evenly as possible, larger shards first.

    Examples
    --------
    >>> shard_sizes(10, 3)
    [4, 3, 3]
    """
    base, extra = divmod(lines, shards)
    return [base + (index < extra) for index in range(shards)]


def shard_name(name: str, codec: str, index: int, shards: int) -> str:
    """Return the file name of shard ``index``: ``RC_2015-01.zst`` or ``RC_2015-01_002.zst``."""
    stem = name if shards == 1 else f"{name}_{index:03d}"
    return stem + CODEC_SUFFIXES[codec]


def start_epoch(start: str) -> int:
    """Return the epoch seconds of ISO date or datetime ``start``, naive meaning UTC."""
    try:
        moment = datetime.fromisoformat(start)
    except ValueError as exc:
        raise ConfigError(f"start {start!r} is not an ISO date; use e.g. 2015-01-01",
                          field="start") from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def _shard_rng(seed: int, shard: int) -> random.Random:
    """Return the RNG of one shard; str seeds hash with SHA-512, stable across runs."""
    return random.Random(f"etl.sample:{seed}:{shard}")


def _sentence(rng: random.Random, count: int) -> str:
    text = " ".join(rng.choices(WORDS, k=count))
    return text[0].upper() + text[1:]


def _body(rng: random.Random) -> str:
    """Return a comment body with Reddit's escaping and an occasional non-ASCII word."""
    rand = rng.random
    count = min(MAX_BODY_WORDS, 1 + int(rng.expovariate(1 / MEAN_BODY_WORDS)))
    text = _sentence(rng, count) + "."
    if rand() < P_PARAGRAPHS:
        text += "\n\n" + _sentence(rng, 1 + count // 2) + "?"
    if rand() < P_QUOTE:
        text = "&gt; " + _sentence(rng, 6) + "\n\n" + text
    if rand() < P_AMP:
        text += " Salt &amp; pepper."
    if rand() < P_HEART:
        text += " &lt;3"
    if rand() < P_NON_ASCII:
        text += " " + NON_ASCII[int(rand() * len(NON_ASCII))]
    return text


def _author(rng: random.Random) -> str:
    rand = rng.random
    stem = AUTHOR_STEMS[int(rand() * len(AUTHOR_STEMS))]
    tail = AUTHOR_TAILS[int(rand() * len(AUTHOR_TAILS))]
    return f"{stem}{tail}{int(rand() * 3000)}"


def _created(rng: random.Random, plan: _Plan) -> tuple[int | float | str, int]:
    """Return (created_utc as written, created_utc as int seconds)."""
    seconds = plan.start_epoch + int(rng.random() * plan.span)
    form = rng.random()
    if form < P_CREATED_FLOAT:
        return float(seconds), seconds
    if form < P_CREATED_FLOAT + P_CREATED_STR:
        return str(seconds), seconds
    return seconds, seconds


def _score(rng: random.Random) -> int | None:
    form = rng.random()
    if form < P_SCORE_NULL:
        return None
    if form < P_SCORE_NULL + P_SCORE_NEGATIVE:
        return -int(rng.paretovariate(1.5))
    return int(rng.paretovariate(1.1))


def _text_fields(rng: random.Random) -> dict:
    """Return author, body and flair, keeping deletion consistent between them."""
    form = rng.random()
    if form < P_BODY_DELETED:
        author, body = "[deleted]", "[deleted]"
    elif form < P_BODY_DELETED + P_BODY_REMOVED:
        author, body = _author(rng), "[removed]"
    elif form < P_BODY_DELETED + P_BODY_REMOVED + P_AUTHOR_GONE:
        author, body = "[deleted]", _body(rng)
    else:
        author, body = _author(rng), _body(rng)
    flair = FLAIRS[int(rng.random() * len(FLAIRS))] if rng.random() < P_FLAIR else None
    return {"author": author, "author_flair_text": flair, "body": body}


def _comment(rng: random.Random, plan: _Plan, index: int) -> dict:
    """Return the comment record at global line ``index``, drawing from ``rng``."""
    rand = rng.random
    comment_id = base36(ID_FLOOR + (plan.id_offset + index) * ID_STRIDE % ID_SPAN)
    created, seconds = _created(rng, plan)
    subreddit = SUBREDDIT_TABLE[int(rand() * len(SUBREDDIT_TABLE))]
    link_number = LINK_FLOOR + int(rand() * LINK_SPAN)
    link = base36(link_number)
    score = _score(rng)
    gilded = 1 + int(rand() * 2) if rand() < P_GILDED else 0
    record = _text_fields(rng)
    record.update({
        "controversiality": 1 if rand() < P_CONTROVERSIAL else 0,
        "created_utc": created,
        "distinguished": "moderator" if rand() < P_DISTINGUISHED else None,
        "edited": seconds + EDIT_DELAY_MIN + int(rand() * EDIT_DELAY_SPAN)
        if rand() < P_EDITED else False,
        "gilded": gilded,
    })
    if rand() < P_GILDINGS:
        record["gildings"] = {"gid_1": 0, "gid_2": gilded, "gid_3": 0}
    parent = "t3_" + link if rand() < P_TOP_LEVEL else "t1_" + base36(
        ID_FLOOR + int(rand() * ID_SPAN))
    record.update({
        "id": comment_id,
        "link_id": "t3_" + link,
        "parent_id": parent,
        "permalink": f"/r/{subreddit}/comments/{link}/{SLUGS[link_number % SLUG_TABLE_SIZE]}"
                     f"/{comment_id}/",
        "retrieved_on": seconds + RETRIEVAL_DELAY_MIN + int(rand() * RETRIEVAL_DELAY_SPAN),
        "score": score, "ups": score, "downs": 0,
        "stickied": rand() < P_STICKIED,
        "subreddit": subreddit, "subreddit_id": SUBREDDIT_IDS[subreddit],
    })
    return record


def bad_line(kind: str, record: dict) -> bytes:
    """Return a bad line of ``kind`` (one of ``BAD_KINDS``) made from a good ``record``."""
    if kind == "truncated":
        whole = orjson.dumps(record)
        return whole[: len(whole) // 2]
    if kind == "invalid_utf8":
        return b'{"id":"' + record["id"].encode() + b'","body":"\xff\xfe bad"}'
    if kind == "array":
        return b"[1,2,3]"
    if kind == "blank":
        return b""
    broken = dict(record)
    if kind == "missing_id":
        del broken["id"]
    elif kind == "score_text":
        broken["score"] = "lots"
    elif kind == "created_text":
        broken["created_utc"] = "not-a-date"
    else:
        raise ValueError(f"unknown bad line kind {kind!r}; expected one of {BAD_KINDS}")
    return orjson.dumps(broken)


def iter_lines(count: int, *, seed: int = 0, shard: int = 0, first_index: int = 0,
               bad_rate: float = 0.0, start: str = DEFAULT_START,
               days: int = DEFAULT_DAYS) -> Iterator[bytes]:
    """Yield the lines of one shard without their LF terminator.

    Parameters
    ----------
    count : int
        Lines to yield.
    seed, shard : int
        Together they seed the shard's RNG; ``generate`` passes the shard number.
    first_index : int
        Global index of the first line; comment ids derive from it, so shards
        given disjoint index ranges never share an id.
    bad_rate : float
        Share of bad lines, 0 to 1.
    start, days
        ``created_utc`` falls in ``[start, start + days)``, UTC.

    Yields
    ------
    bytes
        One line. A line meant to end in CRLF is yielded with its trailing ``b"\\r"``.
        The RNG draws the same for every ``bad_rate``, so a good line is the
        same whatever ``bad_rate`` is, except for that ``b"\\r"``.
    """
    rng = _shard_rng(seed, shard)
    plan = _Plan(start_epoch(start), days * SECONDS_PER_DAY, seed * SEED_ID_SHIFT)
    rand = rng.random
    bad_seen = 0
    for index in range(first_index, first_index + count):
        record = _comment(rng, plan, index)
        is_bad, is_crlf = rand() < bad_rate, rand() < P_CRLF
        if is_bad:
            yield bad_line(BAD_KINDS[bad_seen % len(BAD_KINDS)], record)
            bad_seen += 1
        elif is_crlf and bad_rate > 0:
            yield orjson.dumps(record) + b"\r"
        else:
            yield orjson.dumps(record)


def iter_chunks(lines: Iterable[bytes], size: int = CHUNK_LINES) -> Iterator[bytes]:
    """Join ``lines`` into LF-terminated blocks of at most ``size`` lines each."""
    # append to one buffer rather than join a list: each orjson result keeps a few KB
    # of slack while alive, so 10,000 of them held at once cost ~80 MB
    block = bytearray()
    for count, line in enumerate(lines, 1):
        block += line
        block += b"\n"
        if count % size == 0:
            yield bytes(block)
            block.clear()
    if block:
        yield bytes(block)


def _open_sink(stack: contextlib.ExitStack, raw: BinaryIO, codec: str,
               level: int | None, zstd_long: bool) -> BinaryIO:
    """Wrap file ``raw`` in a compressing writer; ``stack`` flushes and closes it."""
    level = DEFAULT_LEVELS[codec] if level is None else level
    if codec == "zst":
        if zstd_long:
            params = zstandard.ZstdCompressionParameters.from_level(
                level, window_log=ZSTD_LONG_WINDOW_LOG, enable_ldm=True, write_checksum=1)
            cctx = zstandard.ZstdCompressor(compression_params=params)
        else:
            cctx = zstandard.ZstdCompressor(level=level, write_checksum=True)
        return stack.enter_context(cctx.stream_writer(raw, closefd=False))
    if codec == "gz":
        # GzipFile rather than gzip.open: mtime=0 and no file name keep output byte-identical
        return stack.enter_context(
            gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=raw, mtime=0))
    if codec == "xz":
        return stack.enter_context(lzma.LZMAFile(raw, "wb", preset=level))
    if codec == "bz2":
        return stack.enter_context(bz2.BZ2File(raw, "wb", compresslevel=level))
    return raw


def write_shard(path: pathlib.Path, lines: Iterable[bytes], *, codec: str,
                level: int | None = None, zstd_long: bool = False) -> pathlib.Path:
    """Write ``lines`` to ``path`` in chunks, under a temporary name, then rename.

    Parameters
    ----------
    path : pathlib.Path
        Final file name; ``path.tmp`` holds the data until it is complete.
    lines : iterable of bytes
        Lines without terminator, as ``iter_lines`` yields them.
    codec : {"zst", "gz", "xz", "bz2", "none"}
    level : int, optional
        Compression level; ``DEFAULT_LEVELS[codec]`` when None.
    zstd_long : bool
        For zst, a 2 GiB window with long-distance matching.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as raw, contextlib.ExitStack() as stack:
            sink = _open_sink(stack, raw, codec, level, zstd_long)
            for block in iter_chunks(lines):
                sink.write(block)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _check_args(lines: int, shards: int, codec: str, bad_rate: float, days: int) -> None:
    if codec not in CODEC_SUFFIXES:
        raise ConfigError(f"unknown codec {codec!r}; use one of {', '.join(CODEC_SUFFIXES)}",
                          field="codec")
    if lines < 0:
        raise ConfigError(f"lines must be 0 or more, got {lines}", field="lines")
    if shards < 1:
        raise ConfigError(f"shards must be 1 or more, got {shards}", field="shards")
    if not 0.0 <= bad_rate <= 1.0:
        raise ConfigError(f"bad_rate is a share from 0 to 1, got {bad_rate}", field="bad_rate")
    if days < 1:
        raise ConfigError(f"days must be 1 or more, got {days}", field="days")


def generate(out_dir: str | os.PathLike, *, lines: int, shards: int = 1, codec: str = "zst",
             bad_rate: float = 0.0, seed: int = 0, name: str = DEFAULT_NAME,
             start: str = DEFAULT_START, days: int = DEFAULT_DAYS, zstd_long: bool = False,
             level: int | None = None) -> list[pathlib.Path]:
    """Write Pushshift-like Reddit comment shards, byte-identical for the same arguments.

    Parameters
    ----------
    out_dir : path-like
        Directory for the shards, created if missing.
    lines : int
        Total lines over all shards, bad lines included.
    shards : int
        Files to split ``lines`` over, as evenly as possible.
    codec : {"zst", "gz", "xz", "bz2", "none"}
        Compression; file suffix ``.zst``, ``.gz``, ``.xz``, ``.bz2`` or ``.ndjson``.
    bad_rate : float
        Share of bad lines, 0 to 1 (see the module docstring).
    seed : int
        Seed of all randomness.
    name : str
        File stem: ``{name}.zst`` for one shard, ``{name}_000.zst``... for more.
    start, days
        ``created_utc`` spreads uniformly over ``[start, start + days)``, UTC.
    zstd_long : bool
        zst only: window_log 31 with long-distance matching, as ``zstd --long=31``;
        readers must allow a 2 GiB window (``zstd -d --long=31``).
    level : int, optional
        Compression level; defaults zst 3, gz 6, xz 1, bz2 9.

    Returns
    -------
    list of pathlib.Path
        The shards written, in order.

    Raises
    ------
    ConfigError
        An argument is out of range or the codec is unknown.
    """
    _check_args(lines, shards, codec, bad_rate, days)
    start_epoch(start)  # fail on a bad date before creating anything
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, first = [], 0
    for shard, count in enumerate(shard_sizes(lines, shards)):
        source = iter_lines(count, seed=seed, shard=shard, first_index=first,
                            bad_rate=bad_rate, start=start, days=days)
        path = out / shard_name(name, codec, shard, shards)
        paths.append(write_shard(path, source, codec=codec, level=level, zstd_long=zstd_long))
        first += count
    return paths
