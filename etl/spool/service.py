"""The spooler's life: lock the feed, recover leftovers, listen, serve, drain, seal, exit.

``run_spooler`` returns the exit code: 0 after a clean stop (every received
line is in a sealed shard or a rejects file), 3 when writing failed (the open
``.part`` is left for recovery at the next start). Configuration problems
raise ``ConfigError`` before anything is accepted.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import ssl
import time
from collections.abc import Callable

from etl.errors import ConfigError
from etl.spool.config import SpoolConfig, is_loopback
from etl.spool.feed import FeedWriter
from etl.spool.files import ShardSink, lock_feed
from etl.spool.metrics import Metrics, serve_metrics
from etl.spool.recovery import recover_feed
from etl.spool.server import Spooler, install_signals

EXIT_OK, EXIT_FAILED = 0, 3
FDS_BESIDES_CLIENTS = 64  # listeners, metrics scrapes, shard and rejects files, epoll, pipes

log = logging.getLogger("etl.spool")


def tls_context(cfg: SpoolConfig) -> ssl.SSLContext:
    """A TLS 1.2+ server context with ``--tls-cert`` and ``--tls-key`` loaded."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load the TLS certificate and key ({cfg.tls_key}): {exc}; "
                          "give PEM files the spooler can read", cfg.tls_cert) from exc
    return ctx


def raise_fd_limit(max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE so ``max_connections`` clients fit; ConfigError if it can't.

    Past the soft limit (often 1024) ``accept`` fails with EMFILE: asyncio then stops
    accepting anyone for a second at a time instead of answering ``ERR busy``.
    """
    want = max_connections + FDS_BESIDES_CLIENTS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return
    if hard != resource.RLIM_INFINITY and hard < want:
        raise ConfigError(f"--max-connections {max_connections} needs {want} open files but "
                          f"the hard limit is {hard}: lower --max-connections or raise the "
                          "limit (ulimit -n, systemd LimitNOFILE=)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def _prepare(cfg: SpoolConfig) -> int:
    """Lock the feed and recover leftover ``.part`` files; return how many were recovered."""
    lock_feed(cfg.feed_dir)
    try:
        return len(recover_feed(cfg.feed_dir))
    except OSError as exc:
        raise ConfigError(f"cannot recover leftover .part files: {exc}; fix it and restart "
                          "(nothing was accepted)", cfg.feed_dir) from exc


async def run_spooler(cfg: SpoolConfig, clock: Callable[[], float] = time.time) -> int:
    """Serve until SIGTERM/SIGINT (or a write failure); return the exit code."""
    raise_fd_limit(cfg.max_connections)
    ssl_ctx = tls_context(cfg) if cfg.tls else None
    metrics = Metrics(parts_recovered=_prepare(cfg))
    sink = ShardSink(cfg.out, cfg.feed, cfg.codec, cfg.window_seconds, cfg.max_bytes)
    feed = FeedWriter(sink, metrics, clock=clock)
    spooler = Spooler(cfg, feed, metrics)
    server = await spooler.start(ssl_ctx)
    http = None
    if cfg.metrics:
        try:
            http = await serve_metrics(*cfg.metrics, metrics)
        except OSError as exc:
            server.close()
            raise ConfigError(f"cannot serve --metrics on {cfg.metrics[0]}:{cfg.metrics[1]}: "
                              f"{exc.strerror or exc}") from exc
    _announce(cfg, server, http)
    stop = asyncio.Event()
    install_signals(spooler, stop)
    writing = asyncio.create_task(feed.run())
    try:
        code = await _serve_until_stopped(spooler, server, feed, writing, stop)
    finally:
        server.close()
        if http:
            http.close()
    totals = {"lines": metrics.lines, "rejects": sum(metrics.rejects.values()),
              "sealed": metrics.windows_sealed, "exit_code": code}
    log.info("stopped: %d lines received, %d rejected, %d shards sealed", totals["lines"],
             totals["rejects"], totals["sealed"], extra={"event": "spool.stopped", "data": totals})
    return code


async def _serve_until_stopped(spooler: Spooler, server: asyncio.Server, feed: FeedWriter,
                               writing: asyncio.Task, stop: asyncio.Event) -> int:
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({writing, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    server.close()  # no new connections from here on
    if not writing.done():
        clients = asyncio.create_task(spooler.wait_clients())
        await asyncio.wait({writing, clients}, return_when=asyncio.FIRST_COMPLETED)
        if not writing.done():
            await feed.close()
            await asyncio.wait({writing})
    exc = writing.exception() if not writing.cancelled() else None
    if exc is None:
        return EXIT_OK
    spooler.abort_clients()
    await spooler.wait_clients()
    log.error("writing shards failed: %s; clients were disconnected, the open .part file is "
              "kept and recovered at the next start. Fix the cause (disk full? permissions?) "
              "and restart", exc)
    return EXIT_FAILED


def _announce(cfg: SpoolConfig, server: asyncio.Server, http: asyncio.Server | None) -> None:
    for sock in server.sockets:
        host, port = sock.getsockname()[:2]
        log.info("listening on %s:%d%s: feed %r -> %s (%s, %ds windows, max %d bytes)",
                 host, port, " (TLS)" if cfg.tls else "", cfg.feed, cfg.feed_dir, cfg.codec,
                 cfg.window_seconds, cfg.max_bytes,
                 extra={"event": "spool.listening", "data": {"host": host, "port": port,
                                                             "feed_dir": cfg.feed_dir}})
    if http:
        host, port = http.sockets[0].getsockname()[:2]
        log.info("metrics on http://%s:%d/metrics", host, port)
    if cfg.token and not cfg.tls and not is_loopback(cfg.host):
        log.warning("the AUTH token crosses the network in clear text: add --tls-cert and "
                    "--tls-key")
