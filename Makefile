# The two commands the README opens with. Each creates .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: demo test test-scale lint bench clean ui-check

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/luma-prefect demo

# Tests spread over the cores (pytest-xdist), two workers per core: a worker spends much of
# its time waiting on servers and subprocesses. On 2 cores the suite took 5 min 46 s
# with 2 workers, 4 min 07 s with 4 and 4 min 14 s with 6 (one run each, same tree).
# The workers share one Prefect server on PostgreSQL when it is installed (tests/conftest.py);
# without it each starts Prefect's SQLite harness (about 300 MB), hence at most 8.
# `make test TEST_WORKERS=0` runs everything in one process.
TEST_WORKERS ?= $(shell n=$$(( 2 * $$(nproc 2>/dev/null || echo 2) )); echo $$(( n < 8 ? n : 8 )))

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

# The scale-out test starts servers of its own: no session server beside it.
test-scale: $(STAMP)
	LUMA_TESTS_PREFECT_SERVER=harness $(BIN)/python -m pytest -m scale

lint: $(STAMP)
	$(BIN)/ruff check luma_prefect tests flows deployments bench
	$(BIN)/ruff format --check luma_prefect tests flows deployments bench
	$(BIN)/mypy luma_prefect

# Not part of `make test`: the Prefect UI in headless Chromium (Debian's, installed with
# apt-get when missing), screenshots in ui-check/.
ui-check: $(STAMP)
	$(BIN)/python -m tests.e2e.ui_check

bench: $(STAMP)
	$(BIN)/python bench/bench_wait.py
	$(BIN)/python bench/bench_download.py
	$(BIN)/python bench/bench_scale.py
	$(BIN)/python bench/bench_deliveries.py

clean:
	rm -rf $(VENV) luma-output .pytest_cache ui-check
