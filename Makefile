# gridedge stack: one Makefile for set-up, tests, demo, benchmarks and firmware.
#
#   make demo    run the whole system locally
#   make test    run every test (what CI runs), the edge's also on the unit's libraries
#   make bench   run every benchmark
#   make help    list the other targets
#
# Both 'demo' and 'test' set up a fresh Debian 12 machine on their own: Debian packages
# (tools/apt-ensure, quiet when already there), then the virtualenv in .venv with the
# versions pinned in requirements/constraints.txt.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PGCLUSTER := $(PY) tools/pgcluster.py
APPS := wire radio edge cloud sim

# Debian packages the Python side needs; firmware and QEMU targets add theirs in mk/*.mk.
APT_PACKAGES := python3-venv python3-dev gcc libpq-dev postgresql-15 postgresql-client-15
# Operations (tests/deploy, tests/system/test_scale_out.py, bench-ingest): the load balancer and
# systemd-analyze, as on a cloud server.
APT_PACKAGES += haproxy systemd
# Debian's browser, driven headless by Playwright in the web page's tests (tests/web).
APT_PACKAGES += chromium

include mk/*.mk

.PHONY: help setup venv test test-fast demo bench lint lock clean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: ## install Debian packages and the virtualenv
	@tools/apt-ensure $(APT_PACKAGES)
	@$(MAKE) --no-print-directory venv

venv: $(VENV)/.stamp

$(VENV)/.stamp: requirements/constraints.txt requirements/dev.txt $(foreach a,$(APPS),apps/$(a)/pyproject.toml)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip
	@$(PY) -m pip install -q -c requirements/constraints.txt -r requirements/dev.txt \
		$(foreach a,$(APPS),-e apps/$(a))
	@touch $@
	@echo "venv: $(VENV) ready"

# The OTA fleet test (marker "fleet", ~18 min of emulation) runs in a pytest session of its
# own beside the others (tools/suite.py): on 2 cores the suite then takes about as long as it.
test: setup lint $(TEST_PREREQUISITES) ## lint, then run the whole test suite against a throwaway PostgreSQL
	$(PGCLUSTER) run -- $(PY) tools/suite.py $(PYTEST_ARGS)

test-fast: setup ## run the tests that need no firmware image
	$(PGCLUSTER) run -- $(PY) -m pytest -m "not qemu" $(PYTEST_ARGS)

lint: venv ## ruff and mypy over the apps
	$(VENV)/bin/ruff check apps tests bench tools
	$(VENV)/bin/mypy

lock: ## re-resolve requirements/constraints.txt from the newest releases
	rm -rf .lockvenv && $(PYTHON) -m venv .lockvenv
	.lockvenv/bin/pip install -q -r requirements/dev.txt $(foreach a,$(APPS),-e apps/$(a))
	{ echo "# Pinned versions for the development virtualenv (.venv). Regenerate with 'make lock'."; \
	  .lockvenv/bin/pip freeze --exclude-editable; } > requirements/constraints.txt
	rm -rf .lockvenv

clean: ## remove the virtualenv, demo state and build output
	rm -rf $(VENV) $(UNIT_VENV) var output .pytest_cache .hypothesis
