# Every target sets itself up: a fresh machine needs only `make run` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SRC ?=

.PHONY: run demo bench-services test lint typecheck contracts unit soak bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

## run: cloud + storage node + local agent on ./var; protects a sample tree (or SRC=/some/dir)
run: $(STAMP)
	$(BIN)/rekindle allinone $(if $(SRC),--src "$(SRC)",)

## demo: the engine alone: back up, restore and verify byte for byte into ./var/repo
demo: $(STAMP)
	$(BIN)/rekindle demo $(if $(SRC),--src "$(SRC)",)

## test: lint, type-check, layer contracts and the whole test suite
test: lint typecheck contracts unit

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

contracts: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/pytest -q tests/unit/test_layers.py

unit: $(STAMP)
	$(BIN)/pytest -n 2 --dist loadfile -q

## soak: long crash-injection loops (hundreds of kill -9 runs)
soak: $(STAMP)
	REKINDLE_SOAK_KILLS=300 $(BIN)/pytest -q -p no:cacheprovider --timeout 7200 tests/e2e/test_crash.py

## bench: Rekindle vs restic vs Borg on the shared dataset (installs restic and Borg)
bench: $(STAMP)
	bash bench/run.sh

## bench-services: only the service benchmarks (agent via storage node; 1,000 polling agents)
bench-services: $(STAMP)
	$(BIN)/python bench/load.py --agents 1000
	test -d "$(or $(BENCH_DATA),/tmp/rekindle-bench/work/data/pristine)" || \
	  (echo "no dataset: run 'make bench' once, or set BENCH_DATA=DIR"; exit 1)
	$(BIN)/python bench/agent_vs_local.py "$(or $(BENCH_DATA),/tmp/rekindle-bench/work/data/pristine)"

clean:
	rm -rf var .pytest_cache .mypy_cache .ruff_cache
