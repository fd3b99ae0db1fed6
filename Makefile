# `make run`  : set up .venv (if needed) and run the main job on the embedded defaults.
# `make test` : set up .venv (if needed) and run the whole test suite.
# `make test-fast` : the tests not marked slow (no real training runs), for a quick loop.
# Both run test files on 2 pytest-xdist workers (most of a real run is waiting on Ray,
# process starts and signals, so two share the 2 cores well); `make test XDIST=` runs them in one process.
# Extra arguments: make run ARGS="training.iterations=10 env=medium"; make test PYTEST_ARGS="-k naming".

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed
XDIST := -n 2 --dist loadfile

.PHONY: run test test-fast setup

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python run_eval.py $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)
