"""One run at a time per output folder: an advisory lock on ``<out>/_lock``.

The kernel drops a ``flock`` when its process dies, however it dies, so a crashed
run never blocks the next one. The file holds who has the lock, for messages.
(Locks on network file systems depend on the server; keep ``--out`` local or on
a file system with working ``flock``.)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time

LOCK_NAME = "_lock"
POLL = 0.5  # seconds between attempts while waiting


class Busy(Exception):
    """Another run holds the lock; ``holder`` says who, when known."""

    def __init__(self, out: str, holder: dict):
        super().__init__(out, holder)
        self.out, self.holder = out, holder

    def __str__(self) -> str:
        h = self.holder
        who = (f" (pid {h.get('pid')} on {h.get('host')}, since "
               f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(h['since']))})"
               if h.get("since") else "")
        return f"another run is in progress in {self.out}{who}"


def _holder(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}


@contextlib.contextmanager
def run_lock(out: str, wait: float = 0.0):
    """Hold the folder's lock for the ``with`` block; wait up to ``wait`` s, else raise Busy.

    An fsspec URL has no lock (object stores have no flock): one run at a time is then
    the scheduler's job (one cron entry, one ``--every`` loop).
    """
    if "://" in out:
        yield
        return
    os.makedirs(out, exist_ok=True)
    fd = os.open(os.path.join(out, LOCK_NAME), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Busy(out, _holder(fd)) from None
                time.sleep(POLL)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.time()}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing drops the lock
