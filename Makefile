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

# Tests spread over the cores (pytest-xdist), two workers per core: a worker spends about
# half its time waiting on servers and subprocesses. On 2 cores the suite took 5 min 46 s
# with 2 workers, 4 min 07 s with 4 and 4 min 14 s with 6 (one run each, same tree).
# With 1063 tests, alternated on a 2-core machine busy with other work: 3 workers cost
# 366-387 CPU-s (one embedded Prefect API fewer, about 10 CPU-s each to start) but took
# 325-329 s; 4 workers cost 393-402 CPU-s and took 282-317 s. So two per core stays.
# At most 8: each worker starts its own Prefect API (about 300 MB). `make test
# TEST_WORKERS=0` runs everything in one process.
TEST_WORKERS ?= $(shell n=$$(( 2 * $$(nproc 2>/dev/null || echo 2) )); echo $$(( n < 8 ? n : 8 )))

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup

test-scale: $(STAMP)
	$(BIN)/python -m pytest -m scale

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

clean:
	rm -rf $(VENV) luma-output .pytest_cache ui-check
