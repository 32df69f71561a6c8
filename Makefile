# Aegis for Python. `make run` starts the daemon, `make test` runs the tests; both install what they need.
# `make help` lists the targets.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# (the build backend's note on editable installs of a flat layout is not a problem: silenced)
PIP    := PYTHONWARNINGS="ignore:Editable installation" $(PY) -m pip install --quiet --disable-pip-version-check
# one stamp per layer: the daemon's own dependencies, then what only the tests or the linters need
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
DEV_STAMP  := $(VENV)/.installed-dev
AGENT_STAMP      := $(VENV)/.agent-installed
TEST_AGENT_STAMP := $(VENV)/.test-agents-installed

.DEFAULT_GOAL := help
.PHONY: help install bytecode run test test-stores test-fast soak bench lint typecheck agents clean docs openapi wheel

help: ## this list
	@echo "Aegis for Python: make run (start aegisd), make test (the whole suite); both install what they need."
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:[^#]*## /\t/' | awk -F'\t' '{printf "  %-12s %s\n", $$1, $$2}'

$(RUN_STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) -e '.[mcp]'
	@touch $@

$(TEST_STAMP): $(RUN_STAMP)
	$(PIP) -e '.[test]'
	@touch $@

$(DEV_STAMP): $(RUN_STAMP)
	$(PIP) -e '.[dev]'
	@touch $@

$(AGENT_STAMP): scripts/install-agents.sh $(RUN_STAMP)
	PYTHON=$(PY) bash scripts/install-agents.sh
	@touch $@

$(TEST_AGENT_STAMP): scripts/install-agents.sh $(TEST_STAMP)
	PYTHON=$(PY) bash scripts/install-agents.sh --test
	@touch $@

install: $(RUN_STAMP) ## .venv with the daemon and the CLI, and claude-agent-acp (what `make run` needs)
	@$(MAKE) --no-print-directory agents || echo "warning: claude-agent-acp not installed; sessions will use npx"
	@$(MAKE) --no-print-directory bytecode

# An editable install leaves compiling to the first import, which writes nothing where PYTHONDONTWRITEBYTECODE is
# set: every `ag` would compile its modules again (about a tenth of `ag list`). Up-to-date files are skipped.
bytecode: $(RUN_STAMP) ## compile aegisd and aegisctl to bytecode (make run and make bench do it)
	@$(PY) -m compileall -q aegisd aegisctl

agents: $(AGENT_STAMP) ## claude-agent-acp (npm) into .venv/lib/aegis-npm

run: install ## start aegisd in the foreground (Ctrl-C stops it)
	$(VENV)/bin/aegisd

# Tests run in parallel worker processes (pytest-xdist): most of a test's time is a daemon or an agent starting,
# so two workers on two cores finish in about 60 % of the time of one. Each file runs whole on one worker, in its
# order (a module's fixtures and last checks, e.g. the fuzz's "daemon still alive", see its whole run; the
# cluster's three-node tests never run two at once). TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),-p no:xdist,-n $(TEST_WORKERS) --dist loadfile)

STORE_SUITE := tests/test_sessions.py tests/test_http.py tests/test_sse.py tests/test_api_more.py tests/test_pipelines.py

test: $(TEST_STAMP) ## the whole test suite (and its core again on PostgreSQL and Redis when they are reachable)
	@$(MAKE) --no-print-directory $(TEST_AGENT_STAMP) || echo "warning: real-agent tests will be skipped"
	@bash scripts/install-browser.sh
	. scripts/test-env.sh && $(PY) -m pytest -q -ra $(XDIST) && $(MAKE) --no-print-directory test-stores

test-stores: $(TEST_STAMP) ## the session, HTTP, SSE and pipeline tests on each server store whose URL is set
	@set -e; . scripts/test-env.sh; if [ -n "$$AEGIS_TEST_PG_URL" ]; then echo "== the core suite on PostgreSQL"; \
	  AEGIS_TEST_STORE=postgres $(PY) -m pytest -q $(XDIST) $(STORE_SUITE); \
	else echo "skipped: the core suite on PostgreSQL (AEGIS_TEST_PG_URL not set)"; fi; \
	if [ -n "$$AEGIS_TEST_REDIS_URL" ]; then echo "== the core suite on Redis"; \
	  AEGIS_TEST_STORE=redis $(PY) -m pytest -q $(XDIST) $(STORE_SUITE); \
	else echo "skipped: the core suite on Redis (AEGIS_TEST_REDIS_URL not set)"; fi

test-fast: $(TEST_STAMP) ## everything except the real-agent tests
	. scripts/test-env.sh && $(PY) -m pytest -q -ra $(XDIST) -m "not real_agent"

SOAK_KILLS ?= $(or $(AEGIS_SOAK_KILLS),100)

soak: $(TEST_STAMP) ## the kill -9 soak, longer (AEGIS_SOAK_KILLS, default 100) on the file store and on PostgreSQL/Redis when reachable
	@. scripts/test-env.sh; rc=0; for store in file $${AEGIS_TEST_PG_URL:+postgres} $${AEGIS_TEST_REDIS_URL:+redis}; do \
	  echo "== kill -9 soak on the $$store store, $(SOAK_KILLS) kills"; \
	  AEGIS_SOAK_STORE=$$store AEGIS_SOAK_KILLS=$(SOAK_KILLS) $(PY) -m pytest -q -rxX -p no:cacheprovider -m soak \
	    tests/test_soak.py || rc=1; \
	done; \
	[ -n "$$AEGIS_TEST_PG_URL" ] || echo "skipped: the soak on PostgreSQL (AEGIS_TEST_PG_URL not set)"; \
	[ -n "$$AEGIS_TEST_REDIS_URL" ] || echo "skipped: the soak on Redis (AEGIS_TEST_REDIS_URL not set)"; \
	exit $$rc

bench: $(TEST_STAMP) bytecode ## benchmarks, each a ratio against a baseline interleaved with it (min/median/max); bench/results/, docs/performance.md
	$(PY) bench/run.py

docs: $(RUN_STAMP) ## regenerate docs/cli.md and docs/openapi.json from the code
	$(PY) -m aegisctl._docs
	$(PY) -m aegisd.surfaces.http._openapi

openapi: $(RUN_STAMP) ## write docs/openapi.json
	$(PY) -m aegisd.surfaces.http._openapi

lint: $(DEV_STAMP) ## ruff, mypy, and the layering contracts (import-linter: see [tool.importlinter] in pyproject.toml)
	$(VENV)/bin/ruff check aegisd aegisctl tests
	$(VENV)/bin/mypy aegisd aegisctl
	$(VENV)/bin/lint-imports

typecheck: $(DEV_STAMP) ## mypy only
	$(VENV)/bin/mypy aegisd aegisctl

wheel: $(RUN_STAMP) ## build the wheel into dist/ (what pipx or pip install)
	$(PY) -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir dist .

clean: ## remove .venv and build output
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
