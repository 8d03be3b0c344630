"""Tests for etl.bzip2: local bzip2 files decoded by indexed_bzip2 straight into line
batches, libbz2 taking over at the first doubt. The damaged-stream battery of
tests/test_shards.py runs every case through a local file too (its ``filled``)."""

from __future__ import annotations

import io
import os
import random
import subprocess
from pathlib import Path

import pytest

from etl import bzip2
from etl.bzip2 import Bz2Fill, ends_with_stream_end
from etl.config import IngestConfig
from etl.errors import CorruptShardError
from etl.job import shares_process
from etl.schema import load_schema
from etl.shards import Shard, _Fill, iter_chunks, iter_line_batches, open_shard
from tests.conftest import DATA, SCHEMAS, compress, require_tool

COMMENTS = SCHEMAS / "reddit_comments.toml"


def lines(n: int, seed: int = 7) -> bytes:
    rng = random.Random(seed)
    return b"".join(b'{"id":"c%d","body":"%s"}\n' % (i, rng.randbytes(30).hex().encode())
                    for i in range(n))


@pytest.fixture(scope="module")
def data() -> bytes:
    return lines(40_000)  # 3.1 MB: 31 blocks at -1 (100 kB blocks)


@pytest.fixture(scope="module")
def multi(data) -> bytes:
    """Three streams of several blocks each, and an empty one: as pbzip2 and `cat` make."""
    third = len(data) // 3
    return b"".join(compress(["bzip2", "-1", "-c"], part)
                    for part in (data[:third], b"", data[third:2 * third], data[2 * third:]))


def read_batches(path: Path, batch_bytes: int = 1 << 16):
    """(source, decoded bytes, compressed bytes counted) of a local shard's fill path."""
    counter = [0]
    with open_shard(Shard(str(path))) as fh:
        chunks = iter_chunks(fh, str(path), counter, fill=True)
        [src] = chunks
        batches = list(iter_line_batches(iter([src]), batch_bytes))
    return src, b"".join(bytes(b.joined()) + b"\n" for b in batches), counter[0]


def tool_output(path: Path) -> bytes:
    require_tool("bzip2")
    return subprocess.run(["bzip2", "-dc", str(path)], capture_output=True, check=True).stdout


def test_local_file_decodes_through_indexed_bzip2_alone(tmp_path, data, multi):
    path = tmp_path / "multi.bz2"
    path.write_bytes(multi)
    src, got, counted = read_batches(path)
    assert type(src) is Bz2Fill
    assert src.pieces is None  # libbz2 never took over
    assert got == data == tool_output(path)
    assert counted == len(multi)


@pytest.mark.parametrize("tool", [["lbzip2", "-n2", "-c"], ["pbzip2", "-p2", "-c"],
                                  ["bzip2", "-9", "-c"]], ids=["lbzip2", "pbzip2", "bzip2"])
def test_other_compressors_files_need_no_second_reading(tmp_path, data, tool):
    # the end checks must hold for what common compressors write: libbz2 reading a file
    # again, after the fact, would double its time
    path = tmp_path / "t.bz2"
    path.write_bytes(compress(tool, data))
    src, got, counted = read_batches(path)
    assert type(src) is Bz2Fill and src.pieces is None
    assert got == data and counted == path.stat().st_size


@pytest.mark.parametrize("batch_bytes", [1 << 12, 1 << 16, 1 << 20])
def test_batches_are_the_lines_whatever_their_size(tmp_path, data, batch_bytes):
    path = tmp_path / "one.bz2"
    path.write_bytes(compress(["bzip2", "-1", "-c"], data))
    src, got, _ = read_batches(path, batch_bytes)
    assert type(src) is Bz2Fill and got == data


@pytest.mark.parametrize("garbage, kind", [
    (b"x", "trailing garbage"), (b"\0", "trailing garbage"), (b"\x17", "trailing garbage"),
    (b"junk" * 3, "trailing garbage"), (os.urandom(11), "trailing garbage|truncated"),
    (b"BZh", "truncated"),  # a stream's magic: another stream, cut short
], ids=["x", "zero", "0x17", "text", "random", "magic"])
def test_anything_after_the_last_stream_fails_the_shard(tmp_path, multi, garbage, kind):
    path = tmp_path / "g.bz2"
    path.write_bytes(multi + garbage)
    with pytest.raises(CorruptShardError, match=kind) as exc:
        read_batches(path)
    assert exc.value.path == str(path)


@pytest.mark.parametrize("between", [b"junk", b"\0", b"BXh9"], ids=["text", "zero",
                                                                    "damaged-magic"])
def test_anything_between_streams_fails_the_shard(tmp_path, data, between):
    # the file then ends where a stream ends: only the bytes read show the decoder stopped
    first = compress(["bzip2", "-1", "-c"], data[:50_000])
    second = compress(["bzip2", "-1", "-c"], data[50_000:])
    if between == b"BXh9":
        second, between = between + second[4:], b""
    path = tmp_path / "b.bz2"
    path.write_bytes(first + between + second)
    with pytest.raises(CorruptShardError, match="trailing garbage") as exc:
        read_batches(path)
    assert f"near compressed byte {len(first)}" in str(exc.value)


def test_a_damaged_later_block_fails_after_the_good_ones(tmp_path, data):
    raw = bytearray(compress(["bzip2", "-1", "-c"], data))
    raw[len(raw) * 3 // 4] ^= 0x55  # a block near the end
    path = tmp_path / "d.bz2"
    path.write_bytes(bytes(raw))
    given = []
    with open_shard(Shard(str(path))) as fh:
        [src] = iter_chunks(fh, str(path), fill=True)
        with pytest.raises(CorruptShardError, match="corrupt|truncated") as exc:
            for batch in iter_line_batches(iter([src]), 1 << 16):
                given.append(bytes(batch.joined()) + b"\n")
    assert exc.value.path == str(path)
    assert given and data.startswith(b"".join(given))  # what was given is the data's start


def test_randomised_blocks_are_handed_to_libbz2(tmp_path):
    # bzip2 0.9.0's randomised blocks: indexed_bzip2 refuses them, libbz2 decodes them
    path = tmp_path / "r.bz2"
    path.write_bytes((DATA / "bzip2" / "randomized-blocks.bin").read_bytes())
    src, got, counted = read_batches(path)
    assert type(src) is Bz2Fill and src.pieces is not None
    want = tool_output(path)
    assert got == (want if want.endswith(b"\n") else want + b"\n")
    assert counted == path.stat().st_size


def test_pipes_and_files_read_partway_go_through_libbz2(tmp_path, data):
    raw = compress(["bzip2", "-c"], data[:5000])
    assert not isinstance(next(iter_chunks(io.BytesIO(raw), "mem.bz2", fill=True)), _Fill)
    r, w = os.pipe()
    os.write(w, raw)
    os.close(w)
    with os.fdopen(r, "rb", buffering=0) as pipe:
        assert not isinstance(next(iter_chunks(pipe, "pipe.bz2", fill=True)), _Fill)
    path = tmp_path / "p.bz2"
    path.write_bytes(b"xx" + raw)
    with open(path, "rb", buffering=0) as fh:
        fh.read(2)  # not at its start: the decoder would read the file from byte 0
        chunks = iter_chunks(fh, str(path), fill=True, codec=bzip2.BZIP2)
        assert not isinstance(next(chunks), _Fill)


def test_stream_end_is_found_at_every_padding(data):
    pads = set()
    for n in range(0, 400, 7):
        raw = compress(["bzip2", "-c"], data[:n * 13])
        assert ends_with_stream_end(raw[-bzip2.TAIL:]), n
        tail = int.from_bytes(raw[-bzip2.TAIL:], "big")
        pads |= {pad for pad in range(8)
                 if (tail >> (pad + 32)) & ((1 << 48) - 1) == bzip2.EOS_MAGIC}
        assert not ends_with_stream_end(raw[-bzip2.TAIL:] + b"\0")
        assert not ends_with_stream_end((raw + b"x")[-bzip2.TAIL:])
    assert pads == set(range(8))  # streams ending at every bit of their last byte
    assert not ends_with_stream_end(b"BZh9")
    assert not ends_with_stream_end(b"")


def test_shared_processes_keep_to_libbz2(tmp_path, data):
    # indexed_bzip2 holds the GIL while it decodes: not where other tasks run in threads
    path = tmp_path / "s.bz2"
    path.write_bytes(compress(["bzip2", "-c"], data[:20_000]))
    with open_shard(Shard(str(path))) as fh:
        chunks = iter_chunks(fh, str(path), fill=True, shared=True)
        assert not isinstance(next(chunks), _Fill)


@pytest.mark.parametrize("scheduler, shared", [("synchronous", False), ("processes", False),
                                               ("threads", True)])
def test_which_schedulers_share_a_process(tmp_path, scheduler, shared):
    cfg = IngestConfig(load_schema(COMMENTS), str(tmp_path / "out"), scheduler)
    assert shares_process(cfg) is shared


@pytest.mark.parametrize("threads", [1, 2])
def test_a_dask_worker_shares_its_process_when_it_has_threads(tmp_path, threads):
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=threads, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        cfg = IngestConfig(load_schema(COMMENTS), str(tmp_path / "out"),
                           cluster.scheduler_address)
        assert client.submit(shares_process, cfg).result() is (threads > 1)


@pytest.mark.parametrize("after", [1, 4096, 65536, 1 << 20])
def test_libbz2_taking_over_midway_goes_on_from_the_same_byte(tmp_path, multi, data, after):
    # what a doubt in the middle does (randomised blocks after normal ones, say): libbz2
    # decodes from the file's start and skips exactly what indexed_bzip2 gave
    path = tmp_path / "m.bz2"
    path.write_bytes(multi)
    with open_shard(Shard(str(path))) as fh:
        [src] = iter_chunks(fh, str(path), fill=True)
        buf = bytearray(after)
        got = bytearray()
        while len(got) < after:
            got += buf[:src.readinto(memoryview(buf)[:after - len(got)])]
        src._close()
        src._to_libbz2()
        rest = bytearray(1 << 16)
        while n := src.readinto(memoryview(rest)):
            got += rest[:n]
    assert bytes(got) == data
