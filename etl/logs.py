"""Logging set-up: plain lines for people, or one JSON object per line (``--log-json``).

Code logs through ``logging.getLogger("etl")`` with structured details in
``extra={"event": ..., "data": {...}}``; the JSON formatter puts them at the top level.
"""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "event", "message", ...data}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(),
               "event": getattr(record, "event", "log"),
               "message": record.getMessage()}
        out.update(getattr(record, "data", {}) or {})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(json_lines: bool = False, quiet: bool = False) -> None:
    """Route the ``etl`` logger to standard error (warnings only when quiet)."""
    logger = logging.getLogger("etl")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("etl: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING if quiet and not json_lines else logging.INFO)
    logger.propagate = False


def event(name: str, message: str, level: int = logging.INFO, **data) -> None:
    """Log one structured event."""
    logging.getLogger("etl").log(level, message, extra={"event": name, "data": data})
