# leadpost — `make demo` runs the product end to end, `make test` runs the test suite.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-distributed bench lint format venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	rm -rf plugins/*.egg-info  # stale metadata beside the package makes Airflow load the plugin twice
	touch $(STAMP)

demo: venv
	$(BIN)/python scripts/demo.py

test: venv
	$(BIN)/python scripts/ensure_test_deps.py
	$(BIN)/ruff check plugins dags tests scripts
	$(BIN)/python -m pytest -q

test-distributed: venv
	$(BIN)/python -m pytest -q -m distributed tests/test_distributed.py

bench: venv
	$(BIN)/python scripts/bench.py

lint: venv
	$(BIN)/ruff check plugins dags tests scripts
	$(BIN)/ruff format --check plugins dags tests scripts

format: venv
	$(BIN)/ruff format plugins dags tests scripts

clean:
	rm -rf $(VENV) airflow_home .pytest_cache .ruff_cache screenshots bench_results
