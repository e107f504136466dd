# govstack-deploy: `make up` deploys the whole stack to this machine,
# `make test` runs every test tier. Both create .venv first.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
INVENTORY ?= inventories/local.py
TEST_INVENTORY ?= tests/inventories/test_local.py
# The full tier's second stack: the drills run on it beside the other e2e modules.
DRILLS_INVENTORY ?= tests/inventories/test_local_drills.py
# The full tier's modules that run on the second stack: the slowest ones (the runbooks, with a
# second stack to move to; a crash at each step of a release and of a restore; blue/green under
# load; the compliance and quarantine restores), about half of the tier's time. Any other module
# runs on the first stack. Each half runs its modules in the alphabetical order the whole tier had.
DRILLS := tests/e2e/test_bluegreen.py tests/e2e/test_compliance.py tests/e2e/test_quarantine.py \
          tests/e2e/test_release_crash.py tests/e2e/test_restore_admin_key.py \
          tests/e2e/test_runbooks.py
# Tools installed in the venv (shellcheck, actionlint, govstack) are on PATH for the tests.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
PYTEST := $(BIN)/pytest -p no:cacheprovider

.PHONY: venv up check engine test test-quick test-images test-full test-full-main test-full-drills test-multihost lint bench clean-test golden

$(VENV)/.installed: pyproject.toml requirements-lock.txt requirements-dev-lock.txt app/pyproject.toml app/requirements.txt app/requirements-build.txt app/requirements-test.txt jobs/backup/pyproject.toml jobs/sbom/pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet -c requirements-dev-lock.txt --upgrade pip
	# Under the locks: the tests run what users install, not what PyPI published today.
	$(BIN)/pip install --quiet -c requirements-lock.txt -c requirements-dev-lock.txt -e '.[dev]'
	# The app's own lock, for its unit tests (--no-deps: see the file's header).
	$(BIN)/pip install --quiet --no-deps -r app/requirements-test.txt
	$(BIN)/pip install --quiet --no-deps -e app/
	# The backup job (its image's package), for its unit tests; its deps come with .[dev].
	$(BIN)/pip install --quiet --no-deps -e jobs/backup/
	# The SBOM tool (its image's package), for its unit tests; its deps (cyclonedx-bom) come with .[dev].
	$(BIN)/pip install --quiet --no-deps -e jobs/sbom/
	touch $@

venv: $(VENV)/.installed

## Deploy the whole stack to this machine (inventories/local.py).
up: venv
	$(BIN)/govstack up -i $(INVENTORY)

## testinfra checks against every host of INVENTORY.
check: venv
	$(BIN)/govstack check -i $(INVENTORY)

## Everything: quick tier, the offline images once, then the full tier's two
## stacks and the multi-host lane at the same time; stops after the first
## step with a failing tier (its exit code) and ends with each tier's wall
## time, its slowest tests, the whole run's wall time and each tier's first
## failure (tests/support/tiers.py).
test: engine
	$(BIN)/python -m tests.support.tiers --make "$(MAKE)" quick images full-main+full-drills+multihost

## The Docker engine alone (installed and started when missing): the quick
## tier runs promtool/amtool in the offline Prometheus image.
engine: venv
	$(BIN)/pyinfra -y $(TEST_INVENTORY) deploys/engine_only.py

## Seconds: lint, settings, tuning, rendering of both lanes.
test-quick: venv
	$(BIN)/ruff check govstack deploys inventories tests bench app jobs
	$(BIN)/lint-imports --no-cache
	$(PYTEST) -q -n 3 tests/unit

## The offline images, built once on this engine before the stacks that run
## them deploy at the same time (a no-op when they are current).
test-images: venv
	$(BIN)/pyinfra -y $(TEST_INVENTORY) tests/multihost/build_images.py

## Minutes: deploys the two test stacks (own roots, projects, ports and
## subnets) and runs the e2e modules and host checks split across them, at the
## same time. Each starts from nothing, as on a fresh machine (a stack left by
## an earlier run would keep serving the release it recorded, not this tree's
## app), and is removed when every test on it passed (a failed run leaves it).
test-full: venv
	$(BIN)/python -m tests.support.tiers --make "$(MAKE)" images full-main+full-drills

test-full-main: venv
	$(BIN)/python -m tests.e2e.teardown $(TEST_INVENTORY)
	GOVSTACK_INVENTORY=$(TEST_INVENTORY) GOVSTACK_DEPLOY=1 $(PYTEST) -v $(addprefix --ignore=,$(DRILLS)) tests/e2e tests/hosts
	$(BIN)/python -m tests.e2e.teardown $(TEST_INVENTORY)

test-full-drills: venv
	$(BIN)/python -m tests.e2e.teardown $(DRILLS_INVENTORY)
	GOVSTACK_INVENTORY=$(DRILLS_INVENTORY) GOVSTACK_DEPLOY=1 $(PYTEST) -v $(DRILLS)
	$(BIN)/python -m tests.e2e.teardown $(DRILLS_INVENTORY)

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

## Remove the test stacks (containers, networks, data) left by test-full.
clean-test: venv
	$(BIN)/python -m tests.e2e.teardown $(TEST_INVENTORY)
	$(BIN)/python -m tests.e2e.teardown $(DRILLS_INVENTORY)
