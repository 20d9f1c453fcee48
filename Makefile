# Subscription OMS: developer entry points. Needs only Python 3.11+ and make.
#
#   make dev          run the whole local stack (Temporal + UI, localstripe, worker, API)
#   make test         run the whole test suite, as CI does (PYTEST_ARGS="-k foo -x" to narrow it)
#   make test-fast    the quick tiers only: tests/unit, tests/activities, tests/intake, tests/notify
#   make lint         ruff check, ruff format --check, mypy
#   make install      create .venv and install the project with its dev extras
#   make clean-state  forget the local stack's data (.oms/)
#
# The virtualenv is created once; the project is reinstalled only when pyproject.toml is newer
# than the stamp file $(STAMP).

PYTHON ?= python3
VENV ?= .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STATE_DIR := .oms
PYTEST_ARGS ?=

.DEFAULT_GOAL := help
FAST_TESTS := tests/unit tests/activities tests/intake tests/notify

.PHONY: help install dev test test-fast lint clean-state

help:
	@echo "make dev          run the local stack (Temporal + Web UI, localstripe, worker, API)"
	@echo "make test         run all the tests, as CI does (PYTEST_ARGS='...' passes options to pytest)"
	@echo "make test-fast    the quick tiers only ($(FAST_TESTS)), no slow tests"
	@echo "make lint         ruff check + ruff format --check + mypy"
	@echo "make install      create $(VENV) and install the project (.[dev])"
	@echo "make clean-state  remove $(STATE_DIR)/ (dev server, localstripe and SQLite data)"

install: $(STAMP)

$(VPY):
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), sys.version' || \
		{ echo "error: $(PYTHON) must be Python 3.11 or newer (set PYTHON=...)" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV) || { \
		echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; \
		rm -rf $(VENV); exit 1; }

$(STAMP): pyproject.toml | $(VPY)
	$(VENV)/bin/pip install -e '.[dev]'
	@touch $(STAMP)

dev: $(STAMP)
	$(VPY) -m starter.devstack

test: $(STAMP)
	$(VPY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(VPY) -m pytest -q -m 'not slow' $(FAST_TESTS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean-state:
	rm -rf $(STATE_DIR)
