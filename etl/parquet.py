"""Typed batches -> Hive-partitioned Parquet, rejects, and the manifest; all writes atomic.

Layout under the output folder::

    <partition_by>_date=YYYY-MM-DD/<shard id>-<seq>.parquet   rows (zstd)
    _rejects/<shard id>.parquet                               rejected lines, byte for byte
    _manifest/<shard id>.json                                 one record per finished shard

A shard's files are written under temporary ``.*.tmp`` names and renamed only
when the whole shard has been read. Names derive from the shard's identity, so
a rerun first removes that shard's earlier files: it replaces, never duplicates.
"""

from __future__ import annotations

import glob
import os
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from etl.parse import RejectedLine
from etl.storage import Folder, temp_name

ROW_GROUP_ROWS = 128 * 1024     # most rows per Parquet row group
BUFFER_BYTES = 16 << 20         # 16 MiB of Arrow data buffered; then every date is flushed:
                                # bounds memory whatever the shard size
MAX_OPEN_FILES = 64             # open Parquet writers per shard; the least recent closes first
MAX_ROW_GROUPS = 64             # row groups per file: an open writer holds the metadata of
                                # all of its row groups (measured: RSS grew with the input)
DICTIONARY_SAMPLE = 10_000      # rows that decide which columns get a dictionary
NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"
REJECTS_DIR = "_rejects"
REJECT_SCHEMA = pa.schema([
    ("shard", pa.string()), ("line_no", pa.int64()), ("offset", pa.int64()),
    ("reason", pa.string()), ("error", pa.string()), ("line", pa.binary()),
])
# the raw lines get neither a dictionary (each is its own) nor min/max statistics, which
# copied every value several times over: a 296 MB rejected line took 4.4 s and 2.3 GB of
# memory to write, 0.4 s and 0.9 GB without them (measured)
REJECT_OPTIONS = {"use_dictionary": ["shard", "reason", "error"],
                  "write_statistics": ["shard", "line_no", "offset", "reason", "error"]}


_tmp = temp_name


@dataclass
class _DateFile:
    final: str
    writer: pq.ParquetWriter
    rows: int = 0
    groups: int = 0  # row groups written


class ShardWriter:
    """Streams one shard's typed tables into per-date Parquet files; commit() publishes."""

    def __init__(self, out: str, shard_id: str, schema: pa.Schema, partition_by: str | None,
                 partition_column: str | None, part: int | None = None):
        self.out, self.shard_id, self.schema = Folder(out), shard_id, schema
        self.prefix = shard_id if part is None else f"{shard_id}-p{part:04d}"
        self.partition_by, self.partition_column = partition_by, partition_column
        self._pending: list[pa.Table] = []  # whole tables, in arrival order
        self._buffered = 0  # their Arrow bytes
        self._open: dict[str, _DateFile] = {}
        self._dictionary: list[str] | None = None  # decided at the first flush
        self._done: list[tuple[str, int]] = []
        self._seq = 0

    def write(self, table: pa.Table) -> None:
        """Buffer ``table``; when the buffer is full, write its rows out under their dates.

        Tables are split by date only when flushed, all at once: each buffered batch is
        sorted by date with one take (a take per date concatenated the buffer's chunks
        every time: three times slower), and each date's slices of every batch become one
        row group of its file. A batch goes as its sorted copy is made, so the buffer is
        held once, not twice (the 4x memory target), and nothing stays behind after.
        """
        if table.num_rows == 0:
            return
        self._pending.append(table)
        self._buffered += table.nbytes
        if self._buffered > BUFFER_BYTES:
            self._flush()

    def _split(self, table: pa.Table):
        if not self.partition_by:
            yield "", table
            return
        dates = pc.cast(table[self.partition_by], pa.date32())
        span = pc.min_max(dates)
        if dates.null_count == 0 and span["min"] == span["max"]:
            yield span["min"].as_py().isoformat(), table  # one date: usual for time-ordered dumps
            return
        order = pc.sort_indices(dates)  # nulls last
        runs = pc.run_end_encode(dates.take(order).combine_chunks())
        # one take in date order, then a slice per date: three times faster than a take
        # per date from a table of many chunks (each take concatenates them first)
        table = table.take(order)
        start = 0
        for end, d in zip(runs.run_ends.to_pylist(), runs.values.to_pylist()):
            yield (NULL_PARTITION if d is None else d.isoformat()), table.slice(start, end - start)
            start = end

    def _flush(self) -> None:
        if not self._pending:
            return
        pending, self._pending, self._buffered = self._pending, [], 0
        if self._dictionary is None:  # decided on the first rows buffered (a zero-copy view)
            self._dictionary = dictionary_columns(pa.concat_tables(pending))
        by_date: dict[str, list[pa.Table]] = {}
        while pending:  # each batch sorted on its own: it goes as its sorted copy is made,
            for date, part in self._split(pending.pop(0)):  # so the buffer is held once
                by_date.setdefault(date, []).append(part)
        for date, parts in by_date.items():
            self._write_date(date, pa.concat_tables(parts))

    def _write_date(self, date: str, table: pa.Table) -> None:
        f = self._open.pop(date, None) or self._new_file(date)
        self._open[date] = f  # re-insert (most recently used last) first: abort() must find it
        f.writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        f.rows += table.num_rows
        f.groups += -(-table.num_rows // ROW_GROUP_ROWS)
        if f.groups >= MAX_ROW_GROUPS:  # a writer keeps every row group's metadata: roll over
            self._close(date)
        elif len(self._open) > MAX_OPEN_FILES:
            self._close(next(iter(self._open)))

    def _new_file(self, date: str) -> _DateFile:
        name = f"{self.prefix}-{self._seq:06d}.parquet"
        final = self.out.join(f"{self.partition_column}={date}", name) if date \
            else self.out.join(name)
        self.out.makedirs(os.path.dirname(final))
        self._seq += 1
        writer = _new_writer(self.out, _tmp(final), self.schema,
                             use_dictionary=self._dictionary)
        return _DateFile(final, writer)

    def _close(self, date: str) -> None:
        f = self._open.pop(date)
        self._done.append((f.final, f.rows))  # first: if closing fails, abort() removes it
        f.writer.close()

    def close(self) -> None:
        """Flush everything into the temporary files and close them."""
        self._flush()
        for date in list(self._open):
            self._close(date)

    def finished(self) -> list[tuple[str, int]]:
        """(final path, rows) of every file written, still under its temporary name."""
        return list(self._done)

    def commit(self) -> list[dict]:
        """Flush everything, remove this shard's earlier files, rename the new ones in."""
        self.close()
        return publish(self.out, self.shard_id, self._done)

    def abort(self) -> None:
        """Close and delete everything written so far; nothing is published."""
        for f in self._open.values():
            _close_quietly(f.writer)
            self._done.append((f.final, f.rows))
        self._open.clear()
        for final, _ in self._done:
            self.out.remove(_tmp(final))


def dictionary_columns(table: pa.Table) -> list[str]:
    """The columns worth dictionary encoding: at most half their sampled values distinct.

    Parquet writers try a dictionary on every column by default, hashing every value,
    and give up only when it grows too big: on ids, timestamps and comment text that
    is wasted work and a bigger file (measured: a fifth of the writer's time, and 4%
    more bytes, on Reddit comments). The first rows of a shard decide for all its files.
    """
    sample = table.slice(0, DICTIONARY_SAMPLE)
    chosen = []
    for name, column in zip(sample.column_names, sample.columns):
        if pa.types.is_list(column.type):  # the values: Parquet's leaf column of the list
            column, name = pc.list_flatten(column), f"{name}.list.element"
        try:
            distinct = pc.count_distinct(column).as_py()
        except pa.ArrowNotImplementedError:  # a type with no such kernel: no dictionary
            continue
        if distinct <= len(column) // 2:
            chosen.append(name)
    return chosen


def _new_writer(out: Folder, tmp: str, schema: pa.Schema, **options) -> pq.ParquetWriter:
    try:
        return pq.ParquetWriter(tmp, schema, compression="zstd", filesystem=out.arrow_fs,
                                **options)
    except BaseException:  # e.g. the disk is full: leave no empty temporary file behind
        out.remove(tmp)
        raise


def _close_quietly(writer: pq.ParquetWriter) -> None:
    """Close a writer whose file is thrown away: a close that fails (disk full) is moot."""
    try:
        writer.close()
    except OSError:
        pass


def remove_shard_files(out: str, shard_id: str) -> None:
    """Delete a shard's published Parquet files and rejects file (from an earlier run)."""
    folder = Folder(out)
    _remove_shard_files(folder, shard_id)
    folder.remove(folder.join(REJECTS_DIR, f"{shard_id}.parquet"))


def publish(out: str | Folder, shard_id: str, done: list[tuple[str, int]]) -> list[dict]:
    """Remove the shard's earlier files, then rename ``done`` from temporary to final names."""
    folder = out if isinstance(out, Folder) else Folder(out)
    _remove_shard_files(folder, shard_id)
    for final, _ in done:
        folder.replace(_tmp(final), final)
    return [{"path": folder.rel(p), "rows": n} for p, n in done]


SEQ = "[0-9]" * 6
PART = "p" + "[0-9]" * 4


def _remove_shard_files(out: Folder, shard_id: str) -> None:
    _remove(out, f"{glob.escape(shard_id)}-{SEQ}.parquet",
            f"{glob.escape(shard_id)}-{PART}-{SEQ}.parquet")


def _remove(out: Folder, *names: str) -> None:
    root = glob.escape(out.root)
    for name in names:
        for p in out.glob(posixpath.join(root, "*", name)) + out.glob(posixpath.join(root, name)):
            out.remove(p)


def discard_temp(out: str, shard_id: str) -> None:
    """Delete the shard's unpublished temporary files: a failed part's siblings, or what a
    killed run left (the run lock guarantees no other run is writing them)."""
    sid = glob.escape(shard_id)
    _remove(Folder(out), f".{sid}-{SEQ}.parquet.tmp", f".{sid}-{PART}-{SEQ}.parquet.tmp",
            posixpath.join(REJECTS_DIR, f".{sid}.{PART}.parquet.tmp"),
            posixpath.join(REJECTS_DIR, f".{sid}.parquet.tmp"))


def merge_rejects(out: str, shard_id: str, pieces: list[tuple[str, int, int]]) -> str | None:
    """One rejects file from the parts' (temporary file, lines before, bytes before)."""
    folder = Folder(out)
    final = folder.join(REJECTS_DIR, f"{shard_id}.parquet")
    if not pieces:
        folder.remove(final)
        return None
    writer = _new_writer(folder, _tmp(final), REJECT_SCHEMA, **REJECT_OPTIONS)
    try:
        for path, lines, offset in pieces:
            for batch in pq.ParquetFile(path, filesystem=folder.arrow_fs).iter_batches():
                cols = {n: batch.column(n) for n in REJECT_SCHEMA.names}
                cols["line_no"] = pc.add(cols["line_no"], lines)
                cols["offset"] = pc.add(cols["offset"], offset)
                writer.write_table(pa.table(cols, schema=REJECT_SCHEMA))
        writer.close()
    except BaseException:
        _close_quietly(writer)
        folder.remove(_tmp(final))
        raise
    folder.replace(_tmp(final), final)
    for path, _, _ in pieces:
        folder.remove(path)
    return folder.rel(final)


class RejectWriter:
    """Streams rejected lines of one shard into ``_rejects/<shard id>.parquet``."""

    def __init__(self, out: str, shard_id: str, shard_path: str, part: int | None = None):
        self.out = Folder(out)
        name = shard_id if part is None else f"{shard_id}.p{part:04d}"
        self.final = self.out.join(REJECTS_DIR, f"{name}.parquet")
        self.shard_path = shard_path
        self._writer: pq.ParquetWriter | None = None
        self.count = 0

    def write(self, rejects: list[RejectedLine]) -> None:
        if not rejects:
            return
        if self._writer is None:
            self.out.makedirs(os.path.dirname(self.final))
            self._writer = _new_writer(self.out, _tmp(self.final), REJECT_SCHEMA,
                                       **REJECT_OPTIONS)
        cols = {
            "shard": [self.shard_path] * len(rejects),
            "line_no": [r.line_no for r in rejects], "offset": [r.offset for r in rejects],
            "reason": [r.reason for r in rejects], "error": [r.error for r in rejects],
            "line": [r.raw for r in rejects],
        }
        self._writer.write_table(pa.table(cols, schema=REJECT_SCHEMA))
        self.count += len(rejects)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()

    def finished(self) -> str | None:
        """The temporary file written (closed), or None when no line was rejected."""
        return None if self._writer is None else _tmp(self.final)

    def commit(self) -> str | None:
        self.close()
        if self._writer is None:
            self.out.remove(self.final)
            return None
        self.out.replace(_tmp(self.final), self.final)
        return self.out.rel(self.final)

    def abort(self) -> None:
        if self._writer is not None:
            _close_quietly(self._writer)
            self.out.remove(_tmp(self.final))
