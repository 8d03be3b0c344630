"""The feed's writer: one bounded queue in, frames out through one writer thread.

Connection handlers ``put`` their ``Chunk`` s into a queue of at most
``QUEUE_CHUNKS``. The writer task gathers them into a buffer and hands the
buffer to its own thread (compress, append, fsync) when it reaches
``flush_bytes``, when its oldest line has waited ``FLUSH_SECONDS``, or when its
window ends. While that thread works the task keeps filling the next buffer;
if the thread is still busy when the next flush is due, the task waits, the
queue fills, and handlers wait in ``put`` instead of reading their sockets:
TCP flow control then slows the senders. Nothing is unbounded: memory is the
queue, two buffers and one frame.

One queue per feed and FIFO ``put`` keep each connection's lines in order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from etl.spool.files import Sealed, ShardSink
from etl.spool.lines import Chunk, Reject
from etl.spool.metrics import Metrics
from etl.spool.rotation import window_start

QUEUE_CHUNKS = 32        # chunks (each <= one read + one line) waiting for the writer task
FLUSH_SECONDS = 0.5      # a line reaches its .part file within this (plus the write itself)
FLUSH_BYTES = 4 << 20    # 4 MiB: most uncompressed bytes per frame
_STOP = object()

log = logging.getLogger("etl.spool")


class FeedWriter:
    """Owns a feed's queue, buffer and writer thread; ``run`` is its task."""

    def __init__(self, sink: ShardSink, metrics: Metrics, *, flush_bytes: int = FLUSH_BYTES,
                 clock: Callable[[], float] = time.time):
        self._sink, self._metrics, self._clock = sink, metrics, clock
        self.clock = clock
        self._window_seconds = sink.window_seconds
        self._flush_bytes = min(flush_bytes, sink.max_bytes)
        self._queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_CHUNKS)
        self._thread = ThreadPoolExecutor(1, thread_name_prefix=f"spool-{sink.feed}")
        self._inflight: asyncio.Future | None = None
        self._window: int | None = None  # window of the open .part, as far as this task knows
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        self._data: list[bytes] = []
        self._size = self._lines = 0
        self._rejects: list[Reject] = []
        self._first_at = 0.0   # wall-clock arrival of the buffer's first chunk
        self._due = 0.0        # monotonic time the buffer must be flushed by

    async def put(self, chunk: Chunk) -> None:
        """Queue a connection's chunk; wait (and count it as backpressure) while full."""
        if not self._queue.full():
            self._queue.put_nowait(chunk)
            return
        self._metrics.pause_begin()
        try:
            await self._queue.put(chunk)
        finally:
            self._metrics.pause_end()

    async def close(self) -> None:
        """Ask ``run`` to write everything queued, seal the open shard and return."""
        await self._queue.put(_STOP)

    async def run(self) -> None:
        """The writer task: until ``close``, move chunks to disk; then seal everything."""
        try:
            while True:
                item = await self._next(self._timeout())
                now = self._clock()
                if item is _STOP:
                    break
                if item is not None:
                    await self._add(item, now)
                await self._tick(now)
            await self._flush()
            await self._settle()
            self._sealed(await self._call(self._sink.close))
        except BaseException:
            await self._abandon()
            raise
        finally:
            self._thread.shutdown(wait=True)

    async def _next(self, timeout: float | None):
        """The next queued item, or None after ``timeout`` or when a write finished."""
        if not self._queue.empty():
            return self._queue.get_nowait()
        getter = asyncio.ensure_future(self._queue.get())
        waits = {getter, self._inflight} if self._inflight else {getter}
        done, _ = await asyncio.wait(waits, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if getter in done:
            return getter.result()
        getter.cancel()  # safe: a cancelled Queue.get leaves its item in the queue
        if self._inflight and self._inflight.done():
            await self._settle()  # a write error surfaces now, not at the next flush
        return None

    def _timeout(self) -> float | None:
        """Seconds until something is due: a buffer flush or the open window's end."""
        delays = []
        if self._data or self._rejects:
            delays.append(self._due - time.monotonic())
        if self._window is not None:
            delays.append(self._window + self._window_seconds - self._clock())
        return max(0.0, min(delays)) if delays else None

    async def _add(self, chunk: Chunk, now: float) -> None:
        if self._first_at and (window_start(now, self._window_seconds)
                               != window_start(self._first_at, self._window_seconds)):
            await self._flush()  # a buffer never spans two windows
        elif self._size and self._size + len(chunk.data) > self._flush_bytes:
            await self._flush()  # a frame stays under flush_bytes (so under --max-bytes)
        if not self._first_at:
            self._first_at, self._due = now, time.monotonic() + FLUSH_SECONDS
        if chunk.data:
            self._data.append(chunk.data)
            self._size += len(chunk.data)
            self._lines += chunk.lines
        self._rejects += chunk.rejects
        for r in chunk.rejects:
            self._metrics.rejects[r.reason] += 1
        self._metrics.lines += chunk.lines

    async def _tick(self, now: float) -> None:
        """Flush a full or due buffer; seal the open shard when its window has ended."""
        if self._first_at and (self._size >= self._flush_bytes or time.monotonic() >= self._due
                               or now >= self._first_at_window_end()):
            await self._flush()
        if self._window is not None and now >= self._window + self._window_seconds:
            await self._settle()
            self._sealed(await self._call(self._sink.seal_ended, now))
            self._window = self._sink.window

    def _first_at_window_end(self) -> float:
        return window_start(self._first_at, self._window_seconds) + self._window_seconds

    async def _flush(self) -> None:
        """Hand the buffer to the writer thread (after the previous hand-off is done)."""
        if not self._first_at:
            return
        data, lines, rejects, at = b"".join(self._data), self._lines, self._rejects, self._first_at
        self._reset_buffer()
        await self._settle()
        loop = asyncio.get_running_loop()
        self._inflight = loop.run_in_executor(self._thread, self._sink.append, data, lines,
                                              rejects, at)
        if data:
            self._window = window_start(at, self._window_seconds)

    async def _settle(self) -> None:
        """Wait for the write in flight; count what it sealed; raise what it raised."""
        if self._inflight is None:
            return
        inflight, self._inflight = self._inflight, None
        self._sealed(await inflight)

    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._thread, fn, *args)

    def _sealed(self, sealed: list[Sealed]) -> None:
        for s in sealed:
            self._metrics.windows_sealed += 1
            self._metrics.bytes_sealed += s.bytes
            log.info("sealed %s: %d lines, %d bytes", s.path, s.lines, s.bytes,
                     extra={"event": "spool.sealed",
                            "data": {"path": s.path, "lines": s.lines, "bytes": s.bytes}})

    async def _abandon(self) -> None:
        """After a failure: close the open ``.part`` unsealed (recovered on the next start)."""
        if self._inflight is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._inflight), 30)
            except BaseException:  # the failure being handled already says what went wrong
                pass
        await asyncio.get_running_loop().run_in_executor(self._thread, self._sink.abandon)
