# filterd — developer and operator entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The per-event modules are compiled with mypyc (setup.py) into .so files beside their
# sources; NATIVE is rebuilt whenever one of them changes, so no target runs a stale build.
# FILTERD__PURE_PYTHON=1 builds nothing and runs them as plain Python (slower).
HOT_PATH := $(if $(filter-out 0,$(FILTERD__PURE_PYTHON)),interpreted,compiled)
NATIVE := $(VENV)/.native-$(HOT_PATH)
NATIVE_SRC := setup.py filterd/native.py filterd/_table.c \
	$(shell sed -n 's/^ *"\(filterd\/[a-z_/]*\.py\)",$$/\1/p' filterd/native.py)

.DEFAULT_GOAL := help
.PHONY: help install native lint typecheck unit test demo kafka-fetch kafka-up kafka-down kafka-logs
.PHONY: kafka-up-secure kafka-down-secure
.PHONY: bench bench-quick bench-sweep bench-decide bench-deps bench-snapshot bench-signing bench-limits
.PHONY: bench-changes bench-compact
.PHONY: faults faults-quick fuzz image image-test

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

install: $(NATIVE) ## create .venv, install filterd with its dev tools, compile the hot path

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	FILTERD__PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(NATIVE): $(NATIVE_SRC) | $(STAMP)
	rm -f $(VENV)/.native-*
	find filterd -name '*.so' -delete
	$(BIN)/python setup.py --quiet build_ext --inplace
	@# setuptools keeps the mtime of an unchanged per-module stub: mark the build as now.
	find filterd -name '*.so' -exec touch {} +
	$(BIN)/python -m filterd.native
	touch $(NATIVE)

native: $(NATIVE) ## (re)compile the per-event modules after editing them (make test does it too)

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check filterd tests benchmarks deploy setup.py
	$(BIN)/ruff format --check filterd tests benchmarks deploy setup.py

typecheck: $(STAMP) ## mypy strict on filterd/
	$(BIN)/mypy

# The local broker (deploy/local/kafka.sh): KAFKA_PORT picks another instance, and with
# KAFKA_BOOTSTRAP=host:port set an existing broker is used and nothing is started or stopped.
KAFKA_SH := deploy/local/kafka.sh
PYTEST_ARGS ?=

kafka-fetch: ## download the Kafka jars from Maven Central (once, cached)
	$(KAFKA_SH) fetch

kafka-up: ## start the local Kafka broker on 127.0.0.1:$KAFKA_PORT (default 9092)
	$(KAFKA_SH) up

kafka-down: ## stop the local Kafka broker
	$(KAFKA_SH) down

kafka-logs: ## follow the local Kafka broker log
	$(KAFKA_SH) logs

kafka-up-secure: ## start the secured broker (SASL_SSL, SCRAM, ACLs) on 127.0.0.1:9093 (docs/security.md)
	$(KAFKA_SH) up-secure

kafka-down-secure: ## stop the secured broker
	$(KAFKA_SH) down-secure

# Tests that reach the broker are marked `kafka` by tests/conftest.py; without them no broker is
# started and no Java runs.
unit: $(NATIVE) ## every test that needs no broker and no Java (~2 min; PYTEST_ARGS=... passes options)
	FILTERD__EXPECT_HOT_PATH=$(HOT_PATH) \
		$(BIN)/pytest -m "not kafka" $(PYTEST_ARGS)

test: $(NATIVE) ## lint, typecheck, then pytest against the broker (PYTEST_ARGS=... passes options)
	$(KAFKA_SH) up
	$(MAKE) --no-print-directory lint typecheck
	FILTERD__EXPECT_HOT_PATH=$(HOT_PATH) \
		$(BIN)/pytest $(PYTEST_ARGS)

# The container image (docs/deploy.md): podman (through deploy/docker/podman.sh, this project's
# machines) or docker; the base images are built from Debian's packages when no registry answers.
IMAGE_SH := deploy/docker/image.sh

image: ## build the container image localhost/filterd:VERSION (podman or docker)
	$(IMAGE_SH) build

# The test builds the image first (once, cached), as `make test` does.
image-test: $(NATIVE) ## build the image, route traffic through it on the local broker, check it
	$(KAFKA_SH) up
	$(BIN)/pytest tests/deploy/test_image.py $(PYTEST_ARGS)
	@echo "$$($(IMAGE_SH) name): $$($(IMAGE_SH) size)"

demo: $(NATIVE) ## the main job: local broker, sample snapshot, a traffic burst through filterd, a routing table
	$(KAFKA_SH) up
	$(BIN)/python deploy/local/demo.py $(DEMO_ARGS)

# Benchmarks (benchmarks/README.md). They need the bench extra: Quix Streams (the peer),
# matplotlib (charts), cramjam (lz4/zstd for the sweep). BENCH_ARGS=... passes options.
BENCH_ARGS ?=

BENCH_STAMP := $(VENV)/.bench

bench-deps: $(BENCH_STAMP) $(NATIVE)

$(BENCH_STAMP): pyproject.toml | $(STAMP)
	FILTERD__PURE_PYTHON=1 $(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: bench-deps ## end-to-end: filterd vs raw pipe, naive, Quix and Kafka Streams peers, filterd with its features on, warm (full, ~40-60 min)
	$(KAFKA_SH) up
	$(BIN)/python -m benchmarks.e2e $(BENCH_ARGS)

bench-quick: bench-deps ## end-to-end, quick (100k events, 500k warm-up, ~10 minutes)
	$(KAFKA_SH) up
	$(BIN)/python -m benchmarks.e2e --quick $(BENCH_ARGS)

bench-sweep: bench-deps ## each tuning knob's effect on throughput and p99 (~15 min)
	$(KAFKA_SH) up
	$(BIN)/python -m benchmarks.sweep $(BENCH_ARGS)

bench-changes: $(NATIVE) ## live changes: throughput with 1,000 changes/s + 200 replies/s vs without, change-to-effect delay (~5 min)
	$(KAFKA_SH) up
	$(BIN)/python -m benchmarks.changes_bench $(BENCH_ARGS)

bench-decide: $(NATIVE) ## micro-benchmark: decision path per event vs orjson.loads alone
	$(BIN)/python -m benchmarks.decide_bench $(BENCH_ARGS)

bench-snapshot: $(NATIVE) ## consent store: build rate, memory, load, loop stall, lookups at 1e6/1e7 (~10 min)
	$(BIN)/python -m benchmarks.snapshot_bench $(BENCH_ARGS)

bench-limits: bench-deps ## step 4 cost: batch step with limits on vs off, bytes per counter at 1e7, restore of 1e6 (~3 min)
	$(BIN)/python -m benchmarks.limits_bench $(BENCH_ARGS)

bench-compact: $(NATIVE) ## snapshot compact: 1e7 consents with 1e6 pending changes (~3 min)
	$(BIN)/python -m benchmarks.compact_bench $(BENCH_ARGS)

bench-signing: $(NATIVE) ## snapshot signatures: verify cost and loop stall with and without public_key (~1 min)
	$(BIN)/python -m benchmarks.signing_bench $(BENCH_ARGS)

# Fault injection (docs/reliability.md): a private broker on FAULTS_KAFKA_PORT (default 19392)
# that the suite kills and restarts; the shared broker is never touched. FAULTS_ARGS=... passes
# options (--modes, --events, --seed, --keep).
FAULTS_ARGS ?=
FUZZ_SECONDS ?= 300
FUZZ_ARGS ?=

faults: $(NATIVE) ## fault injection, full: >=200k events, 5+ kills, 2+ broker restarts per mode (~12 min)
	$(BIN)/python -m tests.chaos.faults $(FAULTS_ARGS)

faults-quick: $(NATIVE) ## fault injection, quick (the CI size, ~5 min): benchmarks/results/faults-quick.json
	$(BIN)/python -m tests.chaos.faults --quick $(FAULTS_ARGS)

fuzz: $(NATIVE) ## mutation fuzzing of the decision path for FUZZ_SECONDS (atheris when it installs)
	$(BIN)/pip install --quiet -e '.[dev,fuzz]' || echo "atheris does not install here: builtin mutator"
	$(BIN)/python -m tests.chaos.fuzz_mutation --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)
