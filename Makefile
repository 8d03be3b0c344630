# etl: compressed NDJSON archives and live feeds -> typed Parquet -> warehouse.
# `make` lists the targets; `make ingest` and `make test` are all a newcomer needs.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
ETL    := $(BIN)/etl
SHARDS ?= data/sample/*
SCHEMA ?= etl/schemas/reddit_comments.toml
OUT    ?= data/processed
DB     ?= duckdb:///data/warehouse.duckdb
SPOOL_LISTEN ?= 127.0.0.1:5170
SPOOL_DIR    ?= data/spool
FEED         ?= comments

.DEFAULT_GOAL := help
.PHONY: help setup ingest status spool notebooks chaos test test-quick bench bench-quick lint sample clean

## Show this help
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-zA-Z_-]+:/{if(doc){split($$1,t,":"); printf "  \033[36m%-12s\033[0m %s\n", t[1], doc}; doc=""}' $(MAKEFILE_LIST)

$(VENV)/.installed: pyproject.toml setup.py etl/_scan.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

## Create .venv with etl installed editable plus the dev extras
setup: $(VENV)/.installed
	@# byte-compile etl, as pip does at install: under PYTHONDONTWRITEBYTECODE=1 an editable
	@# checkout would compile its modules at every start, 15-40 ms a process (measured)
	@$(BIN)/python -m compileall -q etl

## Ingest the sample shards (or SHARDS='...') into $(OUT) and $(DB), then show a few answers
ingest: setup
	$(ETL) run $(SHARDS) --schema $(SCHEMA) --out $(OUT) --db $(DB) --report $(OUT)/_report.json; \
	  rc=$$?; [ $$rc -eq 0 ] || [ $$rc -eq 3 ] || exit $$rc; \
	  $(BIN)/python -m etl.answers --db $(DB); exit $$rc

## What is ingested and loaded so far
status: setup
	$(ETL) status $(SHARDS) --out $(OUT) --db $(DB)

## Live NDJSON on $(SPOOL_LISTEN) -> rolling shards in $(SPOOL_DIR)/$(FEED)/ (Ctrl-C drains and seals)
spool: setup
	$(ETL) spool --listen $(SPOOL_LISTEN) --out $(SPOOL_DIR) --feed $(FEED) --metrics 127.0.0.1:9170

## Open the analysis notebooks in Jupyter Lab (installs it into .venv on first use)
notebooks: setup
	$(BIN)/python -c "import jupyterlab" 2>/dev/null || $(BIN)/pip install --quiet jupyterlab
	$(BIN)/jupyter lab notebooks/

## Run the whole test suite (slow end-to-end tests included)
test: setup
	$(BIN)/pytest -q

## Crash, fault and hostile-input suite at full scale; prints the table of faults and rows
chaos: setup
	ETL_CHAOS_SCALE=full $(BIN)/pytest -q tests/chaos

## Run only the quick tests
test-quick: setup
	$(BIN)/pytest -q -m "not slow"

## Benchmarks (10 to 16 min; the first run builds 1.1 GB of data in bench/data/); writes bench/RESULTS.md
bench: setup
	bash .ci/tools  # the compressors, ncat, socat and PostgreSQL it compares against (apt, as root)
	$(BIN)/python -c "import polars" 2>/dev/null || $(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py

## Quick benchmark (< 2 min): etl's zst ratio to DuckDB and xz ratio to the decompression limit
bench-quick: setup
	bash .ci/tools
	$(BIN)/python -c "import polars" 2>/dev/null || $(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/python bench/run.py --quick

## Lint with ruff
lint: setup
	$(BIN)/ruff check etl tests

## Regenerate the committed sample shards in data/sample/ (one month per codec)
sample: setup
	rm -f data/sample/RC_*
	$(ETL) sample --out data/sample --lines 1000 --codec zst  --bad-rate 0.01 --seed 1 --name RC_2015-01 --start 2015-01-01 --days 31
	$(ETL) sample --out data/sample --lines 1000 --codec xz   --bad-rate 0.01 --seed 2 --name RC_2015-02 --start 2015-02-01 --days 28
	$(ETL) sample --out data/sample --lines 1000 --codec gz   --bad-rate 0.01 --seed 3 --name RC_2015-03 --start 2015-03-01 --days 31
	$(ETL) sample --out data/sample --lines 1000 --codec bz2  --bad-rate 0.01 --seed 4 --name RC_2015-04 --start 2015-04-01 --days 30
	$(ETL) sample --out data/sample --lines 300  --codec none --bad-rate 0.01 --seed 5 --name RC_2015-05 --start 2015-05-01 --days 31

## Remove the venv and generated data (keeps data/sample/)
clean:
	rm -rf $(VENV) $(OUT) data/warehouse.duckdb .pytest_cache
