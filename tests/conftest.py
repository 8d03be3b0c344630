"""Shared fixtures: paths to copied test data, a real-tool helper, the bundled schemas."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SCHEMAS = ROOT / "etl" / "schemas"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_tool(name: str) -> str:
    """Path of a command-line tool; under CI=true a missing tool fails the test, else skips."""
    path = shutil.which(name)
    if path is None:
        msg = f"{name} is not installed (.ci/run installs it)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def is_utf8(data: bytes) -> bool:
    """Python's strict decoder accepts ``data`` (what etl calls UTF-8)."""
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def compress(tool_args: list[str], data: bytes) -> bytes:
    """Compress ``data`` with a real command-line compressor, e.g. ["xz", "-c"]."""
    require_tool(tool_args[0])
    return subprocess.run(tool_args, input=data, stdout=subprocess.PIPE, check=True).stdout


@pytest.fixture
def comments_schema() -> Path:
    return SCHEMAS / "reddit_comments.toml"
