"""The spooler's one frozen, typed settings object, and the parsers cli.py builds it with."""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from etl.errors import ConfigError
from etl.spool.rotation import SUFFIXES

DEFAULT_LISTEN = "127.0.0.1:5170"
DEFAULT_FEED = "comments"          # matches etl-run's /data/spool/comments
DEFAULT_WINDOW = 60                 # seconds per window
DEFAULT_MAX_BYTES = 256 << 20       # 256 MiB: a shard rolls before it grows past this
DEFAULT_MAX_LINE = 1 << 20          # 1 MiB: longest line kept; bounds memory per client
DEFAULT_MAX_CONNECTIONS = 256       # with max_line, bounds memory: 256 x ~1.2 MiB worst case
DEFAULT_IDLE_TIMEOUT = 300.0        # seconds without a byte before a connection is closed
DEFAULT_GRACE = 10.0                # seconds to keep reading clients after SIGTERM/SIGINT
FEED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SIZE = re.compile(r"^(\d+)\s*([kmg]?)(?:i?b)?$", re.IGNORECASE)
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Secret:
    """A string that never prints: repr and str show ``***``."""

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__


@dataclass(frozen=True)
class SpoolConfig:
    """Everything one spooler needs.

    Attributes
    ----------
    host, port : where to listen (port 0: any free port, logged at start).
    out : root folder; shards go to ``out/<feed>/YYYY/MM/DD/``.
    feed : feed name, the first folder and the file name prefix.
    window_seconds : window length; windows are aligned to its multiples (UTC).
    max_bytes : a shard rolls before it would grow past this many bytes on disk.
    codec : ``zst``, ``gz`` or ``none``.
    max_line : longest line kept, bytes, terminator excluded.
    max_connections : clients at once; more are refused.
    allow : peer networks let in; empty lets every peer in.
    token : when set, a client's first line must be ``AUTH <token>``.
    tls_cert, tls_key : PEM files; both set turns TLS on.
    idle_timeout : seconds without a byte before a client is closed; None never.
    metrics : (host, port) of the Prometheus endpoint, or None.
    grace : seconds clients may keep sending after SIGTERM/SIGINT.
    """

    host: str
    port: int
    out: str
    feed: str = DEFAULT_FEED
    window_seconds: int = DEFAULT_WINDOW
    max_bytes: int = DEFAULT_MAX_BYTES
    codec: str = "zst"
    max_line: int = DEFAULT_MAX_LINE
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    allow: tuple[Network, ...] = ()
    token: Secret | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT
    metrics: tuple[str, int] | None = None
    grace: float = DEFAULT_GRACE

    def __post_init__(self):
        if not FEED_NAME.match(self.feed):
            raise ConfigError(f"bad --feed {self.feed!r}: use letters, digits, '.', '_', '-' "
                              "(at most 64, starting with a letter or digit)")
        if self.codec not in SUFFIXES:
            raise ConfigError(f"unknown --codec {self.codec!r}: use zst, gz or none")
        _at_least("--window", self.window_seconds, 1)
        _at_least("--max-bytes", self.max_bytes, 4096)
        _at_least("--max-line", self.max_line, 64)
        _at_least("--max-connections", self.max_connections, 1)
        if self.grace < 0 or (self.idle_timeout is not None and self.idle_timeout <= 0):
            raise ConfigError("--grace must be >= 0 and --idle-timeout > 0 (0 turns it off)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together: give both or neither")
        if not is_loopback(self.host) and self.token is None and not self.allow:
            raise ConfigError(
                f"refusing to listen on non-loopback {self.host}:{self.port} with neither "
                "--token-file nor --allow: anyone who reaches the port could write into "
                f"{self.out}. Add --token-file F (clients send 'AUTH <token>' first) and/or "
                "--allow CIDR")

    @property
    def tls(self) -> bool:
        return self.tls_cert is not None

    @property
    def feed_dir(self) -> str:
        return os.path.join(self.out, self.feed)


def _at_least(flag: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{flag} {value} is too small (at least {low})")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``localhost``) only reaches this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: may resolve anywhere


def parse_hostport(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port)."""
    m = re.match(r"^(?:\[([^\]]+)\]|([^:\[\]]*)):(\d{1,5})$", text)
    if not m or int(m[3]) > 65535:
        raise ConfigError(f"bad {flag} {text!r}: use HOST:PORT, e.g. 127.0.0.1:5170 or "
                          "[::1]:5170")
    return (m[1] or m[2] or "127.0.0.1"), int(m[3])


def parse_size(text: str, flag: str) -> int:
    """``1048576``, ``1M``, ``1MiB``, ``256m``, ``4k``, ``1G`` -> bytes (powers of 1024)."""
    m = SIZE.match(str(text).strip())
    if not m:
        raise ConfigError(f"bad {flag} {text!r}: use bytes, or a number with K, M or G")
    return int(m[1]) << {"": 0, "k": 10, "m": 20, "g": 30}[m[2].lower()]


def parse_networks(items: list[str]) -> tuple[Network, ...]:
    """``--allow`` values -> networks (a bare address is a /32 or /128)."""
    nets = []
    for item in items:
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"bad --allow {item!r}: use a CIDR like 10.0.0.0/8 or "
                              "an address") from None
    return tuple(nets)


def read_token(path: str) -> Secret:
    """The token in the first line of ``path`` (surrounding whitespace removed)."""
    try:
        with open(path, encoding="utf-8") as fh:
            token = fh.readline().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the token file: {exc}", path) from exc
    if len(token) < 16 or any(c.isspace() for c in token):
        raise ConfigError("the token must be one line of at least 16 characters without "
                          "spaces; make one with: openssl rand -hex 24 > FILE", path)
    return Secret(token)


def peer_allowed(address: str, allow: tuple[Network, ...]) -> bool:
    """Whether a peer address is in one of ``allow`` (an empty tuple allows everyone)."""
    if not allow:
        return True
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if getattr(ip, "ipv4_mapped", None):
        ip = ip.ipv4_mapped
    return any(ip in net for net in allow)
