# govstack-deploy: `make up` deploys the whole stack to this machine,
# `make test` runs every test tier. Both create .venv first.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
INVENTORY ?= inventories/local.py
TEST_INVENTORY ?= tests/inventories/test_local.py
# Tools installed in the venv (shellcheck, actionlint, govstack) are on PATH for the tests.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST := $(BIN)/pytest -p no:cacheprovider

.PHONY: venv up check engine test test-quick test-full test-multihost lint bench clean-test golden

$(VENV)/.installed: pyproject.toml app/pyproject.toml app/requirements.txt app/requirements-build.txt app/requirements-test.txt jobs/backup/pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	# The app's own lock, for its unit tests (--no-deps: see the file's header).
	$(BIN)/pip install --quiet --no-deps -r app/requirements-test.txt
	$(BIN)/pip install --quiet --no-deps -e app/
	# The backup job (its image's package), for its unit tests; its deps come with .[dev].
	$(BIN)/pip install --quiet --no-deps -e jobs/backup/
	touch $@

venv: $(VENV)/.installed

## Deploy the whole stack to this machine (inventories/local.py).
up: venv
	$(BIN)/govstack up -i $(INVENTORY)

## testinfra checks against every host of INVENTORY.
check: venv
	$(BIN)/govstack check -i $(INVENTORY)

## Everything: quick tier, then deploy + host checks + drills, then the
## multi-host lane; stops at the first failing tier (its exit code) and ends
## with each tier's wall time and slowest tests (tests/support/tiers.py).
test: engine
	$(BIN)/python -m tests.support.tiers --make "$(MAKE)" quick full multihost

## The Docker engine alone (installed and started when missing): the quick
## tier runs promtool/amtool in the offline Prometheus image.
engine: venv
	$(BIN)/pyinfra -y $(TEST_INVENTORY) deploys/engine_only.py

## Seconds: lint, settings, tuning, rendering of both lanes.
test-quick: venv
	$(BIN)/ruff check govstack deploys inventories tests bench app jobs
	$(BIN)/lint-imports --no-cache
	$(PYTEST) -q tests/unit

## Minutes: deploys the test stack (own root, project and ports), checks it.
## It starts from nothing, as on a fresh machine (a stack left by an earlier
## run would keep serving the release it recorded, not this tree's app), and
## removes the stack when every test passed (a failed run leaves it to inspect).
test-full: venv
	$(BIN)/python -m tests.e2e.teardown $(TEST_INVENTORY)
	GOVSTACK_INVENTORY=$(TEST_INVENTORY) GOVSTACK_DEPLOY=1 $(PYTEST) -v tests/e2e tests/hosts
	$(BIN)/python -m tests.e2e.teardown $(TEST_INVENTORY)

## Issue 7's multi-host lane: 4 container hosts over SSH, the split inventory
## deployed and proved, then its secrets (see tests/multihost/test_multihost.py, test_secrets.py).
test-multihost: venv
	$(PYTEST) -v --durations=0 tests/multihost

## Regenerate tests/unit/golden/ (every host's rendered files, both lanes):
## only in a commit that means to change what hosts get.
golden: venv
	$(BIN)/python -m tests.unit.golden

lint: venv
	$(BIN)/ruff check govstack deploys inventories tests bench app jobs
	$(BIN)/lint-imports --no-cache

bench: venv
	$(BIN)/python bench/deploy_times.py

## Remove the test stack (containers, networks, data) left by test-full.
clean-test: venv
	$(BIN)/python -m tests.e2e.teardown $(TEST_INVENTORY)
