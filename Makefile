# filterd — developer and operator entry points. `make help` lists them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install lint typecheck test kafka-fetch kafka-up kafka-down kafka-logs

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-16s %s\n", $$1, $$2}'

install: $(STAMP) ## create .venv and install filterd with its dev tools

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

lint: $(STAMP) ## ruff lint and format check
	$(BIN)/ruff check filterd tests benchmarks
	$(BIN)/ruff format --check filterd tests benchmarks

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

test: $(STAMP) ## lint, typecheck, then pytest against the broker (PYTEST_ARGS=... passes options)
	$(KAFKA_SH) up
	$(MAKE) --no-print-directory lint typecheck
	$(BIN)/pytest $(PYTEST_ARGS)
