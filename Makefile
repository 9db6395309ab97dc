# toygres_pipelines: the two commands.
#
#   make dev    install everything, start the embedded stack and serve the Dagster UI
#   make test   install everything, then lint, format check, type check and the whole test suite
#               (what .ci/run calls); `make check` is the static part alone
#
# `make tools` is the shared install step; it is idempotent and takes about a second once done.
# Everything lands inside the checkout (.venv/, .tools/) except the apt packages.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
TOOLS := .tools
PY := $(VENV)/bin/python

# npm tools, pinned here (the .tools/ dir is not committed).
AZURITE_VERSION := 3.37.0
AZCOPY_VERSION := 10.32.2
NPM_PACKAGES := azurite@$(AZURITE_VERSION) @azure-tools/azcopy-linux@$(AZCOPY_VERSION)
AZCOPY := $(TOOLS)/node_modules/@azure-tools/azcopy-linux/dist/bin/azcopy_linux_amd64

# pytest workers: every worker starts its own PostgreSQL + Azurite (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST_ARGS ?=

SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# The pagila sample database (tests and the demo instance): TOYGRES_PAGILA_DIR when set, else the
# first of these holding pagila-schema.sql. Exported to the tests and the dev stack.
PAGILA_CANDIDATES := $(CURDIR)/../shared/fixtures/pagila /work/shared/fixtures/pagila
TOYGRES_PAGILA_DIR ?= $(firstword $(foreach d,$(PAGILA_CANDIDATES),$(if $(wildcard $(d)/pagila-schema.sql),$(abspath $(d)))))
export TOYGRES_PAGILA_DIR

.PHONY: help tools apt npm venv pagila check test dev clean

help:
	@echo "make dev    install everything, start CMS PostgreSQL + Azurite + demo instance + Dagster UI (http://127.0.0.1:3000)"
	@echo "make test   install everything, lint/format/type checks, run the test suite (both tiers)"
	@echo "make check  only ruff (lint + format check) and mypy"
	@echo "make tools  only the installs (apt packages, npm tools in $(TOOLS)/, Python venv in $(VENV)/)"
	@echo "make clean  remove $(VENV)/ and $(TOOLS)/ (the dev stack's state is reset with: rm -rf \$${TOYGRES_STATE_DIR:-/var/tmp/toygres-dev} .toygres)"

tools: apt npm venv

# apt: libsecret-1-0 (azcopy needs it), jq (the job scripts write and read manifest.json and the
# blob grant), age (client-side encryption of images: age, age-keygen), curl (the stall probe),
# PostgreSQL server binaries (initdb, pg_ctl, pg_dump, pg_restore, psql) unless some version is
# installed, python3-venv when venv cannot bootstrap pip, chromium (and a font) for the browser test,
# strace (a test counts the processes a backup job starts).
apt:
	@missing=""; \
	dpkg -s libsecret-1-0 >/dev/null 2>&1 || missing="$$missing libsecret-1-0"; \
	command -v jq >/dev/null 2>&1 || missing="$$missing jq"; \
	command -v age >/dev/null 2>&1 || missing="$$missing age"; \
	command -v curl >/dev/null 2>&1 || missing="$$missing curl"; \
	command -v strace >/dev/null 2>&1 || missing="$$missing strace"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	[ -x $(PY) ] || $(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	[ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	dpkg -s fonts-dejavu-core >/dev/null 2>&1 || missing="$$missing fonts-dejavu-core"; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  if [ -n "$(SUDO)" ] && ! command -v sudo >/dev/null; then \
	    echo "apt: need root or sudo to install$$missing" >&2; exit 1; \
	  fi; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# npm: Azurite and azcopy into $(TOOLS)/, reinstalled only when the pinned versions change.
npm: $(TOOLS)/.installed
	@chmod +x $(AZCOPY)

$(TOOLS)/.installed: FORCE
	@want="$(NPM_PACKAGES)"; \
	if [ "$$(cat $@ 2>/dev/null)" != "$$want" ] || [ ! -e $(AZCOPY) ] || [ ! -e $(TOOLS)/node_modules/.bin/azurite-blob ]; then \
	  command -v npm >/dev/null || { echo "npm: Node.js (npm) is required" >&2; exit 1; }; \
	  echo "npm: installing $$want into $(TOOLS)/"; \
	  mkdir -p $(TOOLS); \
	  npm install --prefix $(TOOLS) --no-audit --no-fund --save-exact --loglevel=error $$want; \
	  echo "$$want" > $@; \
	fi

# pip: the project (editable) with its test and local extras into $(VENV)/, redone when pyproject.toml changes.
venv:
	@want="$$(sha256sum pyproject.toml | cut -d' ' -f1) $$($(PYTHON) -c 'import sys; print(sys.version.split()[0])')"; \
	if [ "$$(cat $(VENV)/.installed 2>/dev/null)" != "$$want" ] || [ ! -x $(PY) ]; then \
	  echo "pip: installing the project into $(VENV)/"; \
	  [ -x $(PY) ] || $(PYTHON) -m venv $(VENV); \
	  $(PY) -m pip install -q --disable-pip-version-check -e '.[test,local]'; \
	  echo "$$want" > $(VENV)/.installed; \
	fi

# Static checks: ruff (lint + format) and mypy, configured in pyproject.toml.
check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# Both test tiers in one run: the pure tier (`pytest -m "not integration"`, no services) and the
# integration tier (real PostgreSQL, Azurite, azcopy, Dagster).
test: tools pagila check
	$(PY) -m pytest -n $(TEST_WORKERS) -q $(PYTEST_ARGS)

dev: tools pagila
	$(PY) -m toygres_pipelines.dev.devstack

pagila:
	@[ -f "$(TOYGRES_PAGILA_DIR)/pagila-schema.sql" ] && [ -f "$(TOYGRES_PAGILA_DIR)/pagila-data.sql" ] || { \
	  echo "pagila fixtures (pagila-schema.sql, pagila-data.sql) not found in '$(TOYGRES_PAGILA_DIR)'" \
	       "nor in $(PAGILA_CANDIDATES): set TOYGRES_PAGILA_DIR" >&2; exit 1; }

clean:
	rm -rf $(VENV) $(TOOLS)

FORCE:
