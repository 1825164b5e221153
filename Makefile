# One entry point for tooling. `make run` and `make test` install what they need first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
export MLFLOW_DISABLE_TELEMETRY ?= true
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: install run test test-fast lint fmt up down status clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# The main job on the embedded default (SQLite, local MLflow store, Prefect's ephemeral API).
run: install
	$(BIN)/pricecast demo

test: install
	$(BIN)/pytest

test-fast: install
	$(BIN)/pytest -m "not slow"

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

fmt: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

up: install
	$(BIN)/python infra/services.py up

down: install
	$(BIN)/python infra/services.py down

status: install
	$(BIN)/python infra/services.py status

clean:
	rm -rf .pricecast .pytest_cache .mypy_cache .ruff_cache
