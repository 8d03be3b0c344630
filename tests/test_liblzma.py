"""etl.liblzma: xz decompressed straight into line batches through liblzma's stream
decoder (the codec suites of test_shards, the xz project's good and bad files among
them, decode every xz case through it as well, in ``both_ways``)."""

from __future__ import annotations

import io
import lzma
import subprocess
import sys

import pytest

from etl.errors import CorruptShardError
from etl import liblzma
from etl.liblzma import Liblzma, XzFill, candidates, xz_member
from etl.shards import XZ, iter_chunks
from tests.conftest import IN_CI, require_tool
from tests.test_shards import LINE_CASES, both_ways, check_filled, filled, pack

DATA = b"".join(b'{"n":%d,"body":"line %d"}\n' % (i, i * 7) for i in range(4000))


def xz(data: bytes, *flags: str) -> bytes:
    require_tool("xz")
    return subprocess.run(["xz", "-c", "-0", *flags], input=data, capture_output=True,
                          check=True).stdout


def pieces(raw: bytes, path: str = "x.xz") -> list[bytes]:
    return list(iter_chunks(io.BytesIO(raw), path))


def test_liblzma_is_reached_where_the_tests_run():
    """Python's lzma module is linked with liblzma here: the fill path is the one the
    codec suites compare with the pieces path, not the pieces path twice."""
    if not sys.platform.startswith("linux"):
        pytest.skip("checked on Linux, where CI runs")
    assert Liblzma.get() is not None
    chunks = list(iter_chunks(io.BytesIO(pack("xz", DATA)), "x.xz", fill=True))
    assert len(chunks) == 1 and type(chunks[0]) is XzFill


@pytest.mark.parametrize("batch_bytes", [1, 16, 1000, 1 << 20])
@pytest.mark.parametrize("name", list(LINE_CASES))
def test_xz_is_decompressed_straight_into_its_batches(name, batch_bytes):
    """The same lines, numbers and offsets, every compressed byte counted; in one stream,
    in streams of every size, and with stream padding between them."""
    check_filled("xz", LINE_CASES[name], batch_bytes, padding=b"\0" * 4)


def test_xz_fill_needs_the_whole_last_stream():
    """A stream cut anywhere in its last stream is truncated (or, cut inside its magic
    bytes, trailing garbage), as the pieces path says; a whole one decodes."""
    one, two = xz(DATA[:30_000]), xz(DATA[30_000:], "--block-size=20000")
    assert filled(one + two, "x") == DATA
    for cut in (*range(1, 14), len(two) // 3, len(two) // 2, len(two) - 13, len(two) - 1):
        with pytest.raises(CorruptShardError) as caught:
            both_ways(lambda raw=one + two[:cut]: pieces(raw), one + two[:cut], "x.xz")
        assert ("truncated" if cut >= 6 else "trailing garbage") in str(caught.value)


@pytest.mark.parametrize("damage", ["flip", "garbage", "padding", "check"])
def test_xz_fill_fails_damage_as_the_pieces_path_does(damage):
    """Damage fails both paths with the same kind of error, naming the file: a flipped
    byte, garbage after the last stream, padding that is not a multiple of four bytes,
    and a wrong CRC64 of a block (liblzma verifies it either way)."""
    raw = bytearray(xz(DATA, "--check=crc64"))
    if damage == "flip":
        raw[len(raw) // 2] ^= 0x55
    elif damage == "garbage":
        raw += b"nope, not xz"
    elif damage == "padding":
        raw += b"\0" * 3
    else:  # the block's check sits just before the index (0x00 indicator byte)
        index = raw.rindex(b"\0", 0, len(raw) - 12)
        raw[index - 1] ^= 0xFF
    with pytest.raises(CorruptShardError) as caught:
        both_ways(lambda: pieces(bytes(raw)), bytes(raw), "x.xz")
    assert "x.xz" in str(caught.value)


def test_xz_decoder_is_freed_at_the_end_and_on_damage():
    src = next(iter_chunks(io.BytesIO(pack("xz", DATA)), "x", fill=True))
    assert src.live
    buf = bytearray(len(DATA) + 10)
    assert src.readinto(memoryview(buf)) == len(DATA) and not src.live and src.done
    assert src.readinto(memoryview(buf)) == 0
    bad = next(iter_chunks(io.BytesIO(pack("xz", DATA)[:-20]), "x", fill=True))
    with pytest.raises(CorruptShardError, match="truncated"):
        bad.readinto(memoryview(buf))
    assert not bad.live


def test_xz_is_read_in_pieces_where_liblzma_cannot_be_reached(monkeypatch):
    monkeypatch.setattr(Liblzma, "_loaded", [None])
    chunks = list(iter_chunks(io.BytesIO(pack("xz", DATA)), "x", fill=True))
    assert all(type(c) is bytes for c in chunks) and b"".join(chunks) == DATA


def test_the_newest_liblzma_is_chosen_and_lzma_cf_brings_one(monkeypatch):
    """On Linux, lzma-cf (a dependency there) brings liblzma 5.8, whose decoder is much
    faster than Debian 12's 5.4: it is found, and the newest library wins whatever the
    order it was found in; a path that does not load is passed over."""
    if not sys.platform.startswith("linux"):
        pytest.skip("lzma-cf's wheel is a dependency on Linux only")
    found = candidates()
    sources = [source for source, _ in found]
    if "lzma-cf" not in sources and not IN_CI:
        pytest.skip("lzma-cf is not installed here (make setup installs it)")
    assert sources[0] == "lzma-cf" and sources[-1] == "python"
    libs = [Liblzma(path, source) for source, path in found]
    newest = max(lib.number for lib in libs)
    assert newest >= 50080000 and libs[0].version.startswith("5.")
    for order in (found, found[::-1], [("python", "/nowhere/liblzma.so.5"), *found]):
        monkeypatch.setattr(Liblzma, "_loaded", [])
        monkeypatch.setattr(liblzma, "candidates", lambda order=order: order)
        assert Liblzma.get().number == newest
    monkeypatch.setattr(Liblzma, "_loaded", [])
    monkeypatch.setattr(liblzma, "candidates", lambda: [("python", "/nowhere/liblzma.so")])
    assert Liblzma.get() is None


def test_pieces_use_the_chosen_library_and_raise_pythons_errors(monkeypatch):
    """The pieces path (parts of split shards, spool recovery) decodes with lzma-cf's port
    of Python's module when its liblzma is the chosen one, and with Python's module
    otherwise; both decode alike and fail with ``lzma.LZMAError`` in the same words."""
    raw = xz(DATA, "--block-size=30000")
    bad = bytearray(raw)
    bad[len(bad) // 2] ^= 0x55
    lib = Liblzma.get()
    kinds = {}
    for chosen in ([lib] if lib and lib.source == "lzma-cf" else []) + [None]:
        monkeypatch.setattr(Liblzma, "_loaded", [chosen])
        member = XZ.new_member()
        kinds[chosen is not None] = type(member)
        assert member.decompress(raw, 1000) == DATA[:1000] and not member.needs_input
        out = DATA[:1000] + member.decompress(b"", -1)
        assert out == DATA and member.eof and member.unused_data == b""
        with pytest.raises(lzma.LZMAError) as caught:
            xz_member().decompress(bytes(bad))
        assert str(caught.value) == "Corrupt input data"
    assert kinds[False] is lzma.LZMADecompressor
    if lib and lib.source == "lzma-cf":
        import lzma_cf

        assert issubclass(kinds[True], lzma_cf.LZMADecompressor)
    elif IN_CI and sys.platform.startswith("linux"):
        pytest.fail("lzma-cf's liblzma should be the chosen one on Linux")
