PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install lint test test-unit test-integration demo bench

$(BIN)/consumer: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/consumer

lint: install
	$(BIN)/ruff check consumer tests
	$(BIN)/mypy consumer

test: install
	$(BIN)/python -m pytest -q

test-unit: install
	$(BIN)/python -m pytest -q tests/unit

test-integration: install
	$(BIN)/python -m pytest -q tests/integration

demo: install
	$(BIN)/python -m consumer demo
