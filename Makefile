# Aegis for Python. `make run` starts the daemon, `make test` runs the tests; both install what they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
AGENTS_STAMP := $(VENV)/.agents-installed

.PHONY: install run test test-stores test-fast bench lint typecheck agents clean docs openapi

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv and install the package, test and dev tools, and the ACP agents
	@$(MAKE) --no-print-directory agents || echo "warning: ACP agents not installed (see docs/real-agents.md)"

$(AGENTS_STAMP): scripts/install-agents.sh $(STAMP)
	PYTHON=$(PY) bash scripts/install-agents.sh
	@touch $(AGENTS_STAMP)

agents: $(AGENTS_STAMP) ## claude-agent-acp (npm) and the ACP Python SDK examples, for real-agent tests

run: $(STAMP) ## start aegisd in the foreground (Ctrl-C stops it)
	@$(MAKE) --no-print-directory agents || echo "warning: claude-agent-acp not installed; sessions will use npx"
	$(VENV)/bin/aegisd

STORE_SUITE := tests/test_sessions.py tests/test_http.py tests/test_sse.py tests/test_api_more.py tests/test_pipelines.py

test: $(STAMP) ## the whole test suite (and the core of it again on PostgreSQL and Redis when they are reachable)
	@$(MAKE) --no-print-directory agents || echo "warning: real-agent tests will be skipped"
	@bash scripts/install-browser.sh
	$(PY) -m pytest -q -ra
	@$(MAKE) --no-print-directory test-stores

test-stores: $(STAMP) ## the session, HTTP, SSE and pipeline tests on each server store whose URL is set
	@if [ -n "$$AEGIS_TEST_PG_URL" ]; then echo "== the core suite on PostgreSQL"; \
	  AEGIS_TEST_STORE=postgres $(PY) -m pytest -q $(STORE_SUITE); \
	else echo "skipped: the core suite on PostgreSQL (AEGIS_TEST_PG_URL not set)"; fi
	@if [ -n "$$AEGIS_TEST_REDIS_URL" ]; then echo "== the core suite on Redis"; \
	  AEGIS_TEST_STORE=redis $(PY) -m pytest -q $(STORE_SUITE); \
	else echo "skipped: the core suite on Redis (AEGIS_TEST_REDIS_URL not set)"; fi

test-fast: $(STAMP) ## everything except the real-agent tests
	$(PY) -m pytest -q -ra -m "not real_agent"

bench: $(STAMP) ## benchmarks; results go to bench/results/ and are summarised in docs/performance.md
	$(PY) bench/run.py

docs: $(STAMP) ## regenerate docs/cli.md and docs/openapi.json from the code
	$(PY) -m aegisctl._docs
	$(PY) -m aegisd.api._openapi

openapi: $(STAMP) ## write docs/openapi.json
	$(PY) -m aegisd.api._openapi

lint: $(STAMP)
	$(VENV)/bin/ruff check aegisd aegisctl tests
	$(VENV)/bin/mypy aegisd aegisctl

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
