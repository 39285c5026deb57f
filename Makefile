# The two commands of the README:
#   make run   -> set up .venv and run the default experiment (results/default/)
#   make test  -> set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Flower and Ray stay quiet and offline (no telemetry, no usage stats).
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test setup lint

$(BIN)/etree: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/etree

setup: $(BIN)/etree

run: setup
	$(BIN)/etree run experiments/default.toml

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
