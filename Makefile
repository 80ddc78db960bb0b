# The README's commands. Everything installs itself: the venv from PyPI, the broker jars from Maven Central.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export DAGSTER_HOME := $(CURDIR)/.dagster

.PHONY: help install demo test test-fast lint bench clean kafka-start kafka-stop

help:
	@echo "make demo   - broker, topics, producer and the Dagster UI (http://localhost:3000); Ctrl-C stops all"
	@echo "make test   - install and run every test against a real local Kafka broker"
	@echo "make bench  - throughput and memory figures (JSON)"
	@echo "make lint   - ruff"
	@echo "make clean  - remove the venv, local broker data, the lake and .dagster/"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: install
	bash scripts/demo.sh

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check pipeline_project pipeline_project_tests

bench: install
	$(BIN)/python -m pipeline_project.bench

kafka-start: install
	$(BIN)/pipeline-project kafka start

kafka-stop: install
	$(BIN)/pipeline-project kafka stop

clean:
	-test -x $(BIN)/pipeline-project && $(BIN)/pipeline-project kafka stop
	rm -rf $(VENV) .local data .dagster .pytest_cache .ruff_cache *.egg-info
