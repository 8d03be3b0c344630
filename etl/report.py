"""The run report: totals from shard records, the summary table, and the progress bar."""

from __future__ import annotations

import glob
import json
import os
import shutil
import sys
import threading
from collections import Counter

from etl.manifest import COUNTS, PROGRESS_DIR

MB = 1_000_000


def build_report(records: list[dict], seconds: float) -> dict:
    """Top-level totals over the shards processed in this run (skipped ones add nothing)."""
    reasons: Counter = Counter()
    for r in records:
        reasons.update(r.get("rejects_by_reason", {}))
    report = {k: sum(r[k] for r in records) for k in COUNTS}
    report.update(
        rejects_by_reason=dict(sorted(reasons.items())),
        bytes_in=sum(r["bytes_in"] for r in records),
        bytes_decompressed=sum(r["bytes_decompressed"] for r in records),
        seconds=round(seconds, 3),
        shards=[{k: r.get(k) for k in ("path", "status", "error", *COUNTS,
                                         "rejects_by_reason", "files", "rejects_file",
                                         "lines_read", "previous") if k in r}
                for r in records],
    )
    report["mb_per_s"] = round(report["bytes_decompressed"] / MB / max(seconds, 1e-9), 1)
    report["status"] = {s: sum(r["status"] == s for r in records)
                        for s in ("ok", "skipped", "failed")}
    return report


def exit_code(report: dict) -> int:
    """0 when every shard is ok or skipped, 3 when any failed."""
    return 3 if report["status"]["failed"] else 0


def format_summary(report: dict) -> str:
    """A plain-text table for the end of a run."""
    st = report["status"]
    rows = [
        ("shards", f"{len(report['shards'])} ({st['ok']} ok, {st['skipped']} skipped, "
                   f"{st['failed']} failed)"),
        ("lines", f"{report['lines']:,}"),
        ("written", f"{report['rows_written']:,}"),
        ("filtered", f"{report['rows_filtered']:,}"),
        ("rejected", f"{report['rows_rejected']:,}"),
        ("blank", f"{report['blank_lines']:,}"),
    ]
    rows += [(f"  {reason}", f"{n:,}") for reason, n in report["rejects_by_reason"].items()]
    rows += [("input", f"{report['bytes_in'] / MB:,.1f} MB read, "
                       f"{report['bytes_decompressed'] / MB:,.1f} MB decompressed"),
             ("time", f"{report['seconds']:.1f} s, {report['mb_per_s']:,.1f} MB/s")]
    if "load" in report:
        rows.append(("load", format_load(report["load"])))
    lines = [f"{k:<22}{v}" for k, v in rows]
    lines += [f"FAILED {s['error']}" for s in report["shards"]  # the error names the shard
              if s["status"] == "failed"]
    return "\n".join(lines)


def format_load(load: dict) -> str:
    """Lines about a load: files, rows, table size."""
    return (f"loaded {load['files_loaded']} files ({load['shards_loaded']} shards, "
            f"{load['rows_merged']:,} rows merged) into {load['table']} at {load['database']}; "
            f"{load['files_already_loaded']} files were loaded before; the table has "
            f"{load['table_rows']:,} rows ({load['seconds']:.1f} s)")


def format_status(st: dict) -> str:
    """``etl status`` as text."""
    lines = [f"ingest folder     {st['out']}",
             f"shards done       {st['shards_done']}",
             f"shards failed     {len(st['shards_failed'])}"]
    lines += [f"  {p}" for p in st["shards_failed"]]
    if "shards_pending" in st:
        lines.append(f"shards pending    {len(st['shards_pending'])}")
        lines += [f"  {p}" for p in st["shards_pending"]]
    if "database" in st:
        lines += [f"database          {st['database']}",
                  f"files loaded      {st['files_loaded']}",
                  f"files pending     {st['files_pending']}"]
        lines += [f"rows in {t:<10}{n:,}" for t, n in st["rows"].items()]
    return "\n".join(lines)


class ProgressBar:
    """Polls the shards' progress files and draws compressed bytes read over the total."""

    def __init__(self, out: str, total_bytes: int | None, enabled: bool):
        self.out, self.total = out, total_bytes or None
        self.enabled = enabled and sys.stderr.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._started = False

    def __enter__(self):
        return self

    def start(self) -> None:
        """Start drawing (once): after the run's worker processes have started."""
        if self.enabled and not self._started:
            self._started = True
            self._thread.start()

    def _loop(self) -> None:
        from tqdm import tqdm

        with tqdm(total=self.total, unit="B", unit_scale=True, desc="ingest",
                  file=sys.stderr, leave=False) as bar:
            while not self._stop.wait(0.5):
                bar.n = self._in_flight()
                bar.refresh()

    def _in_flight(self) -> int:
        total = 0
        for p in glob.glob(os.path.join(glob.escape(self.out), PROGRESS_DIR, "*.json")):
            try:
                with open(p) as fh:
                    total += json.load(fh)["bytes_in"]
            except (OSError, ValueError, KeyError):
                pass
        return total

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        shutil.rmtree(os.path.join(self.out, PROGRESS_DIR), ignore_errors=True)
