"""One shard end to end: skip check, stream batches, parse, write, commit, manifest.

``process_shard`` is what each Dask task runs; it returns a small picklable
record for the report and never raises for a bad shard: a shard that cannot be
read to its end is reported ``failed`` and publishes nothing (its rows read
before the damage are dropped, so a shard is all or nothing; rerun it once it
is repaired).

pyarrow (the Parquet writers, the parser) is imported only by the functions that need
it: the main process of a run on local worker processes only keeps the books here, and
gets to its first hand-out about 0.1 s sooner without it (the workers' fork server has it
preloaded).
"""

from __future__ import annotations

import errno
import json
import os
import time
import traceback
from collections import Counter
from contextlib import closing
from typing import TYPE_CHECKING

from etl import manifest
from etl.manifest import COUNTS, PROGRESS_DIR
from etl.config import IngestConfig
from etl.errors import EtlError, ShardError
from etl.shards import (Shard, fingerprint, iter_chunks, iter_line_batches, open_shard,
                        read_ahead, stat_shard)
from etl.split import Part, part_chunks

if TYPE_CHECKING:
    from etl.parse import BatchResult

PROGRESS_EVERY = 0.5  # seconds between progress file updates of one shard


def empty_record(shard: Shard, status: str, error: str | None = None) -> dict:
    return {"path": shard.path, "shard_id": shard.id, "status": status, "error": error,
            "size": shard.size, "mtime": shard.mtime, **{k: 0 for k in COUNTS},
            "rejects_by_reason": {}, "bytes_in": 0, "bytes_decompressed": 0, "seconds": 0.0}


def process_shard(shard: Shard, cfg: IngestConfig) -> dict:
    """Ingest one shard into ``cfg.out``; return its report record (status ok|skipped|failed)."""
    from etl import parquet

    start = time.monotonic()
    done, fp = _begin(shard, cfg)
    if done:
        return done
    rec = _run(shard, cfg, start)
    rec["fingerprint"] = fp
    if rec["status"] != "ok":
        parquet.remove_shard_files(cfg.out, shard.id)
    try:
        manifest.write_manifest(cfg.out, shard.id, rec)  # failed ones too, for `etl status`
    except OSError as exc:  # e.g. the disk is full: unrecorded, the shard is not done
        parquet.remove_shard_files(cfg.out, shard.id)
        if rec["status"] == "ok":
            rec = _failed(shard, rec, exc, start)
    return rec


def skipped_record(shard: Shard, prev: dict) -> dict:
    rec = empty_record(shard, "skipped")
    rec["previous"] = {k: prev[k] for k in COUNTS}
    return rec


def quick_skip(shard: Shard, out: str) -> dict | None:
    """The skipped record when the manifest has this shard ok with the same size and mtime.

    A cheap stat-only check for frequent (cron) runs over many old shards; anything
    else goes to ``process_shard``, which compares content fingerprints.
    """
    prev = manifest.read_manifest(out, shard.id)
    if (prev and prev.get("status") == "ok" and shard.mtime is not None
            and prev.get("size") == shard.size and prev.get("mtime") == shard.mtime):
        return skipped_record(shard, prev)
    return None


def shard_is_done(out: str, shard: Shard) -> bool:
    """True when the manifest says ``shard`` finished and it has not changed since."""
    return _unchanged(manifest.read_manifest(out, shard.id), shard, fingerprint(shard))


def _unchanged(prev: dict | None, shard: Shard, fp: str | None) -> bool:
    return bool(prev and prev.get("status") == "ok" and fp is not None
                and prev.get("size") == shard.size and prev.get("fingerprint") == fp)


def shares_process(cfg: IngestConfig) -> bool:
    """Whether other tasks may run in this task's process, in threads: the threads
    scheduler, or a Dask worker of more than one thread."""
    if cfg.scheduler in ("synchronous", "processes"):
        return False
    if cfg.scheduler == "threads":
        return True
    try:
        from distributed import get_worker
        return get_worker().state.nthreads > 1
    except (ImportError, ValueError, AttributeError):  # not in a worker: assume so
        return True


def _run(shard: Shard, cfg: IngestConfig, start: float) -> dict:
    counter = [0]
    try:
        fh = open_shard(shard)
    except Exception as exc:
        return _failed(shard, empty_record(shard, "ok"), exc, start)
    with fh:
        chunks = iter_chunks(fh, shard.path, counter, fill=True,
                             shared=shard.is_stdin or shares_process(cfg))
        rec, writer, rejects = _stream(shard, shard.id, None, chunks, counter, cfg, start)
        if rec["status"] != "ok":
            return rec
    try:
        _check_whole(shard, counter[0])
        rec["files"] = writer.commit()
        rec["rejects_file"] = rejects.commit()
    except Exception as exc:  # any failure fails this shard only, and publishes nothing
        writer.abort()
        rejects.abort()
        return _failed(shard, rec, exc, start)
    return rec


def _stream(shard: Shard, ident: str, part: int | None, chunks, counter: list[int],
            cfg: IngestConfig, start: float):
    """Parse ``chunks`` into unpublished Parquet and rejects; (record, writer, rejects)."""
    from etl import parquet
    from etl.parse import Parser

    parser = Parser(cfg.schema)
    writer = parquet.ShardWriter(cfg.out, shard.id, parser.arrow_schema, cfg.schema.partition_by,
                                 cfg.schema.partition_column, part)
    rejects = parquet.RejectWriter(cfg.out, shard.id, shard.path, part)
    rec = empty_record(shard, "ok")
    reasons: Counter = Counter()
    progress = _Progress(cfg.out, ident, cfg.progress)
    try:
        with closing(_batches(chunks, cfg)) as batches:
            for batch in batches:  # on an error, closing ends a read_ahead thread first
                res = parser.parse_batch(batch)
                writer.write(res.table)
                rejects.write(res.rejects)
                _add(rec, res, batch)
                reasons.update(res.rejects_by_reason)
                progress.update(counter[0], rec["lines"])
        writer.close()
        rejects.close()
    except Exception as exc:  # any failure fails this shard only, and publishes nothing
        writer.abort()
        rejects.abort()
        return _failed(shard, rec, exc, start), writer, rejects
    finally:
        progress.close(counter[0], rec["lines"])
    rec.update(bytes_in=counter[0], rejects_by_reason=dict(reasons),
               seconds=round(time.monotonic() - start, 3))
    return rec, writer, rejects


def _batches(chunks, cfg: IngestConfig):
    """The line batches of a task: read ahead of the parsing in a second thread when a
    core would otherwise wait: from the start when the run says so (``cfg.read_ahead``:
    fewer tasks than workers), or in a local worker once its run has fewer tasks left
    than workers (``workers.a_core_waits``: the last task of an odd count of shards)."""
    if cfg.read_ahead:
        return read_ahead(chunks, cfg.batch_bytes, cfg.max_line_bytes)
    if cfg.scheduler == "processes":
        from etl.workers import a_core_waits

        return read_ahead(chunks, cfg.batch_bytes, cfg.max_line_bytes, when=a_core_waits)
    return iter_line_batches(chunks, cfg.batch_bytes, cfg.max_line_bytes)


# ---------------------------------------------------------------- one shard in parts

def prepare_parts(shard: Shard, cfg: IngestConfig) -> dict | None:
    """Before the parts run: the skipped (or failed) record if nothing is to be done."""
    return _begin(shard, cfg)[0]


def _begin(shard: Shard, cfg: IngestConfig) -> tuple[dict | None, str | None]:
    """(record when the shard is done or cannot be read, else None; its fingerprint).

    A shard to (re)do loses its manifest record first, so a crash means "redo", and
    the temporary files a killed run left for it.
    """
    from etl import parquet

    try:
        fp = fingerprint(shard)
    except EtlError as exc:
        return empty_record(shard, "failed", str(exc)), None
    prev = manifest.read_manifest(cfg.out, shard.id)
    if not cfg.force and _unchanged(prev, shard, fp):
        return skipped_record(shard, prev), fp
    manifest.forget_manifest(cfg.out, shard.id)
    parquet.discard_temp(cfg.out, shard.id)
    return None, fp


def process_part(part: Part, cfg: IngestConfig) -> dict:
    """Ingest one part of a split shard into unpublished files; its record for finish_parts."""
    start = time.monotonic()
    counter, owned = [0], [0]
    try:
        chunks = part_chunks(part, counter, owned)
        rec, writer, rejects = _stream(part.shard, part.id, part.index, chunks, counter, cfg,
                                       start)
    except Exception as exc:  # setting up the parser or writers failed
        rec, writer, rejects = _failed(part.shard, empty_record(part.shard, "ok"), exc, start), \
            None, None
    rec.update(part=part.index, parts=part.count, owned_bytes=owned[0])
    if rec["status"] != "ok":
        rec["error"] = f"{rec['error']} (part {part.index + 1} of {part.count}, file bytes " \
                       f"{part.span[0]}-{part.span[1]})"
    else:
        rec["temp_files"] = writer.finished()
        rec["temp_rejects"] = rejects.finished()
    return rec


def finish_parts(shard: Shard, recs: list[dict], cfg: IngestConfig, start: float) -> dict:
    """All parts ok: publish their files, rejects with global line numbers, the manifest."""
    from etl import parquet

    recs = sorted(recs, key=lambda r: r["part"])
    failed = [r for r in recs if r["status"] != "ok"]
    rec = empty_record(shard, "ok")
    for r in recs:
        for k in COUNTS + ("bytes_in", "bytes_decompressed"):
            rec[k] += r[k]
        rec["rejects_by_reason"] = dict(Counter(rec["rejects_by_reason"])
                                        + Counter(r["rejects_by_reason"]))
    try:
        if failed:
            raise PartFailed(failed[0]["error"])
        _check_whole(shard, shard.size)
        fp = fingerprint(shard)
        done = [f for r in recs for f in r["temp_files"]]
        rec["files"] = parquet.publish(cfg.out, shard.id, done)
        line_base, byte_base, pieces = 0, 0, []
        for r in recs:
            if r["temp_rejects"]:
                pieces.append((r["temp_rejects"], line_base, byte_base))
            line_base += r["lines"]
            byte_base += r["owned_bytes"]
        rec["rejects_file"] = parquet.merge_rejects(cfg.out, shard.id, pieces)
        rec["fingerprint"], rec["bytes_in"] = fp, shard.size  # every byte was some part's
        rec["seconds"] = round(time.monotonic() - start, 3)
        manifest.write_manifest(cfg.out, shard.id, rec)
    except Exception as exc:
        parquet.discard_temp(cfg.out, shard.id)
        parquet.remove_shard_files(cfg.out, shard.id)
        read = sum(r.get("lines", 0) for r in recs)
        rec = _failed(shard, rec, exc, start)
        if isinstance(exc, PartFailed):
            rec["error"] = f"{exc}; nothing of the shard is published"
        rec["lines_read"] = read
        try:
            manifest.write_manifest(cfg.out, shard.id, rec)
        except OSError:
            pass
    return rec


class PartFailed(Exception):
    """A part of a split shard failed: the shard fails with the part's message."""


def _check_whole(shard: Shard, bytes_read: int) -> None:
    """Fail a shard that was empty, or that changed while it was being read."""
    if shard.is_stdin:
        return
    if bytes_read == 0:
        raise ShardError("empty file (0 bytes): nothing to read; an interrupted download or "
                         "copy? Remove it or replace it with the full file", shard.path)
    now = stat_shard(shard)
    if (now.size, now.mtime) != (shard.size, shard.mtime) or bytes_read != shard.size:
        raise ShardError(f"changed while being read (size {shard.size} -> {now.size}, "
                         f"{bytes_read} bytes read); shards must not change once written: "
                         "rerun when it is complete", shard.path)


def _add(rec: dict, res: BatchResult, batch) -> None:
    rec["lines"] += res.lines
    rec["rows_written"] += res.rows_written
    rec["rows_filtered"] += res.rows_filtered
    rec["rows_rejected"] += len(res.rejects)
    rec["blank_lines"] += res.blank_lines
    rec["bytes_decompressed"] += (len(batch.raw) + 1 if batch.raw is not None
                                  else sum(map(len, batch.lines)) + len(batch.lines))


def lost_record(item: Shard | Part, cfg: IngestConfig, why: str) -> dict:
    """The failed record of a shard (or part) whose worker process died mid-run.

    Nothing of it was published: a whole shard's temporary files are removed and its
    failure recorded (for ``etl status``); a part's are left to ``finish_parts``. A
    rerun redoes it.
    """
    from etl import parquet

    shard = item.shard if isinstance(item, Part) else item
    rec = empty_record(shard, "failed", f"{shard.path}: {why}; nothing of it is published: "
                                        "rerun to go on")
    if isinstance(item, Part):
        rec.update(part=item.index, parts=item.count, owned_bytes=0)
        return rec
    try:
        parquet.discard_temp(cfg.out, shard.id)
        manifest.write_manifest(cfg.out, shard.id, rec)
    except OSError:  # the record is for `etl status` only: the shard is not done either way
        pass
    return rec


def _failed(shard: Shard, rec: dict, exc: Exception, start: float) -> dict:
    read = rec["lines"]
    if isinstance(exc, ShardError):
        msg = f"{exc}; reading stopped after line {read}"
    elif isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        msg = (f"{shard.path}: no space left on device writing the output ({exc}); nothing of "
               f"this shard is published: free space, then rerun; reading stopped after line "
               f"{read}")
    else:  # not a known shard problem: keep the traceback's last frame for the bug report
        where = traceback.extract_tb(exc.__traceback__)[-1]
        msg = (f"{shard.path}: {type(exc).__name__}: {exc} (at {os.path.basename(where.filename)}"
               f":{where.lineno}); reading stopped after line {read}")
    out = empty_record(shard, "failed", msg)
    out.update(lines_read=read, seconds=round(time.monotonic() - start, 3))
    return out


class _Progress:
    """Writes ``_progress/<shard id>.json`` now and then, for the main process to draw."""

    def __init__(self, out: str, shard_id: str, enabled: bool):
        local = "://" not in out  # progress files only where the main process can poll them
        self.path = os.path.join(out, PROGRESS_DIR, f"{shard_id}.json") if enabled and local \
            else None
        self.last = 0.0

    def update(self, bytes_in: int, lines: int, force: bool = False) -> None:
        now = time.monotonic()
        if self.path is None or (now - self.last < PROGRESS_EVERY and not force):
            return
        self.last = now
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            json.dump({"bytes_in": bytes_in, "lines": lines}, fh)
        os.replace(tmp, self.path)

    def close(self, bytes_in: int, lines: int) -> None:
        """Leave the final count; the run removes the folder when it ends."""
        self.update(bytes_in, lines, force=True)
