"""Tests for etl.spool's pure and file logic: rolling rules, line reassembly, validation,
config, frames per flush, sealing, crash recovery, metrics text, and the feed writer with a
fake clock. The real-process, real-client tests are in test_spool_live.py."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import random
import subprocess
import sys
import zlib
from pathlib import Path

import orjson
import pytest
import zstandard

from etl.errors import ConfigError
from etl.shards import find_shards, iter_chunks, iter_line_batches, open_shard
from etl.spool import rotation
from etl.spool.config import (
    Secret,
    SpoolConfig,
    parse_hostport,
    parse_networks,
    parse_size,
    peer_allowed,
    read_token,
)
from etl.spool.feed import FeedWriter
from etl.spool.files import ShardSink, lock_feed, make_encoder
from etl.spool.lines import REJECT_HEAD, Chunk, LineSplitter, Reject, check_line, sort_lines
from etl.spool.metrics import Metrics
from etl.spool.recovery import find_parts, recover_feed, recover_part
from tests.conftest import ROOT

CODECS = ("zst", "gz", "none")
T0 = 1_420_070_400  # 2015-01-01T00:00:00Z


def read_shard(path) -> list[bytes]:
    """Every line of a shard, read the way `etl ingest` reads it."""
    shard = find_shards([str(path)])[0]
    with open_shard(shard) as fh:
        return [line for b in iter_line_batches(iter_chunks(fh, shard.path)) for line in b.lines]


def sealed_shards(feed_dir) -> list[str]:
    return [s.path for s in find_shards([str(feed_dir)])]


# ---------------------------------------------------------------- rotation (pure)

@pytest.mark.parametrize("now, seconds, start", [
    (T0, 60, T0), (T0 + 59.999, 60, T0), (T0 + 60, 60, T0 + 60), (T0 + 3599, 3600, T0),
    (T0 + 7, 5, T0 + 5), (0.5, 1, 0),
])
def test_window_start_is_aligned_to_multiples(now, seconds, start):
    assert rotation.window_start(now, seconds) == start


def test_should_roll_when_the_window_ends():
    assert not rotation.should_roll(T0, T0 + 59.9, 10, 60, 1000)
    assert rotation.should_roll(T0, T0 + 60, 10, 60, 1000)
    assert rotation.should_roll(T0, T0 + 600, 0, 60, 1000)  # ended, even if empty


def test_should_roll_before_a_frame_would_pass_max_bytes():
    assert not rotation.should_roll(T0, T0, 600, 60, 1000, incoming=400)
    assert rotation.should_roll(T0, T0, 600, 60, 1000, incoming=401)
    assert rotation.should_roll(T0, T0, 1000, 60, 1000)
    # an empty file never rolls for size: one huge frame still goes (alone) somewhere
    assert not rotation.should_roll(T0, T0, 0, 60, 1000, incoming=5000)


def test_shard_names_and_paths():
    assert rotation.shard_path("rc", T0 + 60, 3, "zst") == \
        "rc/2015/01/01/rc-20150101T000100Z-0003.ndjson.zst"
    assert rotation.shard_name("rc", T0, 12345, "none") == "rc-20150101T000000Z-12345.ndjson"
    assert rotation.rejects_path("rc", T0) == "rc/_rejects/rc-20150101T000000Z.jsonl"
    assert rotation.codec_of_name("a-b-20150101T000000Z-0001.ndjson.gz.part") == "gz"
    assert rotation.codec_of_name("notes.txt") is None


def test_next_seq_counts_sealed_and_part_files_of_that_window_only():
    names = ["rc-20150101T000000Z-0000.ndjson.zst", "rc-20150101T000000Z-0004.ndjson.zst.part",
             "rc-20150101T000100Z-0009.ndjson.zst", "other-20150101T000000Z-0042.ndjson"]
    assert rotation.next_seq(names, "rc", T0) == 5
    assert rotation.next_seq(names, "rc", T0 + 120) == 0


# ---------------------------------------------------------------- lines (pure)

def split_all(pieces, max_line=1 << 20):
    s, lines, cuts = LineSplitter(max_line), [], []
    for p in pieces:
        got, long = s.feed(p)
        lines += got
        cuts += long
    got, long = s.finish()
    return lines + got, cuts + long


def test_lines_are_reassembled_from_single_bytes_and_crlf_is_dropped():
    stream = b'{"a":1}\r\n{"b":"x\\ny"}\n\n{"c":3}\r\n{"d":4}'
    want = [b'{"a":1}', b'{"b":"x\\ny"}', b"", b'{"c":3}', b'{"d":4}']
    assert split_all([stream]) == (want, [])
    assert split_all([stream[i:i + 1] for i in range(len(stream))]) == (want, [])


def test_random_fragmentation_gives_the_same_lines():
    rng = random.Random(7)
    lines = [orjson.dumps({"i": i, "pad": "x" * rng.randrange(0, 300)}) for i in range(300)]
    stream = b"".join(line + (b"\r\n" if i % 3 == 0 else b"\n") for i, line in enumerate(lines))
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(stream)), 200))
        pieces = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
        assert split_all(pieces) == (lines, [])


def test_a_trailing_cr_at_eof_is_a_terminator_and_a_lone_cr_inside_is_kept():
    assert split_all([b'{"a":"1"}\r']) == ([b'{"a":"1"}'], [])
    assert split_all([b'{"a":\r1}\n']) == ([b'{"a":\r1}'], [])


def test_overlong_lines_are_dropped_up_to_their_lf_and_the_next_line_is_kept():
    big = b"x" * 5000
    lines, cuts = split_all([b'{"ok":1}\n', big[:1000], big[1000:], b"yy\n{\"after\":2}\n"],
                            max_line=100)
    assert lines == [b'{"ok":1}', b'{"after":2}']
    assert len(cuts) == 1 and cuts[0].length == 5002 and cuts[0].head == big[:REJECT_HEAD]
    # over the limit inside one piece, and exactly at the limit (CRLF included) is fine
    lines, cuts = split_all([b"z" * 101 + b"\n" + b"w" * 100 + b"\r\n"], max_line=100)
    assert lines == [b"w" * 100] and [c.length for c in cuts] == [101]


def test_splitter_holds_at_most_max_line():
    s = LineSplitter(1000)
    for _ in range(100):
        s.feed(b"q" * 777)
        assert s.pending <= 1001
    assert s.cut().length == 77700 - 1001 + 1001  # the whole dropped line is accounted for


def test_cut_returns_the_unfinished_line():
    s = LineSplitter(100)
    assert s.feed(b'{"a":1}\n{"b":') == ([b'{"a":1}'], [])
    cut = s.cut()
    assert cut.head == b'{"b":' and cut.length == 5
    assert s.cut() is None


@pytest.mark.parametrize("line, reason", [
    (b"", "blank"), (b"   ", "blank"), (b"{", "invalid_json"), (b"[1,2]", "not_object"),
    (b'"s"', "not_object"), (b'{"a":"\xff"}', "invalid_utf8"), (b'{"a":1}', None),
])
def test_check_line(line, reason):
    got = check_line(line)
    assert (got[0] if got else None) == reason


def test_sort_lines_keeps_good_lines_in_order_and_rejects_the_rest():
    chunk = sort_lines([b'{"a":1}', b"nope", b'{"b":2}', b"7"], [], "1.2.3.4:5", T0, 100)
    assert chunk.data == b'{"a":1}\n{"b":2}\n' and chunk.lines == 2
    assert [(r.reason, r.line, r.peer) for r in chunk.rejects] == \
        [("invalid_json", b"nope", "1.2.3.4:5"), ("not_object", b"7", "1.2.3.4:5")]


def test_reject_records_are_json_with_text_or_base64():
    text = orjson.loads(Reject("invalid_json", "e", "p:1", T0, b"nope", 4).record())
    assert text["line"] == "nope" and text["time"] == "2015-01-01T00:00:00.000Z"
    assert text["truncated"] is False
    raw = orjson.loads(Reject("too_long", "e", "p:1", T0, b"\xff\xfe", 9999).record())
    assert raw["line_base64"] == "//4=" and raw["truncated"] is True


# ---------------------------------------------------------------- config

def test_parse_hostport_and_sizes():
    assert parse_hostport("127.0.0.1:5170", "--listen") == ("127.0.0.1", 5170)
    assert parse_hostport("[::1]:0", "--listen") == ("::1", 0)
    assert parse_size("256M", "x") == 256 << 20 and parse_size("1MiB", "x") == 1 << 20
    assert parse_size("4096", "x") == 4096
    for bad in ("5170", "host:99999", "a:b"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            parse_hostport(bad, "--listen")
    with pytest.raises(ConfigError, match="K, M or G"):
        parse_size("12T", "--max-bytes")


def test_non_loopback_needs_a_token_or_an_allow_list(tmp_path):
    with pytest.raises(ConfigError, match="--token-file.*--allow"):
        SpoolConfig(host="0.0.0.0", port=5170, out=str(tmp_path))
    SpoolConfig(host="0.0.0.0", port=5170, out=str(tmp_path), allow=parse_networks(["10.0.0.0/8"]))
    SpoolConfig(host="0.0.0.0", port=5170, out=str(tmp_path), token=Secret("t" * 16))
    SpoolConfig(host="::1", port=5170, out=str(tmp_path))


@pytest.mark.parametrize("kwargs, match", [
    ({"feed": "_hidden"}, "--feed"), ({"feed": "a/b"}, "--feed"), ({"codec": "xz"}, "--codec"),
    ({"tls_cert": "c.pem"}, "go together"), ({"max_bytes": 10}, "--max-bytes"),
    ({"window_seconds": 0}, "--window"),
])
def test_bad_configs_say_what_to_fix(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        SpoolConfig(host="127.0.0.1", port=0, out=str(tmp_path), **kwargs)


def test_tokens_never_print_and_must_be_long(tmp_path):
    f = tmp_path / "token"
    f.write_text("s3cr3t-s3cr3t-s3cr3t\n")
    token = read_token(str(f))
    assert token.reveal() == "s3cr3t-s3cr3t-s3cr3t" and "s3cr3t" not in repr(token)
    f.write_text("short\n")
    with pytest.raises(ConfigError, match="openssl rand"):
        read_token(str(f))


def test_peer_allowed():
    nets = parse_networks(["10.0.0.0/8", "::1"])
    assert peer_allowed("10.1.2.3", nets) and peer_allowed("::ffff:10.9.9.9", nets)
    assert peer_allowed("::1", nets)
    assert not peer_allowed("127.0.0.1", nets) and not peer_allowed("junk", nets)
    assert peer_allowed("127.0.0.1", ())
    assert nets[1] == ipaddress.ip_network("::1/128")


# ---------------------------------------------------------------- frames, sealing

@pytest.mark.parametrize("codec", CODECS)
def test_one_frame_per_flush_reads_back_as_one_stream(tmp_path, codec):
    encode = make_encoder(codec)
    frames = [encode(b"".join(orjson.dumps({"i": i, "f": f}) + b"\n" for i in range(50)))
              for f in range(4)]
    path = tmp_path / f"x{rotation.SUFFIXES[codec]}"
    path.write_bytes(b"".join(frames))
    assert len(read_shard(path)) == 200
    if codec == "zst":  # complete, self-describing frames with checksums
        params = zstandard.get_frame_parameters(frames[1])
        assert params.has_checksum and params.content_size > 0
    if codec == "gz":
        assert zlib.decompress(frames[2], 31).count(b"\n") == 50


def lines_chunk(n, start=0, tag="x"):
    data = b"".join(orjson.dumps({"i": i, "t": tag}) + b"\n" for i in range(start, start + n))
    return data, n


@pytest.mark.parametrize("codec", CODECS)
def test_sink_rolls_by_time_and_size_and_seals_atomically(tmp_path, codec):
    sink = ShardSink(str(tmp_path), "rc", codec, 60, 4096)
    sealed = []
    for k in range(30):  # ~50 KB over one window: several size rolls
        data, n = lines_chunk(40, 40 * k)
        sealed += sink.append(data, n, [], T0 + k)
    assert sink.window == T0
    assert len(find_parts(str(tmp_path / "rc"))) == 1
    sealed += sink.append(*lines_chunk(5, 9999, "next"), [], T0 + 61)  # next window
    sealed += sink.seal_ended(T0 + 121)
    assert sink.window is None and not find_parts(str(tmp_path / "rc"))
    paths = sealed_shards(tmp_path / "rc")
    assert [s.path for s in sealed] == paths
    assert all(os.path.getsize(p) <= 4096 for p in paths)
    names = [os.path.basename(p) for p in paths]
    assert names[0] == f"rc-20150101T000000Z-0000{rotation.SUFFIXES[codec]}"
    assert names[-1] == f"rc-20150101T000100Z-0000{rotation.SUFFIXES[codec]}"
    got = [orjson.loads(line)["i"] for p in paths for line in read_shard(p)]
    assert got == list(range(1200)) + list(range(9999, 10004))
    assert sum(s.lines for s in sealed) == 1205


def test_sink_makes_no_file_for_an_empty_window_and_logs_rejects(tmp_path):
    sink = ShardSink(str(tmp_path), "rc", "zst", 60, 1 << 20)
    rej = Reject("invalid_json", "bad", "1.2.3.4:9", T0 + 5, b"nope", 4)
    assert sink.append(b"", 0, [rej], T0 + 5) == []
    assert sink.seal_ended(T0 + 3600) == [] and sink.close() == []
    assert not (tmp_path / "rc" / "2015").exists()
    rejects = (tmp_path / "rc" / "_rejects" / "rc-20150101T000000Z.jsonl").read_bytes()
    assert orjson.loads(rejects)["peer"] == "1.2.3.4:9"
    with pytest.raises(ConfigError, match="no shards match"):  # _rejects is never a shard
        find_shards([str(tmp_path / "rc")])


def test_a_restart_in_the_same_window_takes_the_next_seq(tmp_path):
    for _ in range(2):
        sink = ShardSink(str(tmp_path), "rc", "gz", 60, 1 << 20)
        sink.append(*lines_chunk(3), [], T0 + 1)
        sink.close()
    names = sorted(os.path.basename(p) for p in sealed_shards(tmp_path / "rc"))
    assert names == ["rc-20150101T000000Z-0000.ndjson.gz", "rc-20150101T000000Z-0001.ndjson.gz"]


def test_the_feed_lock_keeps_a_second_spooler_out(tmp_path):
    fd = lock_feed(str(tmp_path / "rc"))
    try:  # flock is per open file: try from another process
        res = subprocess.run([sys.executable, "-c", "import sys; from etl.spool.files import "
                              "lock_feed; lock_feed(sys.argv[1])", str(tmp_path / "rc")],
                             capture_output=True, timeout=60, cwd=ROOT)
    finally:
        os.close(fd)
    assert res.returncode != 0 and b"another spooler is writing this feed" in res.stderr
    assert (tmp_path / "rc" / "_spool.lock").read_text() == f"{os.getpid()}\n"


# ---------------------------------------------------------------- recovery

def write_part(tmp_path, codec, frames_of_lines) -> Path:
    encode = make_encoder(codec)
    day = tmp_path / "rc" / "2015" / "01" / "01"
    day.mkdir(parents=True, exist_ok=True)
    part = day / (rotation.shard_name("rc", T0, 0, codec) + rotation.PART)
    part.write_bytes(b"".join(encode(b"".join(x + b"\n" for x in lines))
                              for lines in frames_of_lines))
    return part


def frames(n_frames, per_frame=100):
    return [[orjson.dumps({"i": f * per_frame + i}) for i in range(per_frame)]
            for f in range(n_frames)]


@pytest.mark.parametrize("codec", CODECS)
def test_recovery_cuts_half_a_frame_and_seals_the_rest(tmp_path, codec):
    good = frames(3)
    part = write_part(tmp_path, codec, good)
    extra = make_encoder(codec)(b"".join(orjson.dumps({"late": i}) + b"\n" for i in range(500)))
    with open(part, "ab") as fh:
        fh.write(extra[: len(extra) // 2])  # the kill came mid-write
    whole = part.stat().st_size - len(extra) // 2
    rec = recover_feed(str(tmp_path / "rc"))[0]
    assert not part.exists() and rec.path == str(part)[: -len(".part")]
    assert rec.kept_bytes == (whole if codec != "none" else rec.kept_bytes)
    kept = read_shard(rec.path)
    want = [x for f in good for x in f]
    assert kept[:300] == want and rec.lines == len(kept)
    if codec != "none":  # half a frame is never valid: all of it is cut
        assert len(kept) == 300
    else:  # plain text: whole lines of the half frame are kept, the broken one is not
        assert all(orjson.loads(x) for x in kept)
    cut = Path(rec.cut_path).read_bytes()
    assert cut and os.path.getsize(rec.path) + len(cut) == whole + len(extra) // 2


@pytest.mark.parametrize("codec", ["zst", "gz"])
def test_recovery_stops_at_a_corrupt_frame_and_at_trailing_zeros(tmp_path, codec):
    part = write_part(tmp_path, codec, frames(3))
    size = part.stat().st_size
    with open(part, "ab") as fh:
        fh.write(b"\0" * 4096)  # power loss: the size grew, the data never landed
    rec = recover_part(str(part), str(tmp_path / "rc"))
    assert rec.kept_bytes == size and len(read_shard(rec.path)) == 300
    # a damaged byte inside the second frame: only the first frame is kept
    part = write_part(tmp_path, codec, frames(3))
    os.remove(rec.path)
    blob = bytearray(part.read_bytes())
    first = len(make_encoder(codec)(b"".join(x + b"\n" for x in frames(1)[0])))
    blob[first + 30] ^= 0xFF
    part.write_bytes(bytes(blob))
    rec = recover_part(str(part), str(tmp_path / "rc"))
    assert read_shard(rec.path) == frames(1)[0]


def test_recovery_removes_a_part_with_nothing_whole_and_keeps_its_bytes(tmp_path):
    part = write_part(tmp_path, "zst", [])
    part.write_bytes(make_encoder("zst")(b'{"a":1}\n')[:-3])
    rec = recover_part(str(part), str(tmp_path / "rc"))
    assert rec.path is None and not part.exists()
    assert Path(rec.cut_path).stat().st_size == rec.cut_bytes > 0


def test_ingest_never_takes_part_files(tmp_path):
    part = write_part(tmp_path, "zst", frames(1))
    for pattern in (tmp_path / "rc", tmp_path / "rc" / "**" / "*", part):
        with pytest.raises(ConfigError, match=r"\.part"):
            find_shards([str(pattern)])
    sealed = recover_part(str(part), str(tmp_path / "rc")).path
    write_part(tmp_path, "zst", frames(1))  # a new .part beside the sealed shard
    assert [s.path for s in find_shards([str(tmp_path / "rc" / "**" / "*.zst*")])] == [sealed]
    assert sealed_shards(tmp_path / "rc") == [sealed]


# ---------------------------------------------------------------- metrics

def test_metrics_text_has_every_series():
    m = Metrics()
    m.connections_total, m.lines = 3, 42
    m.rejects["too_long"] += 2
    m.pause_begin()
    m.pause_end()
    text = m.render()
    for name in ("connections_open", "connections_total", "lines_total", "bytes_total",
                 "windows_sealed_total", "backpressure_seconds_total"):
        assert f"# TYPE etl_spool_{name} " in text
    assert "etl_spool_lines_total 42\n" in text
    assert 'etl_spool_rejects_total{reason="too_long"} 2\n' in text
    assert 'etl_spool_rejects_total{reason="invalid_json"} 0\n' in text


# ---------------------------------------------------------------- feed writer, fake clock

def test_feed_writer_rolls_windows_on_its_clock_and_seals_on_close(tmp_path):
    now = [T0 + 10.0]

    async def scenario():
        sink = ShardSink(str(tmp_path), "rc", "zst", 60, 1 << 20)
        metrics = Metrics()
        writer = FeedWriter(sink, metrics, clock=lambda: now[0])
        task = asyncio.create_task(writer.run())
        for i in range(3):
            await writer.put(Chunk(*lines_chunk(10, 10 * i)))
        await asyncio.sleep(0.8)  # > FLUSH_SECONDS: the lines reach the .part
        assert len(find_parts(str(tmp_path / "rc"))) == 1
        now[0] = T0 + 65.0  # the window ended: next wake-up seals it
        await writer.put(Chunk(*lines_chunk(10, 30, "late")))
        await asyncio.sleep(0.3)
        assert len(sealed_shards(tmp_path / "rc")) == 1
        await writer.close()
        await task
        return metrics

    metrics = asyncio.run(scenario())
    paths = sealed_shards(tmp_path / "rc")
    assert [os.path.basename(p)[:22] for p in paths] == ["rc-20150101T000000Z-00",
                                                          "rc-20150101T000100Z-00"]
    assert [len(read_shard(p)) for p in paths] == [30, 10]
    assert metrics.windows_sealed == 2 and metrics.lines == 40


def test_a_write_error_stops_the_feed_writer_and_leaves_the_part_for_recovery(tmp_path):
    class DiskFull(ShardSink):
        calls = 0

        def append(self, data, lines, rejects, at):
            DiskFull.calls += 1
            if DiskFull.calls > 1:
                raise OSError(28, "No space left on device")
            return super().append(data, lines, rejects, at)

    async def scenario():
        sink = DiskFull(str(tmp_path), "rc", "zst", 3600, 1 << 20)
        writer = FeedWriter(sink, Metrics(), clock=lambda: T0 + 1.0)
        task = asyncio.create_task(writer.run())
        await writer.put(Chunk(*lines_chunk(10)))
        await asyncio.sleep(0.8)  # first flush lands
        await writer.put(Chunk(*lines_chunk(10, 10)))
        with pytest.raises(OSError, match="No space"):
            await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    parts = find_parts(str(tmp_path / "rc"))
    assert len(parts) == 1
    rec = recover_part(parts[0], str(tmp_path / "rc"))
    assert len(read_shard(rec.path)) == 10
