"""The manifest: one JSON record per finished shard, ``<out>/_manifest/<shard id>.json``.

Light on purpose (json and the output folder only): ``etl load`` and ``etl status``
read it without importing the Parquet writer or the parser.
"""

from __future__ import annotations

import glob
import json
import posixpath
import time

from etl.storage import Folder

PROGRESS_DIR = "_progress"  # per-shard progress files of a running ingest
COUNTS = ("lines", "rows_written", "rows_filtered", "rows_rejected", "blank_lines")

MANIFEST_DIR = "_manifest"


def read_manifest(out: str, shard_id: str) -> dict | None:
    """The record of a shard's last finished run, or None."""
    folder = Folder(out)
    try:
        return json.loads(folder.read_bytes(folder.join(MANIFEST_DIR, f"{shard_id}.json")))
    except (FileNotFoundError, ValueError):
        return None


def read_all_manifests(out: str) -> list[dict]:
    """Every shard record in the output folder."""
    folder = Folder(out)
    pattern = posixpath.join(glob.escape(folder.root), MANIFEST_DIR, "*.json")
    return [json.loads(folder.read_bytes(p)) for p in folder.glob(pattern)]


def write_manifest(out: str, shard_id: str, record: dict) -> None:
    """Atomically write a shard's record (temporary file, fsync, rename)."""
    folder = Folder(out)
    record = dict(record, written_at=time.time())
    folder.write_atomic(folder.join(MANIFEST_DIR, f"{shard_id}.json"),
                        json.dumps(record, indent=1, sort_keys=True).encode())


def forget_manifest(out: str, shard_id: str) -> None:
    """Drop a shard's record before its files change, so a crash means 'redo'."""
    folder = Folder(out)
    folder.remove(folder.join(MANIFEST_DIR, f"{shard_id}.json"))
