"""Tests for etl.sample: determinism, every codec through its real CLI, line quirks."""

from __future__ import annotations

import subprocess
from collections import Counter

import orjson
import pytest
import zstandard

from etl.errors import ConfigError
from etl.sample import (
    BAD_KINDS,
    CODEC_SUFFIXES,
    SUBREDDIT_IDS,
    SUBREDDITS,
    bad_line,
    generate,
    iter_chunks,
    iter_lines,
    shard_name,
    shard_sizes,
    start_epoch,
)

LINES = 3_000  # small enough for a fast suite, large enough for shares to settle
DECOMPRESS = {
    "zst": ["zstd", "-dc"],
    "gz": ["gzip", "-dc"],
    "xz": ["xz", "-dc"],
    "bz2": ["bzip2", "-dc"],
    "none": ["cat"],
}
JAN_2015 = 1_420_070_400  # 2015-01-01T00:00:00Z


def _decompress(path, codec: str, *extra: str) -> bytes:
    done = subprocess.run([*DECOMPRESS[codec], *extra, str(path)], capture_output=True,
                          check=True)
    return done.stdout


def _records(lines):
    return [orjson.loads(line) for line in lines]


def _bad_kind(line: bytes) -> str | None:
    """Classify a line the way a reader would reject it; None for a good line."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "not_json"
    if not isinstance(value, dict):
        return "not_object"
    if "id" not in value:
        return "missing_id"
    if isinstance(value.get("score"), str):
        return "score_text"
    created = value["created_utc"]
    if isinstance(created, str) and not created.isdigit():
        return "created_text"
    return None


# --- pure helpers -------------------------------------------------------------

def test_shard_sizes_split_evenly():
    assert shard_sizes(10, 3) == [4, 3, 3]
    assert shard_sizes(9, 3) == [3, 3, 3]
    assert shard_sizes(2, 4) == [1, 1, 0, 0]
    assert sum(shard_sizes(LINES, 7)) == LINES


def test_shard_names_follow_pushshift():
    assert shard_name("RC_2015-01", "zst", 0, 1) == "RC_2015-01.zst"
    assert shard_name("RC_2015-01", "none", 0, 1) == "RC_2015-01.ndjson"
    assert shard_name("RC_2015-01", "xz", 2, 3) == "RC_2015-01_002.xz"


def test_iter_chunks_joins_with_lf():
    assert list(iter_chunks([b"a", b"b", b"c"], size=2)) == [b"a\nb\n", b"c\n"]
    assert list(iter_chunks([b"a", b"b"], size=2)) == [b"a\nb\n"]
    assert list(iter_chunks([])) == []


def test_subreddit_ids_are_distinct():
    assert len(set(SUBREDDIT_IDS.values())) == len(SUBREDDITS)


# --- determinism --------------------------------------------------------------

def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path):
    def run(folder, seed):
        paths = generate(tmp_path / folder, lines=LINES, shards=2, codec="zst",
                         bad_rate=0.05, seed=seed)
        return [path.read_bytes() for path in paths]

    first, again, other = run("a", 7), run("b", 7), run("c", 8)
    assert first == again
    assert first[0] != other[0] and first[1] != other[1]


@pytest.mark.parametrize("codec", sorted(CODEC_SUFFIXES))
def test_codec_is_deterministic(tmp_path, codec):
    a = generate(tmp_path / "a", lines=200, codec=codec)[0].read_bytes()
    b = generate(tmp_path / "b", lines=200, codec=codec)[0].read_bytes()
    assert a == b


def test_good_lines_do_not_depend_on_bad_rate():
    clean = list(iter_lines(LINES, seed=3))
    dirty = list(iter_lines(LINES, seed=3, bad_rate=0.05))
    same = [c == d.rstrip(b"\r") for c, d in zip(clean, dirty) if _bad_kind(d) is None]
    assert all(same) and len(same) > 0.9 * LINES


# --- codecs through the real tools ----------------------------------------------

@pytest.mark.parametrize("codec", sorted(CODEC_SUFFIXES))
def test_real_tool_decompresses_every_codec(tmp_path, codec):
    paths = generate(tmp_path, lines=LINES, shards=2, codec=codec, bad_rate=0.05, seed=1)
    assert [path.name for path in paths] == [
        f"RC_2015-01_000{CODEC_SUFFIXES[codec]}", f"RC_2015-01_001{CODEC_SUFFIXES[codec]}"]
    assert not list(tmp_path.glob("*.tmp"))
    first = 0
    for shard, (path, count) in enumerate(zip(paths, shard_sizes(LINES, 2))):
        data = _decompress(path, codec)
        assert data.count(b"\n") == count and data.endswith(b"\n")
        expected = iter_lines(count, seed=1, shard=shard, first_index=first, bad_rate=0.05)
        assert data == b"".join(line + b"\n" for line in expected)
        first += count


def test_single_shard_name_and_exact_line_count(tmp_path):
    [path] = generate(tmp_path / "new" / "dir", lines=1234, codec="gz", name="RC_2016-02")
    assert path.name == "RC_2016-02.gz"
    assert _decompress(path, "gz").count(b"\n") == 1234


def test_zero_lines_gives_empty_decompressable_shard(tmp_path):
    [path] = generate(tmp_path, lines=0, codec="zst")
    assert _decompress(path, "zst") == b""


def test_zstd_long_needs_long_window(tmp_path):
    [path] = generate(tmp_path, lines=LINES, codec="zst", zstd_long=True)
    data = _decompress(path, "zst", "--long=31")
    assert data.count(b"\n") == LINES
    # like Pushshift's dumps: readers without a 2 GiB window limit refuse the frame
    plain = subprocess.run(["zstd", "-dc", str(path)], check=False, capture_output=True)
    assert plain.returncode != 0
    reader = zstandard.ZstdDecompressor(max_window_size=2**31)
    with open(path, "rb") as fh, reader.stream_reader(fh) as stream:
        assert stream.read() == data


# --- content of good lines -----------------------------------------------------

def test_good_lines_are_comment_objects(tmp_path):
    paths = generate(tmp_path, lines=LINES, shards=3, codec="none", seed=5)
    lines = b"".join(path.read_bytes() for path in paths).split(b"\n")[:-1]
    assert len(lines) == LINES and not any(line.endswith(b"\r") for line in lines)
    records = _records(lines)
    assert all(isinstance(record, dict) and record["id"] for record in records)
    assert len({record["id"] for record in records}) == LINES
    low = start_epoch("2015-01-01")
    assert low == JAN_2015
    created = [record["created_utc"] for record in records]
    assert all(low <= int(float(value)) < low + 31 * 86_400 for value in created)
    types = Counter(type(value).__name__ for value in created)
    assert types["int"] > 0.7 * LINES
    assert 0.05 * LINES < types["float"] < 0.15 * LINES
    assert 0.05 * LINES < types["str"] < 0.15 * LINES


def test_good_lines_carry_reddit_quirks():
    records = _records(iter_lines(LINES, seed=2))
    bodies = [record["body"] for record in records]
    assert bodies.count("[deleted]") > 0.02 * LINES and "[removed]" in bodies
    assert any("&gt;" in body for body in bodies) and any("&amp;" in body for body in bodies)
    assert any(not body.isascii() for body in bodies)
    with_gildings = sum("gildings" in record for record in records)
    assert 0.4 * LINES < with_gildings < 0.6 * LINES
    scores = [record["score"] for record in records]
    assert None in scores and min(s for s in scores if s is not None) < 0
    edited = [record["edited"] for record in records if record["edited"] is not False]
    assert edited and all(isinstance(value, int) for value in edited)
    assert all(record["retrieved_on"] > int(float(record["created_utc"])) for record in records)
    assert all(record["parent_id"][:3] in ("t1_", "t3_") for record in records)
    assert all(record["link_id"].startswith("t3_") for record in records)
    top = Counter(record["subreddit"] for record in records).most_common(1)[0][0]
    assert top == "AskReddit"


def test_start_and_days_bound_created_utc():
    records = _records(iter_lines(500, start="2016-03-01", days=2))
    low = start_epoch("2016-03-01")
    assert all(low <= int(float(r["created_utc"])) < low + 2 * 86_400 for r in records)


# --- bad lines -----------------------------------------------------------------

def test_bad_rate_share_and_kinds(tmp_path):
    [path] = generate(tmp_path, lines=LINES * 2, codec="none", bad_rate=0.05, seed=9)
    lines = path.read_bytes().split(b"\n")[:-1]
    assert len(lines) == LINES * 2
    kinds = Counter(_bad_kind(line) for line in lines)
    bad = len(lines) - kinds[None]
    assert abs(bad / len(lines) - 0.05) < 0.015
    # truncated, invalid UTF-8, array, missing id and blank fail the structural check
    structural = kinds["not_json"] + kinds["not_object"] + kinds["missing_id"]
    assert abs(structural / len(lines) - 0.05 * 5 / 7) < 0.012
    assert kinds["score_text"] and kinds["created_text"] and b"" in lines
    crlf = [line for line in lines if line.endswith(b"\r")]
    assert 0 < len(crlf) < 0.02 * len(lines)
    assert all(isinstance(orjson.loads(line), dict) for line in crlf)


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_each_bad_kind_is_rejected(kind):
    record = orjson.loads(next(iter_lines(1)))
    assert _bad_kind(bad_line(kind, record)) is not None


# --- argument checks -----------------------------------------------------------

@pytest.mark.parametrize("bad_args", [
    {"codec": "lz4"}, {"lines": -1}, {"shards": 0}, {"bad_rate": 1.5}, {"days": 0},
    {"start": "January"},
])
def test_bad_arguments_raise_config_error(tmp_path, bad_args):
    args = {"lines": 10, **bad_args}
    with pytest.raises(ConfigError):
        generate(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()
