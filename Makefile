# `make run`  : set up .venv (if needed) and run the main job on the embedded defaults.
# `make test` : set up .venv (if needed) and run the whole test suite.
# `make test-fast` : the tests not marked slow (no real training runs), for a quick loop.
# Both run test files on 2 pytest-xdist workers, one per core (a third does not help: the suite's
# Ray clusters keep both cores busy, and with three it took 29:52 against 28:05 with two on
# 2026-12-07); `make test XDIST=` runs them in one process.
# Extra arguments: make run ARGS="training.iterations=10 env=medium"; make test PYTEST_ARGS="-k naming".

#
# Python 3.11 or 3.12: python3.11 if one runs, else python3.12, each from PATH or else from pyenv's
# versions (a pyenv shim is on PATH for every installed version but fails for those not selected,
# so a candidate counts only if it really runs). Another one in its own venv:
# make test-fast PYTHON=/path/to/python3.12 VENV=.venv-3.12 (.ci/run does that).
# `make -s find-python VERSION=3.12` prints the Python 3.12 that would be picked, or nothing.
PYENV_ROOT ?= $(shell pyenv root 2>/dev/null)
first_that_runs = $(shell for p in $(1); do "$$p" -c 'import sys' >/dev/null 2>&1 && { command -v "$$p"; break; }; done)
find_python = $(call first_that_runs,python$(1) $(wildcard $(PYENV_ROOT)/versions/$(1)*/bin/python$(1)))
NO_PYTHON := No Python 3.11 or 3.12 runs here: install one (on Ubuntu 24.04: apt-get install python3.12-venv) or name one with make PYTHON=/path/to/python3.12
PYTHON ?= $(or $(call find_python,3.11),$(call find_python,3.12),$(error $(NO_PYTHON)))
PYTHON := $(PYTHON)
PRINT_VERSION := import sys; print(*sys.version_info[:2], sep=".")
PY_VERSION := $(shell "$(PYTHON)" -c '$(PRINT_VERSION)' 2>/dev/null)
ifeq ($(filter 3.11 3.12,$(PY_VERSION)),)
$(error PYTHON=$(PYTHON) is $(if $(PY_VERSION),Python $(PY_VERSION),not a Python that runs): this project needs Python 3.11 or 3.12)
endif
VENV := .venv
# One venv per interpreter: the stamp names the Python version, and a venv made by another
# version is made anew (--clear) rather than reused.
STAMP := $(VENV)/.installed-$(PY_VERSION)
VENV_VERSION = $(shell "$(VENV)/bin/python" -c '$(PRINT_VERSION)' 2>/dev/null)
XDIST := -n 2 --dist loadfile

.PHONY: run test test-fast setup find-python

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(if $(filter $(PY_VERSION),$(VENV_VERSION)),,--clear )$(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python run_eval.py $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

find-python:
	@echo "$(call find_python,$(VERSION))"
