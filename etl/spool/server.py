"""The spooler's asyncio layer: accept, gate, read, split, queue; stop cleanly on a signal.

``asyncio.start_server`` gives each client a StreamReader with an explicit
``limit`` of ``STREAM_LIMIT``: the transport stops reading a socket once
``2 * limit`` bytes wait unread, so a client costs at most that plus the one
unfinished line ``LineSplitter`` holds (``--max-line``). Handlers read
``READ_SIZE`` pieces and ``await`` the feed's bounded queue, which is where
backpressure lives: while the writer is behind, no socket is read.

Timeouts use one timer per connection, re-armed lazily, never a poll per read:
``--idle-timeout`` closes a silent client; after SIGTERM/SIGINT a client is
read until EOF, until it has been quiet ``DRAIN_QUIET`` seconds, or until
``--grace`` is over. A connection is cut by pausing its transport and feeding
EOF to its reader, so every byte already read is still split and stored.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
import ssl
from dataclasses import dataclass, field

from etl.errors import ConfigError
from etl.spool.config import SpoolConfig, peer_allowed
from etl.spool.feed import FeedWriter
from etl.spool.lines import Chunk, LineSplitter, incomplete, sort_lines
from etl.spool.metrics import Metrics

STREAM_LIMIT = 64 << 10   # 64 KiB: StreamReader limit; a socket pauses at 2x unread
READ_SIZE = 64 << 10      # bytes asked for per read
DRAIN_QUIET = 1.0         # seconds of silence that end a client after SIGTERM
AUTH_PREFIX = b"AUTH "
AUTH_TIMEOUT = 10.0       # seconds a client has to send its AUTH line

log = logging.getLogger("etl.spool")


@dataclass(eq=False)
class Connection:
    """One client: its streams, when it last sent a byte, and why it was cut (if it was)."""

    peer: str
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last: float
    waiting: bool = False        # blocked on the feed's queue: the wait is ours, not idleness
    cut_why: str | None = None   # "timed out" / "cut at shutdown" / "reset"
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class Spooler:
    """Listens, gates and reads clients into one ``FeedWriter``."""

    def __init__(self, cfg: SpoolConfig, feed: FeedWriter, metrics: Metrics):
        self.cfg, self.feed, self.metrics = cfg, feed, metrics
        self._conns: set[Connection] = set()
        self._tasks: set[asyncio.Task] = set()
        self._stopping_at: float | None = None
        self._loop = asyncio.get_running_loop()

    # ------------------------------------------------------------ accept and gate

    async def start(self, ssl_ctx: ssl.SSLContext | None) -> asyncio.Server:
        """Bind the listening socket; ConfigError if the address cannot be used."""
        try:
            return await asyncio.start_server(
                self._accept, self.cfg.host, self.cfg.port, limit=STREAM_LIMIT, ssl=ssl_ctx,
                ssl_handshake_timeout=min(self.cfg.idle_timeout or 60.0, 60.0) if ssl_ctx
                else None, backlog=min(self.cfg.max_connections, 4096))
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: "
                              f"{exc.strerror or exc}; stop whatever uses it or pick another "
                              "--listen") from exc

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            await self._gate_and_serve(reader, writer)
        except asyncio.CancelledError:
            pass  # abort_clients ended it; asyncio would log a cancelled handler as an error
        finally:
            self._tasks.discard(task)

    async def _gate_and_serve(self, reader, writer) -> None:
        addr = writer.get_extra_info("peername") or ("?", 0)
        peer = f"[{addr[0]}]:{addr[1]}" if ":" in str(addr[0]) else f"{addr[0]}:{addr[1]}"
        if not peer_allowed(str(addr[0]), self.cfg.allow):
            self.metrics.refused["not_allowed"] += 1
            _refused(peer, "not_allowed", "not in --allow")
            writer.transport.abort()
            return
        if self._stopping_at is not None:
            self.metrics.refused["stopping"] += 1
            await _say_and_close(writer, b"ERR stopping: the spooler is shutting down\n")
            return
        if len(self._conns) >= self.cfg.max_connections:
            self.metrics.refused["too_many"] += 1
            _refused(peer, "too_many", f"{len(self._conns)} connections open "
                     "(--max-connections)")
            await _say_and_close(writer, b"ERR busy: too many connections; retry later\n")
            return
        conn = Connection(peer, reader, writer, self._loop.time())
        self._conns.add(conn)
        self.metrics.connections_open += 1
        self.metrics.connections_total += 1
        self._arm(conn)
        try:
            if self.cfg.token is None or await self._authenticate(conn):
                await self._serve(conn)
        finally:
            self._conns.discard(conn)
            self.metrics.connections_open -= 1
            if conn.timer:
                conn.timer.cancel()
            writer.close()

    async def _authenticate(self, conn: Connection) -> bool:
        """The first line must be ``AUTH <token>``; else say so and close."""
        try:
            line = await asyncio.wait_for(conn.reader.readuntil(b"\n"), AUTH_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError, ssl.SSLError):
            line = b""
        conn.last = self._loop.time()
        token = line.rstrip(b"\r\n")
        want = AUTH_PREFIX + self.cfg.token.reveal().encode()
        if hmac.compare_digest(token, want):
            return True
        self.metrics.refused["auth"] += 1
        _refused(conn.peer, "auth", "no valid 'AUTH <token>' first line")
        await _say_and_close(conn.writer, b"ERR auth: send 'AUTH <token>' as the first line\n")
        return False

    # ------------------------------------------------------------ reading

    async def _serve(self, conn: Connection) -> None:
        """Read until EOF or a cut, storing whole lines in arrival order."""
        split = LineSplitter(self.cfg.max_line)
        reader, metrics = conn.reader, self.metrics
        while True:
            try:
                data = await reader.read(READ_SIZE)
            except (ConnectionError, ssl.SSLError, OSError):
                conn.cut_why = conn.cut_why or "reset"
                break
            if not data:
                break
            conn.last = self._loop.time()
            metrics.bytes_received += len(data)
            chunk = self._sort(*split.feed(data), conn)
            data = None  # while waiting on the writer, hold only the chunk
            if chunk:
                await self._put(conn, chunk)
        if conn.cut_why is None:
            chunk = self._sort(*split.finish(), conn)
        else:
            cut = split.cut()
            chunk = Chunk(rejects=[incomplete(cut, conn.cut_why, conn.peer, self._clock())]
                          if cut else [])
        if chunk:
            await self._put(conn, chunk)

    def _sort(self, lines: list[bytes], too_long: list, conn: Connection) -> Chunk:
        if not lines and not too_long:
            return Chunk()
        return sort_lines(lines, too_long, conn.peer, self._clock(), self.cfg.max_line)

    async def _put(self, conn: Connection, chunk: Chunk) -> None:
        conn.waiting = True
        try:
            await self.feed.put(chunk)
        finally:
            conn.waiting = False
            conn.last = self._loop.time()

    def _clock(self) -> float:
        return self.feed.clock()  # wall clock, for reject records

    # ------------------------------------------------------------ timers and cuts

    def _deadline(self, conn: Connection) -> float | None:
        """When ``conn`` is to be cut if it stays silent: idle timeout, or drain at shutdown."""
        if self._stopping_at is None:
            return conn.last + self.cfg.idle_timeout if self.cfg.idle_timeout else None
        return min(conn.last + DRAIN_QUIET, self._stopping_at + self.cfg.grace)

    def _arm(self, conn: Connection) -> None:
        if conn.timer:
            conn.timer.cancel()
        deadline = self._deadline(conn)
        conn.timer = self._loop.call_at(deadline, self._expire, conn) if deadline else None

    def _expire(self, conn: Connection) -> None:
        now = self._loop.time()
        grace_over = (self._stopping_at is not None
                      and now >= self._stopping_at + self.cfg.grace)
        # waiting on the writer, or unread bytes pausing the transport: we are behind, not it
        behind = conn.waiting or not conn.writer.transport.is_reading()
        if not grace_over and (behind or self._deadline(conn) > now):
            if behind:
                conn.last = now
            self._arm(conn)
            return
        if self._stopping_at is None:
            self.metrics.idle_timeouts += 1
            log.info("closing %s: silent for %ss (--idle-timeout)", conn.peer,
                     self.cfg.idle_timeout)
        self._cut(conn, "timed out" if self._stopping_at is None else "cut at shutdown")

    def _cut(self, conn: Connection, why: str) -> None:
        """Stop reading ``conn``: what it already sent is still read, then it sees EOF."""
        if conn.cut_why is not None:
            return
        conn.cut_why = why
        conn.timer = None
        try:
            conn.writer.transport.pause_reading()
        except (AttributeError, RuntimeError):
            pass
        conn.reader.feed_eof()

    # ------------------------------------------------------------ stopping

    def begin_stop(self, now_forced: bool = False) -> None:
        """Stop accepting; give clients ``--grace`` (none if forced) to finish sending."""
        if self._stopping_at is None:
            self._stopping_at = self._loop.time()
        if now_forced:
            self._stopping_at = self._loop.time() - self.cfg.grace
        for conn in list(self._conns):
            self._arm(conn)

    async def wait_clients(self) -> None:
        """Until every client handler has finished."""
        while self._tasks:
            await asyncio.wait(set(self._tasks))

    def abort_clients(self) -> None:
        """After a writer failure: drop every client at once (they see a reset)."""
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self._conns):
            conn.writer.transport.abort()


def _refused(peer: str, reason: str, why: str) -> None:
    log.warning("refused %s: %s", peer, why,
                extra={"event": "spool.refused", "data": {"peer": peer, "reason": reason}})


async def _say_and_close(writer: asyncio.StreamWriter, message: bytes) -> None:
    try:
        writer.write(message)
        await asyncio.wait_for(writer.drain(), 5)
    except (ConnectionError, asyncio.TimeoutError, ssl.SSLError, OSError):
        pass
    finally:
        writer.close()


def install_signals(spooler: Spooler, stop: asyncio.Event) -> None:
    """SIGTERM/SIGINT: begin a graceful stop; a second one skips the rest of the grace."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            log.warning("%s again: cutting clients now", name)
            spooler.begin_stop(now_forced=True)
            return
        log.info("%s: no new connections; reading clients for up to %ss, then sealing",
                 name, spooler.cfg.grace)
        stop.set()
        spooler.begin_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
