"""The exceptions etl raises on purpose.

::

    EtlError                      base; carries path, line_no, field when known
    ├── ConfigError               bad schema TOML or bad CLI usage   -> exit 2
    ├── ShardError                one shard cannot be read to its end -> shard failed, exit 3
    │   └── CorruptShardError     the compressed stream is damaged or truncated
    └── LoadError                 the warehouse refused or failed a load -> exit 4
        ├── UnreachableError      cannot connect at all (names host and port) -> exit 2
        └── TransientLoadError    worth retrying (connection dropped, serialization failure)

Every exception pickles (Dask moves them between processes), so each keeps its
constructor arguments in ``args``.
"""

from __future__ import annotations


class EtlError(Exception):
    """Base class: a message plus where it happened (path, 1-based line, field)."""

    def __init__(self, message: str, path: str | None = None,
                 line_no: int | None = None, field: str | None = None):
        super().__init__(message, path, line_no, field)
        self.message = message
        self.path = path
        self.line_no = line_no
        self.field = field

    def __str__(self) -> str:
        where = []
        if self.path:
            where.append(str(self.path))
        if self.line_no is not None:
            where.append(f"line {self.line_no}")
        if self.field:
            where.append(f"field {self.field!r}")
        return f"{', '.join(where)}: {self.message}" if where else self.message


class ConfigError(EtlError):
    """The schema file or the command line is wrong; nothing was processed."""


class ShardError(EtlError):
    """A shard could not be read to its end; other shards go on."""


class CorruptShardError(ShardError):
    """The compressed stream is damaged, truncated or followed by garbage."""


class LoadError(EtlError):
    """The warehouse refused a load; nothing of that load was committed."""


class UnreachableError(LoadError):
    """The database cannot be reached; nothing was loaded."""


class TransientLoadError(LoadError):
    """A load failure worth retrying with backoff."""
