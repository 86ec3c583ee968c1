# The two commands: `make run` and `make test`. Both install what is missing and nothing more:
# each install step leaves a stamp keyed to the files it read, so a second run is instant.

PYTHON ?= $(shell command -v python3.11 || command -v python3.12 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
BACKEND_VENV ?= .venv-backend
export BACKEND_VENV

.PHONY: run test lint format install install-test backend browser postgres bench docs clean help
.DEFAULT_GOAL := help

help:
	@echo "make run    install what is missing, then start the gateway on 127.0.0.1:8080"
	@echo "make test   install what is missing (test tools included), then run the whole suite"
	@echo "make lint   ruff (lint + format check) and mypy"
	@echo "make bench  the benchmarks: stub upstream direct vs through the gateway; local vs a node"
	@echo "make docs   build the documentation site (mkdocs --strict) into site/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed-run: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@ $(VENV)/.installed-run

$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[docs]'
	@touch $@

install: $(VENV)/.installed-run
install-test: $(VENV)/.installed-test

backend:
	@bash scripts/install-backend.sh

browser: install-test
	@bash scripts/install-browser.sh

# The PostgreSQL server binaries the database tests start a private cluster with.
postgres:
	@bash scripts/install-postgres.sh

run: install backend
	$(BIN)/mlx-manager serve

test: install-test backend browser postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: install-test
	$(BIN)/python -m tests.bench.proxy_bench; a=$$?; $(BIN)/python -m tests.bench.node_bench; b=$$?; \
	test $$a -eq 0 -a $$b -eq 0

lint: install-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy gateway admin tests

format: install-test
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) $(BACKEND_VENV) .pytest_cache .mypy_cache .ruff_cache
