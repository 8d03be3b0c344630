"""One big shard in parts (etl/split.py): which files split, and that parts change nothing.

Every file here is written by the real tools: ``pzstd`` (multi-frame zstd), ``xz -T2
--block-size`` (multi-block xz), ``bgzip`` (BGZF). The parts' pieces must join into
exactly the decompressed text, at every part size down to one byte, and an ingest in
parts must write the same rows, counts and rejects (line numbers and offsets too) as
the same ingest in one piece.
"""

from __future__ import annotations

import glob
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import etl
from etl import split
from etl.shards import find_shards, iter_chunks, open_shard
from tests.conftest import compress, require_tool
from tests.test_pipeline import COMMENTS, run_etl, sample_bytes

# lines of every shape a boundary can fall into: empty, CRLF, long, none at the end
_rng = random.Random(7)  # text that does not compress away: members of some size
TRICKY = b"".join(b"".join([b'{"a":1}\n', b"\n", b'{"b":"x"}\r\n', b"\r\n",
                           b'{"c":"' + _rng.randbytes(2500).hex().encode() + b'"}\n', b"\n\n",
                           b"not json\n"]) for _ in range(40)) + b'{"last":true}'
MAKERS = {
    "plain": lambda data: data,
    "pzstd": lambda data: compress(["pzstd", "-q", "-p", "2", "-c"], data),
    "zstd frames": lambda data: b"".join(compress(["zstd", "-q", "-c"], data[i:i + 9000])
                                         for i in range(0, len(data), 9000)),
    "xz blocks": lambda data: compress(["xz", "-q", "-T2", "--block-size=7000", "-c"], data),
    "bgzip": lambda data: compress(["bgzip", "-c"], data),
}


def _shard(tmp_path: Path, kind: str, data: bytes) -> tuple[Path, etl.shards.Shard]:
    path = tmp_path / f"in-{kind.replace(' ', '_')}"
    path.write_bytes(MAKERS[kind](data))
    return path, find_shards([str(path)])[0]


def _whole(shard) -> bytes:
    with open_shard(shard) as fh:
        return b"".join(iter_chunks(fh, shard.path))


@pytest.mark.parametrize("kind", ["plain", "zstd frames", "xz blocks", "bgzip"])
@pytest.mark.parametrize("part_bytes", [1, 700, 5000, 20000])
def test_parts_join_into_exactly_the_text(tmp_path, kind, part_bytes):
    data = TRICKY[:3000] if kind == "plain" and part_bytes == 1 else TRICKY
    if kind == "bgzip":
        data = data * 4  # bgzip members hold 64 KiB each
    path, shard = _shard(tmp_path, kind, data)
    parts = split.plan(shard, part_bytes)
    assert parts is not None and len(parts) >= 2
    assert [p.index for p in parts] == list(range(len(parts)))
    assert parts[0].span[0] == 0 and parts[-1].span[1] == path.stat().st_size
    assert all(a.span[1] == b.span[0] for a, b in zip(parts, parts[1:]))
    owned = [[0] for _ in parts]
    pieces = [b"".join(split.part_chunks(p, owned=o)) for p, o in zip(parts, owned)]
    assert b"".join(pieces) == _whole(shard) == data
    assert [o[0] for o in owned] == list(map(len, pieces))
    # each piece after the first starts a line, and each but the last ends one
    starts = {0} | {i + 1 for i, b in enumerate(data) if b == 10}
    at = 0
    for piece in pieces:
        assert not piece or at in starts
        at += len(piece)


def test_pzstd_output_splits(tmp_path):
    data = sample_bytes(3000, seed=3) * 4
    path, shard = _shard(tmp_path, "pzstd", data)
    parts = split.plan(shard, 1)
    assert parts is not None and len(parts) >= 2
    assert b"".join(b"".join(split.part_chunks(p)) for p in parts) == data


@pytest.mark.parametrize("tool", [["zstd", "-q", "-T2", "-c"], ["gzip", "-c"], ["bzip2", "-c"],
                                  ["xz", "-q", "-c"]])
def test_single_member_files_do_not_split(tmp_path, tool):
    """One zstd frame (zstd -T0 writes one), one gzip member, bzip2, single-block xz."""
    path = tmp_path / "one"
    path.write_bytes(compress(tool, TRICKY))
    assert split.plan(find_shards([str(path)])[0], 1) is None


def test_small_damaged_or_unsized_shards_do_not_split(tmp_path):
    path, shard = _shard(tmp_path, "zstd frames", TRICKY)
    assert split.plan(shard, shard.size) is None           # not bigger than a part
    assert split.plan(shard, 0) is None                     # 0: never
    (tmp_path / "cut").write_bytes(path.read_bytes()[:-5])  # truncated: the walk sees it
    assert split.plan(find_shards([str(tmp_path / "cut")])[0], 1) is None
    (tmp_path / "tail").write_bytes(path.read_bytes() + b"garbage")
    assert split.plan(find_shards([str(tmp_path / "tail")])[0], 1) is None
    xz, _ = _shard(tmp_path, "xz blocks", TRICKY)
    (tmp_path / "two.xz").write_bytes(xz.read_bytes() * 2)  # two streams: not from the index
    assert split.plan(find_shards([str(tmp_path / "two.xz")])[0], 1) is None
    assert split.plan(etl.shards.Shard("-"), 1) is None


def _ingest(path: Path, out: Path, part_bytes: int) -> tuple[dict, list, list]:
    report = etl.ingest([str(path)], COMMENTS, str(out), part_bytes=part_bytes,
                        scheduler="processes")
    files = sorted(glob.glob(str(out / "created_utc_date=*" / "*.parquet")))
    rows = sorted(map(repr, (r for f in files for r in pq.read_table(f).to_pylist())))
    rejects = [r for f in glob.glob(str(out / "_rejects" / "*.parquet"))
               for r in pq.read_table(f).to_pylist()]
    return report, rows, rejects


COUNTED = ("lines", "rows_written", "rows_filtered", "rows_rejected", "blank_lines",
           "rejects_by_reason", "bytes_in", "bytes_decompressed")


@pytest.mark.parametrize("kind", ["plain", "zstd frames", "xz blocks", "bgzip"])
def test_ingest_in_parts_equals_ingest_in_one(tmp_path, kind):
    data = sample_bytes(2500, seed=21, bad_rate=0.05) + b"\n\n" + b"{broken\r\n" + b'{"x":1}'
    path, _ = _shard(tmp_path, kind, data)
    whole, rows_a, rejects_a = _ingest(path, tmp_path / "one", 0)
    parted, rows_b, rejects_b = _ingest(path, tmp_path / "parts", 40_000)
    assert whole["status"]["ok"] == parted["status"]["ok"] == 1
    assert len(glob.glob(str(tmp_path / "parts" / "*" / "*-p0001-*.parquet"))) > 0  # it did split
    assert {k: whole[k] for k in COUNTED} == {k: parted[k] for k in COUNTED}
    assert whole["rows_rejected"] > 100 and whole["blank_lines"] >= 2
    assert rows_a == rows_b and len(rows_a) == whole["rows_written"]
    assert rejects_a == rejects_b  # same line numbers, offsets, bytes and reasons
    lines = data.split(b"\n")
    for r in rejects_b:
        assert lines[r["line_no"] - 1].rstrip(b"\r") == r["line"]
        assert data[r["offset"]:].startswith(r["line"])
    again = etl.ingest([str(path)], COMMENTS, str(tmp_path / "parts"), part_bytes=40_000)
    assert again["status"]["skipped"] == 1  # done: the manifest covers the whole shard
    redo = etl.ingest([str(path)], COMMENTS, str(tmp_path / "parts"), part_bytes=0, force=True)
    assert redo["rows_written"] == whole["rows_written"]  # unsplit now: the parts' files go
    assert not glob.glob(str(tmp_path / "parts" / "*" / "*-p0001-*.parquet"))


def test_a_damaged_part_fails_the_shard_alone_and_publishes_nothing(tmp_path):
    data = sample_bytes(2500, seed=22)
    path, _ = _shard(tmp_path, "xz blocks", data)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x55  # inside some block in the middle
    path.write_bytes(bytes(raw))
    good = tmp_path / "good.ndjson"
    good.write_bytes(sample_bytes(300, seed=23))
    out = tmp_path / "out"
    report = etl.ingest([str(path), str(good)], COMMENTS, str(out), part_bytes=40_000)
    status = {Path(s["path"]).name: s for s in report["shards"]}
    assert status["good.ndjson"]["status"] == "ok"
    bad = status[path.name]
    assert bad["status"] == "failed"
    assert path.name in bad["error"] and "part " in bad["error"] and "xz" in bad["error"]
    assert "nothing of the shard is published" in bad["error"]
    assert not glob.glob(str(out / "*" / f"{path.name}*.parquet"))
    assert not glob.glob(str(out / "**" / ".*.tmp"), recursive=True)
    assert not glob.glob(str(out / "_rejects" / f"{path.name}*"))
    assert report["status"] == {"ok": 1, "skipped": 0, "failed": 1}


def test_cli_part_mb_and_real_bgzip_file(tmp_path):
    require_tool("bgzip")
    data = sample_bytes(4000, seed=24)
    path, _ = _shard(tmp_path, "bgzip", data)
    run_etl("ingest", str(path), "--schema", COMMENTS, "--out", str(tmp_path / "o"),
            "--part-mb", "0.05", "-q", check=0)
    assert glob.glob(str(tmp_path / "o" / "*" / "*-p0001-*.parquet"))


def test_parts_are_about_equal():
    """Cuts at the member boundary nearest each equal share: both workers get the same work."""
    assert split._group([0, 56, 112, 168, 224], 128) == [0, 112, 224]  # not 168 + 56
    assert split._group([0, 56, 112, 168, 224], 1000) == [0, 224]
    assert split._group(list(range(0, 1001)), 250) == [0, 250, 500, 750, 1000]
    assert split._group([0, 10, 1000], 1) == [0, 10, 1000]  # no more parts than members


def test_plain_parts_are_equal(tmp_path):
    path = tmp_path / "p.ndjson"
    path.write_bytes(TRICKY)
    parts = split.plan(find_shards([str(path)])[0], len(TRICKY) // 3 + 1)
    sizes = [p.size for p in parts]
    assert len(parts) == 3 and max(sizes) - min(sizes) <= 1


def test_shards_split_only_to_keep_cores_busy():
    """Four equal shards on two cores run whole; one big one, or a straggler, splits."""
    from etl.pipeline import _splitting
    from etl.shards import Shard

    four = [Shard(f"/d/{i}.ndjson", 275 << 20, 0.0) for i in range(4)]
    assert not any(map(_splitting(four, "processes", 2), four))
    one = [Shard("/d/big.ndjson", 1 << 30, 0.0)]
    assert _splitting(one, "processes", 2)(one[0])
    mixed = [Shard("/d/big.ndjson", 10 << 30, 0.0)] + four
    assert list(map(_splitting(mixed, "processes", 2), mixed)) == [True] + [False] * 4
    assert all(map(_splitting(four, "tcp://scheduler:8786", 2), four))
    # on 8 workers, four shards are too few to keep them busy: every one splits
    assert all(map(_splitting(four, "processes", 8), four))
