# The two commands the README opens with. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test test-scale lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/luma-prefect demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-scale: $(STAMP)
	$(BIN)/python -m pytest -m scale

lint: $(STAMP)
	$(BIN)/ruff check luma_prefect tests flows deployments bench
	$(BIN)/ruff format --check luma_prefect tests flows deployments bench
	$(BIN)/mypy luma_prefect

bench: $(STAMP)
	$(BIN)/python bench/bench_wait.py
	$(BIN)/python bench/bench_download.py
	$(BIN)/python bench/bench_scale.py

clean:
	rm -rf $(VENV) luma-output .pytest_cache
