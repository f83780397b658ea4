# Two entry points (README): `make repro` and `make test`. Both create or update the
# virtual environment first and are safe to re-run. `make test-fast` is the inner loop: the
# suite without the tests marked slow (pyproject.toml); `make test` (CI) runs them all.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.stcvq-installed
# dvc.yaml runs `python -m pipeline.<stage>`: the venv's python must come first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: env repro test test-fast drift clean-env

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first: the pinned CPU wheel; an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

env: $(STAMP)

repro: env
	$(BIN)/dvc repro

# lint first (pyproject.toml [tool.ruff]): a style fault fails fast, before the long test run
test: env
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

test-fast: env
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow"

# Per-metric drift of the working tree's metrics from git HEAD's (DRIFT_ARGS="--run" re-runs the
# pipeline first, "--against REV" names another commit); exits 1 past a tolerance.
drift: env
	$(BIN)/python -m tools.drift $(DRIFT_ARGS)

clean-env:
	rm -rf $(VENV)
