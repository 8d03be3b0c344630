"""``etl spool``: the subcommand's flags (``add_parser``) and its entry point (``run``).

``etl/cli.py`` calls ``add_parser(subparsers)`` and, for the ``spool`` command,
``run(args)``, which returns the exit code: 0 clean stop, 2 usage or
configuration error (nothing was accepted), 3 writing failed.
"""

from __future__ import annotations

import argparse
import logging
import sys

from etl.errors import ConfigError
from etl.spool import config as c

EXIT_USAGE = 2


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``spool`` subcommand and its flags to an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "spool", help="live NDJSON over TCP -> rolling compressed shards",
        description="Accept NDJSON lines over TCP from any line-writing client (ncat, socat, "
        "a Python socket) and write them into wall-clock-aligned, compressed shards under "
        "OUT/FEED/YYYY/MM/DD/ that `etl ingest` reads. SIGTERM/SIGINT drain and seal.")
    p.add_argument("--listen", default=c.DEFAULT_LISTEN, metavar="HOST:PORT",
                   help=f"address to listen on (default {c.DEFAULT_LISTEN}; port 0: any)")
    p.add_argument("--out", required=True, metavar="DIR", help="root folder of the spool")
    p.add_argument("--feed", default=c.DEFAULT_FEED, metavar="NAME",
                   help=f"feed name: folder and file prefix (default {c.DEFAULT_FEED})")
    p.add_argument("--window", default=c.DEFAULT_WINDOW, type=int, metavar="SECONDS",
                   help=f"window length, aligned to the clock in UTC (default {c.DEFAULT_WINDOW})")
    p.add_argument("--max-bytes", default=str(c.DEFAULT_MAX_BYTES), metavar="N",
                   help="roll a shard before it grows past N bytes on disk; K/M/G suffixes "
                   "(default 256M)")
    p.add_argument("--codec", default="zst", choices=["zst", "gz", "none"],
                   help="shard compression (default zst)")
    p.add_argument("--max-line", default=str(c.DEFAULT_MAX_LINE), metavar="BYTES",
                   help="longest line kept; longer ones are rejected (default 1M)")
    p.add_argument("--max-connections", default=c.DEFAULT_MAX_CONNECTIONS, type=int,
                   metavar="N", help=f"clients at once (default {c.DEFAULT_MAX_CONNECTIONS})")
    p.add_argument("--allow", action="extend", nargs="+", default=[], metavar="CIDR",
                   help="only these peer networks may connect (default: any peer)")
    p.add_argument("--token-file", metavar="F",
                   help="clients must send 'AUTH <token>' as their first line")
    p.add_argument("--tls-cert", metavar="F", help="PEM certificate: turns TLS on")
    p.add_argument("--tls-key", metavar="F", help="PEM private key for --tls-cert")
    p.add_argument("--idle-timeout", default=c.DEFAULT_IDLE_TIMEOUT, type=float, metavar="S",
                   help="close clients silent this long; 0: never (default "
                   f"{c.DEFAULT_IDLE_TIMEOUT:g})")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics")
    p.add_argument("--grace", default=c.DEFAULT_GRACE, type=float, metavar="S",
                   help="on SIGTERM/SIGINT keep reading clients up to S seconds "
                   f"(default {c.DEFAULT_GRACE:g})")
    p.add_argument("--log-json", action="store_true",
                   help="log one JSON object per line (events spool.listening, spool.sealed, "
                   "spool.recovered, spool.refused, spool.stopped)")
    return p


def build_config(args: argparse.Namespace) -> c.SpoolConfig:
    """Parsed flags -> ``SpoolConfig``; raises ConfigError with what to fix."""
    host, port = c.parse_hostport(args.listen, "--listen")
    return c.SpoolConfig(
        host=host, port=port, out=args.out, feed=args.feed, window_seconds=args.window,
        max_bytes=c.parse_size(args.max_bytes, "--max-bytes"), codec=args.codec,
        max_line=c.parse_size(args.max_line, "--max-line"),
        max_connections=args.max_connections, allow=c.parse_networks(args.allow),
        token=c.read_token(args.token_file) if args.token_file else None,
        tls_cert=args.tls_cert, tls_key=args.tls_key,
        idle_timeout=args.idle_timeout or None,
        metrics=c.parse_hostport(args.metrics, "--metrics") if args.metrics else None,
        grace=args.grace)


def run(args: argparse.Namespace) -> int:
    """Run the spooler until SIGTERM/SIGINT; return the exit code."""
    import asyncio  # here, not at the top: every etl command imports this module (45 ms)

    from etl.spool.service import run_spooler

    if not logging.getLogger("etl").handlers:  # etl/cli.py sets logging up; -m etl.spool not
        from etl.logs import setup_logging

        setup_logging(json_lines=args.log_json)
    try:
        cfg = build_config(args)
        return asyncio.run(run_spooler(cfg))
    except ConfigError as exc:
        print(f"etl spool: error: {exc}", file=sys.stderr)
        return EXIT_USAGE

