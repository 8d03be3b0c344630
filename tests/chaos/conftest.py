"""The chaos suite: faults injected into real runs, results tallied in one table.

Every chaos test records what it did through the ``chaos`` fixture::

    chaos.record("SIGKILL etl run (DuckDB)", trials=20, faults=20,
                 expected=10_000, found=10_000, lost=0, doubled=0)

and the table is printed at the end of the pytest run. ``make test`` runs the suite
small; ``make chaos`` sets ``ETL_CHAOS_SCALE=full`` for more trials and bigger inputs.
A test must also assert ``lost == doubled == 0`` (or its own documented bound): the
table reports, the assertions decide.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

FULL = os.environ.get("ETL_CHAOS_SCALE", "small") == "full"


def scale(small, full):
    """``small`` in ``make test``, ``full`` in ``make chaos``."""
    return full if FULL else small


@dataclass
class Row:
    name: str
    trials: int
    faults: int
    expected: int
    found: int
    lost: int
    doubled: int


class Recorder:
    def __init__(self, rows: list[Row]):
        self.rows = rows

    def record(self, name: str, *, trials: int, faults: int, expected: int, found: int,
               lost: int = 0, doubled: int = 0) -> None:
        self.rows.append(Row(name, trials, faults, expected, found, lost, doubled))


_ROWS: list[Row] = []


@pytest.fixture
def chaos() -> Recorder:
    return Recorder(_ROWS)


def pytest_terminal_summary(terminalreporter):
    if not _ROWS:
        return
    w = max(len(r.name) for r in _ROWS)
    tr = terminalreporter
    tr.section(f"chaos ({'full' if FULL else 'small'} scale)")
    tr.write_line(f"{'fault':<{w}}  {'trials':>6} {'faults':>6} {'expected':>9} {'found':>9} "
                  f"{'lost':>5} {'doubled':>7}")
    for r in _ROWS:
        tr.write_line(f"{r.name:<{w}}  {r.trials:>6} {r.faults:>6} {r.expected:>9} "
                      f"{r.found:>9} {r.lost:>5} {r.doubled:>7}")
    tot = [sum(getattr(r, k) for r in _ROWS) for k in ("trials", "faults", "lost", "doubled")]
    tr.write_line(f"{'total':<{w}}  {tot[0]:>6} {tot[1]:>6} {'':>9} {'':>9} {tot[2]:>5} "
                  f"{tot[3]:>7}")
