"""Every notebook runs top to bottom against a warehouse built as `make ingest` builds it,
and draws at least one figure."""

from __future__ import annotations

import subprocess

import nbformat
import pytest
from nbclient import NotebookClient

from etl.sample import generate
from tests.test_pipeline import COMMENTS, ROOT, run_etl

NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]-*.ipynb"))


@pytest.fixture(scope="module")
def warehouses(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nb")
    shards = sorted(str(p) for p in (ROOT / "data" / "sample").iterdir())
    run_etl("run", *shards, "--schema", COMMENTS, "--out", tmp / "processed",
            "--db", f"duckdb:///{tmp / 'warehouse.duckdb'}", "--scheduler", "synchronous",
            check=0)
    # spool windows as the spooler names them, a few hours after the comments were made
    for hour in range(3):
        day = tmp / "spool" / "comments" / "2015" / "01" / "01"
        generate(day, lines=400, codec="zst", seed=hour,
                 name=f"comments-20150101T0{hour + 2}0000Z-0", start="2015-01-01", days=1)
    for p in (tmp / "spool").rglob("*.zst"):
        p.rename(p.with_name(p.name.replace(".zst", ".ndjson.zst")))
    run_etl("run", tmp / "spool" / "comments", "--schema", COMMENTS,
            "--out", tmp / "live" / "processed", "--db", f"duckdb:///{tmp / 'live' / 'w.duckdb'}",
            "--scheduler", "synchronous", check=0)
    return tmp


def test_notebooks_are_stored_without_outputs():
    assert {p.name for p in NOTEBOOKS} >= {"01-overview.ipynb", "02-live-feed.ipynb"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), path.name


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_draws(path, warehouses, monkeypatch):
    live = path.name.startswith("02")
    monkeypatch.setenv("ETL_WAREHOUSE", str(warehouses / ("live/w.duckdb" if live
                                                          else "warehouse.duckdb")))
    monkeypatch.setenv("ETL_PROCESSED", str(warehouses / ("live/processed" if live
                                                          else "processed")))
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    figures = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
               if "image/png" in o.get("data", {})]
    assert figures, f"{path.name} drew no figure"


def test_make_notebooks_target_exists():
    out = subprocess.run(["make", "-n", "notebooks"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and "jupyter" in out.stdout
