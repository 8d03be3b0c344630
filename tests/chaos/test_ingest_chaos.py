"""Chaos for `etl ingest`: corrupt shards, hostile lines and a full disk, through the real CLI.

Documented rules these tests hold the code to (README, "Exit codes" and "Lines"):

- A shard that cannot be read to its end (truncated, corrupt, empty, unreadable, not a
  regular file, changed while read) fails alone: exit 3, an error naming the path, nothing
  published (no Parquet, no rejects file, no ``.tmp``); the other shards complete.
- A bit flip in a compressed shard fails it, or lands in bytes the format ignores (gzip
  header time, padding bits) and the shard decodes to exactly the same rows. A flip in the
  magic bytes makes the file plain text: every line is rejected and kept byte for byte.
- Plain text has no checksum: a flipped bit is data. Only the line(s) it lands in change:
  they are rejected (kept byte for byte) or stored with the changed value.
- Hostile lines are rejected with their reason or kept by the README's rules; the run
  exits 0, never hangs, and memory stays within about 15 x the longest line plus the
  batch budget.
"""

from __future__ import annotations

import base64
import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from etl.shards import CODECS as SHARD_CODECS
from etl.shards import detect_codec
from tests.chaos.conftest import scale
from tests.chaos.ingest_tools import (Changer, count_diff, expected_rows, fill, leftovers,
                                      manifest, published, remount, row_key, run_measured,
                                      shard_id, shard_rejects, shard_rows, tmpfs)
from tests.conftest import DATA, IN_CI, compress
from tests.test_pipeline import CODECS, COMMENTS, assert_accounting, sample_bytes, write_shard

SEED = 20150101
LINES = scale(1500, 6000)          # lines per good / damaged shard
CUTS = scale(1, 4)                 # truncation points per codec
FLIPS = scale(2, 8)                # bit-flipped copies per codec
PLAIN_FLIPS = scale(4, 16)         # bit-flipped copies of a plain shard
CHANGING_LINES = scale(20_000, 60_000)  # a shard big enough to be caught changing
CORRUPT_TIMEOUT = scale(120, 600)  # seconds: the run takes ~10 s; longer is a hang
MAGIC = {"zst": "zstd", "gz": "gzip", "xz": "xz", "bz2": "bzip2"}  # extension -> codec
MAGIC_LEN = {c.name: c.magic_len for c in SHARD_CODECS}
DROP_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]  # root, minus
                                                                         # its file overrides


def _codec(path: Path) -> str:
    return detect_codec(path.read_bytes()[:6]).name


# the bad files of the xz, zstd and gzip projects that are detected as their codec
REFERENCE_BAD = sorted(
    [p for p in (DATA / "xz" / "files").glob("bad-*.xz") if _codec(p) == "xz"]
    + [p for p in (DATA / "zstd" / "klauspost" / "bad").glob("*.zst") if _codec(p) == "zstd"]
    + list((DATA / "zstd" / "golden-decompression-errors").glob("*.zst"))
    + [DATA / "gzip" / "issue6550.gz"])


# ---------------------------------------------------------------- one run, every kind of damage

@dataclass
class CorruptRun:
    out: Path
    code: int
    timed_out: bool
    stderr: str
    report: dict
    good: dict[Path, list[dict]] = field(default_factory=dict)      # shard -> rows expected
    truncated: list[Path] = field(default_factory=list)
    flipped: dict[Path, list[dict]] = field(default_factory=dict)   # shard -> original rows
    plain_flipped: dict[Path, int] = field(default_factory=dict)    # shard -> flipped byte
    plain_rows: list[dict] = field(default_factory=list)
    magic: list[Path] = field(default_factory=list)
    special: dict[Path, str] = field(default_factory=dict)          # shard -> words of error
    changers: dict[Path, Changer] = field(default_factory=dict)
    unreadable: str = ""      # why the permission cases could not run, if they could not

    def entry(self, path: Path) -> dict:
        wanted = os.path.abspath(path)
        return next(s for s in self.report["shards"] if s["path"] == wanted)


def _write_good(src: Path, run: CorruptRun) -> None:
    for i, codec in enumerate(CODECS):
        data = sample_bytes(LINES, seed=100 + i)
        name = f"good-{i}.{'ndjson' if codec == 'none' else codec}"
        run.good[write_shard(src, name, data, codec)] = expected_rows(data, COMMENTS)


def _write_damaged(src: Path, run: CorruptRun, rng: random.Random) -> None:
    for j, (ext, codec) in enumerate(MAGIC.items()):
        data = sample_bytes(LINES, seed=200 + j)
        whole, magic = compress(CODECS[ext], data), MAGIC_LEN[codec]
        rows = expected_rows(data, COMMENTS)
        for k in range(CUTS):
            cut = src / f"cut-{k}.{ext}"
            cut.write_bytes(whole[:rng.randrange(magic + 1, len(whole) - 1)])
            run.truncated.append(cut)
        for k in range(FLIPS):
            flipped = bytearray(whole)
            flipped[rng.randrange(magic, len(whole))] ^= 1 << rng.randrange(8)
            (src / f"flip-{k}.{ext}").write_bytes(flipped)
            run.flipped[src / f"flip-{k}.{ext}"] = rows
        broken = bytearray(whole)
        broken[0] ^= 0x01  # no longer the codec's magic: read as plain text
        (src / f"magic.{ext}").write_bytes(broken)
        run.magic.append(src / f"magic.{ext}")
    plain = sample_bytes(LINES, seed=300, bad_rate=0)
    run.plain_rows = expected_rows(plain, COMMENTS)
    for k in range(PLAIN_FLIPS):
        flipped, pos = bytearray(plain), rng.randrange(len(plain))
        flipped[pos] ^= 1 << rng.randrange(8)
        (src / f"flip-{k}.ndjson").write_bytes(flipped)
        run.plain_flipped[src / f"flip-{k}.ndjson"] = pos


def _write_special(src: Path, run: CorruptRun, permissions_apply: bool) -> None:
    (src / "empty.zst").write_bytes(b"")
    run.special[src / "empty.zst"] = "empty file (0 bytes)"
    os.symlink(src / "nowhere.zst", src / "dangling.zst")
    run.special[src / "dangling.zst"] = "No such file or directory"
    os.symlink("loop.zst", src / "loop.zst")
    run.special[src / "loop.zst"] = "Too many levels of symbolic links"
    os.mkfifo(src / "pipe.ndjson")  # no writer: an open() for reading would wait forever
    run.special[src / "pipe.ndjson"] = "not a regular file"
    if permissions_apply:
        locked = write_shard(src, "locked.zst", sample_bytes(100, seed=5), "zst")
        locked.chmod(0)
        run.special[locked] = "Permission denied"
        sealed = src / "sealed"  # a folder that cannot be listed: its shards cannot be found
        sealed.mkdir()
        write_shard(sealed, "inside.zst", sample_bytes(100, seed=6), "zst")
        sealed.chmod(0)
        run.special[sealed] = "cannot be listed"


def _without_root_overrides() -> tuple[list[str], str]:
    """A command prefix under which file permissions apply, or why there is none."""
    if os.geteuid() != 0:
        return [], ""
    if shutil.which("setpriv") is None:
        return [], "running as root without setpriv (util-linux): permissions do not apply"
    probe = subprocess.run([*DROP_DAC, "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return [], f"setpriv cannot drop root's file overrides: {probe.stderr.strip()}"
    return DROP_DAC, ""


@pytest.fixture(scope="module")
def corrupt_run(tmp_path_factory) -> CorruptRun:
    """One `etl ingest` over good shards and every kind of damaged or odd input."""
    root = tmp_path_factory.mktemp("corrupt")
    src, out = root / "in", root / "out"
    src.mkdir()
    run = CorruptRun(out, 0, False, "", {})
    prefix, run.unreadable = _without_root_overrides()
    rng = random.Random(SEED)
    _write_good(src, run)
    _write_damaged(src, run, rng)
    _write_special(src, run, permissions_apply=not run.unreadable)
    for mode, seed in (("append", 400), ("replace", 401)):
        shard = write_shard(src, f"{mode}.ndjson", sample_bytes(CHANGING_LINES, seed=seed),
                            "none")
        run.changers[shard] = Changer(shard, mode, sample_bytes(50, seed=seed + 9).split(b"\n"))
    for changer in run.changers.values():
        changer.start()
    try:
        measured = run_measured(["ingest", src, *REFERENCE_BAD, "--schema", COMMENTS, "--out",
                                 out, "--report", root / "report.json"], root,
                                timeout=CORRUPT_TIMEOUT, prefix=prefix)
    finally:
        for changer in run.changers.values():
            changer.stop()
        for p in src.rglob("*"):
            if not p.is_symlink():
                p.chmod(0o755 if p.is_dir() else 0o644)
    run.code, run.timed_out, run.stderr = measured.code, measured.timed_out, measured.stderr
    if (root / "report.json").exists():
        run.report = orjson.loads((root / "report.json").read_bytes())
    return run


def _assert_failed_alone(run: CorruptRun, path: Path, *words: str, opened=True) -> None:
    """The shard failed, its error names it (and ``words``; where reading stopped, if it
    could be opened at all), and it published nothing."""
    entry = run.entry(path)
    assert entry["status"] == "failed", (path, entry)
    assert str(path) in entry["error"], entry
    if opened:
        assert "reading stopped after line" in entry["error"], entry
    for w in words:
        assert w in entry["error"], (w, entry["error"])
    sid = shard_id(path)
    assert published(run.out, sid) == [], path
    assert (manifest(run.out, sid) or {}).get("status") != "ok", path


def test_corrupt_run_exits_3_and_good_shards_complete(corrupt_run, chaos):
    run = corrupt_run
    assert not run.timed_out, f"etl ingest hung on a damaged input\n{run.stderr[-3000:]}"
    assert run.code == 3, run.stderr[-3000:]
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert_accounting(run.report)
    assert leftovers(run.out) == []  # nothing half-written, nothing half-renamed
    expected = found = lost = doubled = 0
    for path, rows in run.good.items():
        entry = run.entry(path)
        assert entry["status"] == "ok", entry
        got = shard_rows(run.out, entry)
        miss, extra = count_diff(map(row_key, rows), map(row_key, got))
        expected, found, lost, doubled = (expected + len(rows), found + len(got),
                                          lost + miss, doubled + extra)
    damaged = len(run.report["shards"]) - len(run.good)
    chaos.record("corrupt inputs: good shards beside them", trials=1, faults=damaged,
                 expected=expected, found=found, lost=lost, doubled=doubled)
    assert lost == 0 and doubled == 0


def test_truncated_shards_fail_alone(corrupt_run, chaos):
    for path in corrupt_run.truncated:
        _assert_failed_alone(corrupt_run, path, "truncated")
    n = len(corrupt_run.truncated)
    chaos.record("truncated shards (zst gz xz bz2)", trials=n, faults=n, expected=0, found=0)


def test_bit_flipped_shards_fail_or_decode_exactly(corrupt_run, chaos):
    detected = expected = found = lost = doubled = 0
    for path, rows in corrupt_run.flipped.items():
        entry = corrupt_run.entry(path)
        if entry["status"] == "failed":
            _assert_failed_alone(corrupt_run, path)
            assert "corrupt" in entry["error"] or "truncated" in entry["error"], entry
            detected += 1
            continue
        got = shard_rows(corrupt_run.out, entry)  # an ignored bit: exactly the same rows
        miss, extra = count_diff(map(row_key, rows), map(row_key, got))
        expected, found, lost, doubled = (expected + len(rows), found + len(got),
                                          lost + miss, doubled + extra)
    chaos.record("bit flips in compressed shards", trials=len(corrupt_run.flipped),
                 faults=detected, expected=expected, found=found, lost=lost, doubled=doubled)
    assert lost == 0 and doubled == 0


def test_reference_bad_files_fail_alone(corrupt_run, chaos):
    assert len(REFERENCE_BAD) > 70
    for path in REFERENCE_BAD:
        _assert_failed_alone(corrupt_run, path)
    n = len(REFERENCE_BAD)
    chaos.record("bad xz/zstd/gzip files (tests/data)", trials=n, faults=n, expected=0, found=0)


def test_empty_unreadable_and_special_files_fail_alone(corrupt_run, chaos):
    if corrupt_run.unreadable:
        if IN_CI:
            pytest.fail(corrupt_run.unreadable)
    for path, words in corrupt_run.special.items():
        _assert_failed_alone(corrupt_run, path, words, opened=path.name == "empty.zst")
    n = len(corrupt_run.special)
    chaos.record("empty, unreadable, dangling, FIFO inputs", trials=n, faults=n, expected=0,
                 found=0)
    if corrupt_run.unreadable:
        pytest.skip(f"permission cases not run: {corrupt_run.unreadable}")


def test_shards_changing_while_read_fail_alone(corrupt_run, chaos):
    for path, changer in corrupt_run.changers.items():
        assert changer.changes > 0
        _assert_failed_alone(corrupt_run, path, "changed while being read")
    n = len(corrupt_run.changers)
    chaos.record("shard appended / replaced while read", trials=n, faults=n, expected=0,
                 found=0)


def test_plain_text_bit_flips_are_data(corrupt_run, chaos):
    """No checksum: only the line(s) the flip lands in change, and nothing is lost unseen."""
    original = {row_key(r) for r in corrupt_run.plain_rows}
    n = len(corrupt_run.plain_rows)
    found = lost = 0
    for path, pos in corrupt_run.plain_flipped.items():
        entry = corrupt_run.entry(path)
        assert entry["status"] == "ok", entry
        assert n - 1 <= entry["lines"] <= n + 1, entry  # a flip can make or unmake a newline
        got = {row_key(r) for r in shard_rows(corrupt_run.out, entry)}
        missing, changed = len(original - got), len(got - original)
        rejected = len(shard_rejects(corrupt_run.out, shard_id(path)))
        assert missing <= 2 and changed <= 1 and rejected <= 2, (path, pos, missing, changed)
        assert missing <= rejected + changed, (path, pos)  # every damaged line is accounted for
        found += len(got & original)
        lost += max(0, missing - rejected - changed)
    trials = len(corrupt_run.plain_flipped)
    chaos.record("bit flips in plain shards (rule: data)", trials=trials, faults=trials,
                 expected=n * trials, found=found, lost=lost)
    assert lost == 0


def test_broken_magic_is_read_as_plain_text(corrupt_run, chaos):
    for path in corrupt_run.magic:
        entry = corrupt_run.entry(path)
        assert entry["status"] == "ok" and entry["rows_written"] == 0, entry
        rejects = shard_rejects(corrupt_run.out, shard_id(path))
        assert len(rejects) == entry["rows_rejected"] > 0
        assert {r["reason"] for r in rejects} <= {"invalid_utf8", "invalid_json", "not_object"}
        assert entry["rows_rejected"] + entry["blank_lines"] == entry["lines"]
    n = len(corrupt_run.magic)
    chaos.record("bit flip in magic bytes (rule: plain)", trials=n, faults=n, expected=0,
                 found=0)


# ---------------------------------------------------------------- directories as inputs

def test_directories_as_inputs(tmp_path, chaos):
    """A named folder is walked; a folder a glob matches is skipped; an empty one matches
    nothing (exit 2); a path that is a folder when read fails alone."""
    from etl.config import IngestConfig
    from etl.job import process_shard
    from etl.schema import load_schema
    from etl.shards import Shard

    top = tmp_path / "in"
    (top / "2015" / "01").mkdir(parents=True)
    data = {seed: sample_bytes(300, seed=seed) for seed in (1, 2, 4)}
    a = write_shard(top / "2015" / "01", "a.zst", data[1], "zst")
    b = write_shard(top, "b.gz", data[2], "gz")
    for hidden in (".cache", "_tmp"):
        (top / hidden).mkdir()
        write_shard(top / hidden, "never.zst", sample_bytes(10, seed=3), "zst")
    globbed = tmp_path / "g"
    (globbed / "folder.zst").mkdir(parents=True)  # named like a shard, but a folder
    c = write_shard(globbed, "c.xz", data[4], "xz")
    (tmp_path / "empty").mkdir()

    out = tmp_path / "out"
    done = run_measured(["ingest", top, f"{globbed}/*", "--schema", COMMENTS, "--out", out,
                         "--report", tmp_path / "r.json"], tmp_path)
    assert done.code == 0, done.stderr
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert sorted(s["path"] for s in report["shards"]) == sorted(map(str, (a, b, c)))

    empty = run_measured(["ingest", tmp_path / "empty", "--schema", COMMENTS, "--out", out],
                         tmp_path)
    assert empty.code == 2 and "no shards match" in empty.stderr, empty.stderr

    cfg = IngestConfig(load_schema(COMMENTS), str(out), "synchronous")
    rec = process_shard(Shard(str(globbed / "folder.zst")), cfg)  # a file turned folder
    assert rec["status"] == "failed" and "is a directory" in rec["error"], rec
    assert published(out, Shard(str(globbed / "folder.zst")).id) == []
    expected = [row_key(r) for d in data.values() for r in expected_rows(d, COMMENTS)]
    found = [row_key(r) for s in report["shards"] for r in shard_rows(out, s)]
    lost, doubled = count_diff(expected, found)
    chaos.record("folders as inputs (walked / skipped)", trials=3, faults=2,
                 expected=len(expected), found=len(found), lost=lost, doubled=doubled)
    assert lost == 0 and doubled == 0


# ---------------------------------------------------------------- hostile lines

HOSTILE_SCHEMA = """
[dataset]
name = "hostile"
key = "id"
partition_by = "created_utc"

[fields.id]
type = "string"
required = true

[fields.created_utc]
type = "timestamp"
required = true

[fields.body]
type = "string"

[fields.score]
type = "int64"

[fields.ratio]
type = "float64"

[fields.extra]
type = "json"

[fields.tags]
type = "list<string>"
"""
T0 = 1420070400
LONG = 50 << 20                       # a 50 MiB line
DEPTH = scale(100_000, 1_000_000)     # nesting levels
BOM = b"\xef\xbb\xbf"
INT64_MAX = 2**63 - 1
BIG = 123456789012345678901234567890  # 30 digits: beyond 64 bits, within a double's range
BAD_JSON, BAD_UTF8 = {"invalid_json"}, {"invalid_utf8"}


def line(id: str, tail: bytes = b"", **fields) -> bytes:
    """An object line with ``id`` and ``created_utc``; ``tail`` is raw JSON text appended."""
    body = orjson.dumps({"id": id, "created_utc": T0, **fields})
    return body[:-1] + (b"," + tail if tail else b"") + b"}"


def row(id: str, tail: bytes = b"", **values):
    """A line (``tail`` appended) expected to be stored, with these column values."""
    return line(id, tail), ("row", id, values)


def stored(id: str, **fields):
    """A line with these fields, expected to be stored with exactly these values."""
    return line(id, **fields), ("row", id, fields)


def reject(text: bytes, reasons: set[str] | str):
    return text, ("reject", {reasons} if isinstance(reasons, str) else reasons)


def blank(text: bytes):
    return text, ("blank",)


def nest(depth: int, close: bool = True) -> bytes:
    return b"[" * depth + (b"]" * depth if close else b"")


HOSTILE: dict[str, list] = {
    "utf8": [
        stored("u-ok", body="café 🎉 日本語"),
        reject(line("u1", b'"body":"\xff"'), BAD_UTF8),              # in a field read
        reject(line("u2", b'"junk":"\xc3\x28"'), BAD_UTF8),          # in a field never read
        reject(line("u3", b'"\xfe\xff":1'), BAD_UTF8),               # in a key
        reject(line("u4", b'"body":"\xc0\xaf"'), BAD_UTF8),          # overlong
        reject(line("u5", b'"body":"\xed\xa0\x80"'), BAD_UTF8),      # an encoded surrogate
        reject(line("u6", b'"body":"\x80"'), BAD_UTF8),              # lone continuation byte
        reject(line("u7", b'"body":"caf\xe9"'), BAD_UTF8),           # Latin-1
        reject(line("u8", b'"body":"\xf4\x90\x80\x80"'), BAD_UTF8),  # beyond U+10FFFF
        reject(line("u9") + b"\xe2\x82", BAD_UTF8),                  # cut sequence at the end
        reject(line("u10", b'"body":"\\ud800"'), BAD_JSON),          # lone surrogate escape
        row("u11", b'"body":"\\ud83c\\udf89"', body="🎉"),            # escaped pair
    ],
    "nul": [
        reject(line("n1", b'"body":"a\x00b"'), BAD_JSON),            # raw NUL in a string
        reject(line("n2", b'\x00"body":"x"'), BAD_JSON),             # raw NUL between tokens
        reject(b"\x00\x00\x00", BAD_JSON),
        reject(line("n3") + b"\x00", BAD_JSON),
        row("n4", b'"body":"a\\u0000b"', body="a\x00b"),             # escaped: kept
        stored("n5\x00x", body="\x00"),
    ],
    "deep": [
        reject(nest(DEPTH), BAD_JSON),                                # deeper than 1024 levels
        reject(nest(DEPTH, close=False), BAD_JSON),
        reject(b'{"a":' * DEPTH + b"1" + b"}" * DEPTH, BAD_JSON),
        reject(line("d1", b'"skipped":' + nest(DEPTH)), BAD_JSON),    # even where never read
        reject(line("d2", b'"extra":' + nest(DEPTH)), BAD_JSON),
        row("d3", b'"skipped":' + nest(1000)),                       # within orjson's 1024
        reject(line("d4", b'"extra":' + nest(300)), "type:extra"),   # JSON text: 254 at most
        row("d5", b'"extra":' + nest(200), extra=nest(200).decode()),
    ],
    "bigint": [
        row("b1", b'"score":%d' % INT64_MAX, score=INT64_MAX),
        row("b2", b'"score":%d' % -2**63, score=-2**63),
        reject(line("b3", b'"score":%d' % 2**63), "type:score"),
        reject(line("b4", b'"score":%d' % (-2**63 - 1)), "type:score"),
        reject(line("b5", b'"score":%d' % 2**64), "type:score"),
        reject(line("b6", b'"score":%d' % BIG), "type:score"),
        reject(line("b7", b'"created_utc":%d' % BIG), "type:created_utc"),  # last key wins
        row("b8", b'"skipped":%d' % BIG),
        row("b9", b'"ratio":%d' % BIG, ratio=float(BIG)),
        reject(line("b10", b'"ratio":' + b"9" * 400), "type:ratio"),    # beyond a double
        # documented (etl/rows.py): integers beyond 64 bits are read as doubles, as orjson
        # reads them, whatever the field's type
        row("b11", b'"extra":%d' % BIG, extra=orjson.dumps(float(BIG)).decode()),
        row("b12", b'"tags":[%d,1]' % BIG, tags=[str(float(BIG)), "1"]),
        (b'{"id":%d,"created_utc":%d}' % (BIG, T0), ("row", str(float(BIG)), {})),
        reject(line("b13", b'"body":' + b"9" * 400), "type:body"),
        row("b14", b'"skipped":' + b"9" * 5000),
        reject(line("b15", b'"score":' + b"9" * 5000), BAD_JSON),
        row("b16", b'"skipped":1e999'),
        reject(line("b17", b'"ratio":1e999'), BAD_JSON),
    ],
    "dupkeys": [
        row("k1", b'"score":1,"score":2', score=2),                    # the last one wins
        (b'{"id":"k2a","created_utc":1,"id":"k2b"}', ("row", "k2b", {})),
        row("k3", b'"body":"x","body":null', body=None),
        row("k4", b'"extra":{"a":1,"a":2}', extra='{"a":2}'),
    ],
    "bom": [
        (BOM + line("m1"), ("row", "m1", {})),                         # at the file's start
        row("m2"),
        (BOM + line("m3"), ("row", "m3", {})),                         # mid-file
        stored("m4", body="\ufeffhi"),                                    # inside a string: data
        reject(b'{"id":"m5",' + BOM + b'"created_utc":1}', BAD_JSON),  # between tokens
        blank(BOM),
        reject(BOM + BOM + line("m6"), BAD_JSON),                      # one BOM is dropped
        (BOM + line("m7") + b"\r", ("row", "m7", {})),                 # with CRLF
    ],
}
# the same duplicate keys on the orjson path: a batch with invalid UTF-8 is not taken by
# the msgspec fast path
HOSTILE["dupkeys-slow"] = HOSTILE["dupkeys"] + [reject(b'{"id":"\xff"}', BAD_UTF8)]
HOSTILE_CODEC = {"bom": "zst", "deep": "gz", "nul": "xz"}  # the others stay plain


def _suite_lines() -> list:
    """Every JSONTestSuite document as lines: y_ parse, n_ must not, i_ either way."""
    out = []
    for doc in sorted((DATA / "jsontestsuite" / "test_parsing").glob("*.json")):
        pieces = doc.read_bytes().split(b"\n")  # raw newlines split a document: any outcome
        for piece in pieces:
            body = piece.removeprefix(BOM)
            if len(pieces) > 1 or doc.name.startswith("i_"):
                expect = ("any",)
            elif not body.strip():   # n_single_space, n_structure_no_data, ..._BOM_no_data
                expect = ("blank",)
            elif doc.name.startswith("y_"):   # valid JSON, but not a row of this schema
                expect = ("reject", {"not_object", "missing:id", "missing:created_utc"})
            else:
                expect = ("reject", BAD_JSON | BAD_UTF8)
            out.append((piece, expect))
    return out


def _utf16_lines() -> list:
    text = ("\ufeff" + line("w1").decode() + "\n" + line("w2").decode() + "\n").encode("utf-16-le")
    return [(piece, ("reject", BAD_UTF8 | BAD_JSON)) for piece in text.split(b"\n")]


def _long_lines() -> dict[str, list]:
    big = "x" * LONG
    return {
        "long-valid": [row("L1"), (line("L2")[:-1] + b',"body":"' + big.encode()
                                  + b'"}', ("row", "L2", {"body": big})), row("L3")],
        "long-invalid": [row("L4"), reject(line("L5")[:-1] + b',"body":"' + big.encode(),
                                           BAD_JSON), blank(b" " * LONG), row("L6")],
    }


def _write_hostile(folder: Path) -> dict[Path, list]:
    cases = {**HOSTILE, **_long_lines(), "jsontestsuite": _suite_lines(),
             "utf16": _utf16_lines()}
    codecs = {**HOSTILE_CODEC, "long-valid": "zst"}
    folder.mkdir()
    shards = {}
    for name, lines in cases.items():
        for text, _ in lines:
            assert b"\n" not in text, name
        data = b"\n".join(text for text, _ in lines) + b"\n"
        codec = codecs.get(name, "none")
        suffix = "ndjson" if codec == "none" else codec
        shards[write_shard(folder, f"{name}.{suffix}", data, codec)] = lines
    return shards


def _check_hostile(out: Path, entry: dict, lines: list) -> tuple[int, int]:
    """Every line had its documented outcome; returns (rows expected, rows found)."""
    rows = {r["id"]: r for r in shard_rows(out, entry)}
    rejects = {r["line_no"]: r for r in shard_rejects(out, shard_id(entry["path"]))}
    wanted = [(no, exp) for no, (_, exp) in enumerate(lines, 1) if exp[0] == "row"]
    assert entry["lines"] == len(lines), entry["path"]
    for no, (text, expect) in enumerate(lines, 1):
        where = f"{Path(entry['path']).name} line {no}: {text[:60]!r}"
        if expect[0] == "row":
            assert no not in rejects, (where, rejects.get(no, {}).get("error"))
            got = rows[expect[1]]
            for col, value in expect[2].items():
                assert got[col] == value, (where, col, str(got[col])[:80])
        elif expect[0] == "reject":
            assert no in rejects, where
            assert rejects[no]["reason"] in expect[1], (where, rejects[no]["error"])
            assert rejects[no]["line"] == text.removesuffix(b"\r")  # kept byte for byte
        elif expect[0] == "blank":
            assert no not in rejects, where
    blanks = sum(exp[0] == "blank" for _, exp in lines)
    anything = sum(exp[0] == "any" for _, exp in lines)
    assert blanks <= entry["blank_lines"] <= blanks + anything
    assert entry["rows_written"] == len(wanted) == len(rows), entry["path"]
    return len(wanted), len(rows)


def test_hostile_lines_are_rejected_or_kept_by_rule(tmp_path, chaos):
    schema = tmp_path / "hostile.toml"
    schema.write_text(HOSTILE_SCHEMA)
    shards = _write_hostile(tmp_path / "in")
    out = tmp_path / "out"
    done = run_measured(["ingest", tmp_path / "in", "--schema", schema, "--out", out,
                         "--report", tmp_path / "r.json"], tmp_path)
    assert not done.timed_out, f"etl ingest hung on hostile lines\n{done.stderr[-3000:]}"
    assert done.code == 0, done.stderr[-3000:]
    report = orjson.loads((tmp_path / "r.json").read_bytes())
    assert_accounting(report)
    by_path = {s["path"]: s for s in report["shards"]}
    expected = found = 0
    for path, lines in shards.items():
        e, f = _check_hostile(out, by_path[str(path)], lines)
        expected, found = expected + e, found + f
    bound = 400 + 16 * LONG / 2**20  # MB: the batch budget plus ~15 x the longest line
    assert done.peak_mb < bound, f"peak RSS {done.peak_mb:.0f} MB > {bound:.0f} MB"
    faults = sum(len(lines) for lines in shards.values())
    chaos.record("hostile lines (JSONTestSuite, UTF-8, ...)", trials=len(shards),
                 faults=faults, expected=expected, found=found, lost=expected - found)
    assert found == expected


# ---------------------------------------------------------------- disk full during ingest

FULL_ROWS = scale(1500, 6000)     # rows of ~2 KB of incompressible text
FULL_TRIALS = scale(3, 8)


def _incompressible(path: Path, rows: int) -> Path:
    rng = random.Random(7)
    with open(path, "wb") as fh:
        for i in range(rows):
            body = base64.b64encode(rng.randbytes(1500)).decode()
            created = "not-a-date" if i % 10 == 9 else T0 + (i % 5) * 86_400  # some rejects
            fh.write(orjson.dumps({"id": f"r{i}", "created_utc": created, "subreddit": "x",
                                   "body": body}) + b"\n")
    return path


def _tree_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


def _published_rows(out: Path) -> list:
    import pyarrow.parquet as pq

    return [row_key(r) for p in sorted(out.glob("*=*/*.parquet"))
            for r in pq.read_table(p).to_pylist()]


def _assert_failed_for_space(out: Path, sid: str, done) -> None:
    assert not done.timed_out and done.code == 3, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "No space left on device" in done.stderr, done.stderr[-3000:]
    assert leftovers(out) == [], leftovers(out)      # no half-written, half-renamed files
    assert published(out, sid) == []                  # all or nothing
    assert (manifest(out, sid) or {}).get("status") != "ok"


def test_disk_full_during_ingest_fails_cleanly_and_recovers(tmp_path, chaos):
    shard = _incompressible(tmp_path / "RC_full.ndjson", FULL_ROWS)
    sid = shard_id(shard)
    clean_out = tmp_path / "clean"
    clean = run_measured(["ingest", shard, "--schema", COMMENTS, "--out", clean_out], tmp_path)
    assert clean.code == 0, clean.stderr
    clean_rows, needed = _published_rows(clean_out), _tree_bytes(clean_out)
    small, big = f"{needed // 2 // 4096 * 4096}", f"{(needed * 3 // 4096 + 256) * 4096}"

    rng = random.Random(SEED)
    faults = lost = doubled = 0
    ingest = ["ingest", shard, "--schema", COMMENTS, "--report", tmp_path / "r.json"]
    with tmpfs(tmp_path / "disk", small) as disk:
        out = disk / "out"
        for trial in range(FULL_TRIALS):
            if trial == 0:   # the output does not fit at all
                done = run_measured([*ingest, "--out", out], tmp_path)
            else:            # full from the start, then at seeded points of the output
                leave = 0 if trial == 1 else int(rng.uniform(0.05, 0.95) * needed)
                filler = fill(disk, leave)
                done = run_measured([*ingest, "--out", out, "--force"], tmp_path)
            _assert_failed_for_space(out, sid, done)
            faults += 1
            if trial == 0:
                remount(disk, big)
            else:
                filler.unlink()
            again = run_measured([*ingest, "--out", out], tmp_path)  # space is back: rerun
            assert again.code == 0, again.stderr[-3000:]
            assert leftovers(out) == []
            miss, extra = count_diff(clean_rows, _published_rows(out))
            lost, doubled = lost + miss, doubled + extra
    chaos.record("disk full during ingest (tmpfs)", trials=FULL_TRIALS, faults=faults,
                 expected=len(clean_rows) * FULL_TRIALS,
                 found=len(clean_rows) * FULL_TRIALS - lost + doubled, lost=lost,
                 doubled=doubled)
    assert lost == 0 and doubled == 0

