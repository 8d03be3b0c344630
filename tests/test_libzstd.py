"""etl.libzstd: zstd decompressed straight into line batches through libzstd's
streaming API, and the window allocator (the codec suites of test_shards decode every
zstd case through it as well, in ``both_ways``)."""

from __future__ import annotations

import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from etl.errors import CorruptShardError
from etl.libzstd import Libzstd, Windows
from etl.shards import iter_chunks
from tests.conftest import require_tool
from tests.test_shards import LINE_CASES, check_filled, filled, pack


@pytest.mark.parametrize("batch_bytes", [1, 16, 1000, 1 << 20])
@pytest.mark.parametrize("name", list(LINE_CASES))
def test_zstd_is_decompressed_straight_into_its_batches(name, batch_bytes):
    """zstd through libzstd's streaming API into each batch's own buffer: the same
    lines, numbers and offsets, every compressed byte counted; in frames of every size."""
    check_filled("zstd", LINE_CASES[name], batch_bytes)


def test_zstd_fill_needs_the_whole_last_frame():
    """The fill path's own end check: a stream cut anywhere in its last frame (even just
    its 4-byte checksum) is truncated; a stream ending right after a frame is whole."""
    require_tool("zstd")
    data = b"".join(b'{"n":%d}\n' % i for i in range(3000))
    one, two = (subprocess.run(["zstd", "-q", "-c", "--check"], input=part,
                               capture_output=True, check=True).stdout
                for part in (data[:20_000], data[20_000:]))
    assert filled(one + two, "z") == data
    for cut in (4, 5, len(two) // 2, len(two) - 4, len(two) - 1):
        with pytest.raises(CorruptShardError, match="zstd stream is truncated"):
            filled(one + two[:cut], "z")
    for cut in (1, 3):  # shorter than a frame's magic: not a frame at all
        with pytest.raises(CorruptShardError, match="trailing garbage"):
            filled(one + two[:cut], "z")


def test_zstd_keeps_one_window_for_the_next_stream_and_grows_it_in_place(monkeypatch):
    """A window's buffer is mapped by Windows and kept when its decoder is freed; the
    next stream takes it back (the same mapping), a bigger window grows it, and one
    spare at most is kept."""
    require_tool("zstd")
    monkeypatch.setattr(Libzstd, "_loaded", [])  # a fresh allocator for this test
    data = LINE_CASES["small"]

    def packed(window_log: int) -> bytes:  # from a pipe: no content size in the header,
        return subprocess.run(  # so the decoder takes the whole window
            ["zstd", "-q", "-c", f"--long={window_log}"], input=data, capture_output=True,
            check=True).stdout

    windows = Libzstd.get().windows
    assert windows is not None and windows.spare is None
    assert filled(packed(26), "a") == data
    addr, size = windows.spare
    assert size >= 64 << 20 and not windows.live
    assert filled(packed(26), "b") == data
    assert windows.spare == (addr, size)  # taken back, not mapped anew
    assert filled(packed(27), "c") == data
    assert windows.spare[1] >= 128 << 20 and not windows.live  # grown, the old one gone
    assert filled(packed(26), "d") == data and windows.spare[1] >= 128 << 20
    # decoders in threads at once (the threads scheduler): each gets a window of its own
    streams = [packed(26), packed(27)] * 3
    with ThreadPoolExecutor(6) as pool:
        assert list(pool.map(lambda raw: filled(raw, "t", 4096), streams)) == [data] * 6
    assert not windows.live and windows.spare[1] >= 128 << 20


def test_zstd_decodes_on_malloc_where_windows_cannot_be_mapped(monkeypatch):
    monkeypatch.setattr(Libzstd, "_loaded", [])
    monkeypatch.setattr(Windows, "make", classmethod(lambda cls: None))
    data = LINE_CASES["small"]
    assert Libzstd.get().windows is None
    assert filled(pack("zstd", data), "z") == data


def test_zstd_is_read_in_pieces_when_libzstd_is_not_exported(tmp_path, monkeypatch):
    monkeypatch.setattr(Libzstd, "_loaded", [None])
    data = LINE_CASES["small"]
    path = tmp_path / "z"
    path.write_bytes(pack("zstd", data))
    with open(path, "rb", buffering=0) as fh:
        pieces = list(iter_chunks(fh, str(path), fill=True))
    assert all(type(p) is bytes for p in pieces) and b"".join(pieces) == data
