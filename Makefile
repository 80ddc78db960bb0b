# The README's commands. Everything installs itself: the venv from PyPI, the broker jars from Maven Central,
# the local S3 server (versitygw) from the Go module proxy.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NATIVE_STAMP := $(VENV)/.native
VERSITYGW_STAMP := $(VENV)/.versitygw
export DAGSTER_HOME := $(CURDIR)/.dagster

.PHONY: help install demo test test-fast lint bench bench-multihost zombie50 clean kafka-start kafka-stop kafka-start-secure kafka-stop-secure browser screenshots chaos soak

help:
	@echo "make demo   - broker, topics, producer and the Dagster UI (http://localhost:3000); Ctrl-C stops all"
	@echo "make test   - install and run every test against a real local Kafka broker"
	@echo "make bench  - throughput, memory, long-history and compaction figures (JSON)"
	@echo "make lint   - ruff"
	@echo "make chaos  - seeded random-kill loop, CHAOS_ITERATIONS (50) CHAOS_SEED (7); JSON summary"
	@echo "make soak   - dagster-daemon + producer at SOAK_RATE (5000/s) for SOAK_SECONDS (600); JSON"
	@echo "make zombie50 - 50 frozen-worker-host trials (PostgreSQL, redis, dagster-celery); must be 50/50"
	@echo "make bench-multihost - one worker host against two on a 1M-event, 12-partition backlog (JSON)"
	@echo "make screenshots - refresh docs/images/ from the browser test (headless Chromium)"
	@echo "make clean  - remove the venv, local broker and S3 data, the lake and .dagster/"

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The optional native parse decoder (Rust): built when cargo is found, else a warning.
$(NATIVE_STAMP): $(STAMP) native/Cargo.toml native/Cargo.lock native/pyproject.toml native/src/lib.rs native/src/drain.rs
	bash scripts/build-native.sh $(BIN)/python
	touch $(NATIVE_STAMP)

# The local S3 server for the lake (versitygw, Go) into .local/bin: built when go is found, else a
# warning (the S3 tests then skip). s3server.py pins the version, so editing it rebuilds.
$(VERSITYGW_STAMP): $(STAMP) pipeline_project/lake/s3server.py
	@if command -v go >/dev/null 2>&1; then \
	  $(BIN)/pipeline-project s3 build && touch $(VERSITYGW_STAMP); \
	else \
	  echo "warning: go not found: no local S3 server (the S3 tests are skipped); install Go 1.25+ and run make install again"; \
	fi

install: $(STAMP) $(NATIVE_STAMP) $(VERSITYGW_STAMP)

demo: install
	bash scripts/demo.sh

test: install browser
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

# The UI test drives Debian's Chromium (no browser download): install it when missing, as root.
# If it truly cannot be installed, the UI test is skipped with that reason; everything else runs.
CHROMIUM := /usr/bin/chromium
browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's chromium for the UI test"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	      || echo "warning: could not install chromium: the UI test will be skipped"; \
	  else echo "warning: $(CHROMIUM) missing and not root: the UI test will be skipped"; fi; }

screenshots: install browser
	UI_SCREENSHOTS_DIR=docs/images $(BIN)/pytest pipeline_project_tests/ui -p no:cacheprovider

lint: install
	$(BIN)/ruff check pipeline_project pipeline_project_tests benchmarks

bench: install
	$(BIN)/python -m benchmarks.bench
	$(BIN)/python -m benchmarks.lake_history
	$(BIN)/python -m benchmarks.compaction
	$(BIN)/python -m benchmarks.backlog

# Beyond one machine (docs/deploy.md): 50 zombie trials across worker hosts (make test runs 3), and
# one worker host against two on a 1M-event backlog. Both start Debian's PostgreSQL and redis-server.
zombie50: install
	ZOMBIE_TRIALS=50 $(BIN)/pytest pipeline_project_tests/multihost/test_zombie_hosts.py -s --timeout 5400

bench-multihost: install
	$(BIN)/python -m benchmarks.multihost

# Not part of `make test`: minutes of random SIGKILLs, then the oracle (pipeline_project_tests/faults).
chaos: install
	$(BIN)/python -m pipeline_project_tests.faults.chaos

soak: install
	$(BIN)/python -m pipeline_project_tests.faults.soak

kafka-start: install
	$(BIN)/pipeline-project kafka start

kafka-stop: install
	$(BIN)/pipeline-project kafka stop

# SASL_SSL + SCRAM + ACLs (docs/operations.md#secured-kafka); prints the PIPELINE_KAFKA_CONFIG to use.
kafka-start-secure: install
	$(BIN)/pipeline-project kafka start --secure

kafka-stop-secure: install
	$(BIN)/pipeline-project kafka stop --secure

clean:
	-test -x $(BIN)/pipeline-project && $(BIN)/pipeline-project kafka stop
	-test -x $(BIN)/pipeline-project && $(BIN)/pipeline-project s3 stop
	-test -x $(BIN)/pipeline-project && $(BIN)/pipeline-project kafka stop --secure
	rm -rf $(VENV) .local data .dagster .pytest_cache .ruff_cache *.egg-info native/target
