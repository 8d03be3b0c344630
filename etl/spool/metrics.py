"""The spooler's counters and a tiny HTTP endpoint serving them as Prometheus text.

``GET /metrics`` answers the text exposition format (version 0.0.4). Every
counter lives in one ``Metrics`` object owned by the spooler and changed only
on the event loop thread.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

from etl.spool.lines import REASONS

REFUSALS = ("not_allowed", "too_many", "auth", "stopping")
HTTP_HEAD_LIMIT = 8192   # bytes of request line + headers read at most
HTTP_TIMEOUT = 5.0       # seconds a scraper gets to send its request


@dataclass
class Metrics:
    """Counters since start; ``backpressure_seconds`` counts wall time with a reader paused."""

    connections_open: int = 0
    connections_total: int = 0
    refused: Counter = field(default_factory=Counter)
    idle_timeouts: int = 0
    lines: int = 0
    bytes_received: int = 0
    rejects: Counter = field(default_factory=Counter)
    windows_sealed: int = 0
    bytes_sealed: int = 0
    parts_recovered: int = 0
    backpressure_seconds: float = 0.0
    _paused: int = 0
    _paused_since: float = 0.0

    def pause_begin(self) -> None:
        """A connection stopped reading because the writer is behind."""
        if self._paused == 0:
            self._paused_since = time.monotonic()
        self._paused += 1

    def pause_end(self) -> None:
        """That connection reads again."""
        self._paused -= 1
        if self._paused == 0:
            self.backpressure_seconds += time.monotonic() - self._paused_since

    def paused_seconds(self) -> float:
        """Backpressure seconds so far, including a pause still going on."""
        ongoing = time.monotonic() - self._paused_since if self._paused else 0.0
        return self.backpressure_seconds + ongoing

    def render(self) -> str:
        """Prometheus text exposition of every counter."""
        out: list[str] = []
        _metric(out, "connections_open", "gauge", "client connections open now",
                [("", self.connections_open)])
        _metric(out, "connections_total", "counter", "client connections accepted",
                [("", self.connections_total)])
        _metric(out, "connections_refused_total", "counter", "connections refused, by reason",
                _labelled(self.refused, REFUSALS))
        _metric(out, "idle_timeouts_total", "counter", "connections closed for idleness",
                [("", self.idle_timeouts)])
        _metric(out, "lines_total", "counter", "valid lines received (each goes to the next frame)",
                [("", self.lines)])
        _metric(out, "bytes_total", "counter", "bytes received from clients",
                [("", self.bytes_received)])
        _metric(out, "rejects_total", "counter", "lines rejected, by reason",
                _labelled(self.rejects, REASONS))
        _metric(out, "windows_sealed_total", "counter", "shard files sealed",
                [("", self.windows_sealed)])
        _metric(out, "sealed_bytes_total", "counter", "bytes in sealed shard files",
                [("", self.bytes_sealed)])
        _metric(out, "parts_recovered_total", "counter", "leftover .part files recovered",
                [("", self.parts_recovered)])
        _metric(out, "backpressure_seconds_total", "counter",
                "seconds during which reading was paused because the writer was behind",
                [("", round(self.paused_seconds(), 6))])
        return "".join(out)


def _labelled(counts: Counter, known: tuple[str, ...]) -> list[tuple[str, int]]:
    reasons = list(known) + sorted(set(counts) - set(known))
    return [(f'{{reason="{r}"}}', counts[r]) for r in reasons]


def _metric(out: list[str], name: str, kind: str, doc: str, samples) -> None:
    name = f"etl_spool_{name}"
    out.append(f"# HELP {name} {doc}\n# TYPE {name} {kind}\n")
    out.extend(f"{name}{labels} {value}\n" for labels, value in samples)


async def serve_metrics(host: str, port: int, metrics: Metrics) -> asyncio.Server:
    """Start the HTTP endpoint: ``GET /metrics`` -> 200 text, anything else -> 404/405."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HTTP_TIMEOUT)
            method, path = (head.split(b"\r\n", 1)[0].split(b" ") + [b"", b""])[:2]
            if method != b"GET":
                status, body = "405 Method Not Allowed", "only GET is served\n"
            elif path.split(b"?")[0] == b"/metrics":
                status, body = "200 OK", metrics.render()
            else:
                status, body = "404 Not Found", "metrics are at /metrics\n"
            payload = body.encode()
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; "
                         f"charset=utf-8\r\nContent-Length: {len(payload)}\r\n"
                         "Connection: close\r\n\r\n".encode() + payload)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, host, port, limit=HTTP_HEAD_LIMIT)
