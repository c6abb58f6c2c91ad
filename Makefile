# `make setup` then `make test`: the two commands in README.md and .ci/run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast clean

setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"

# OMP_NUM_THREADS=1: on a 2-core box torch's default thread pool makes tiny-model steps 10-50x slower.
test:
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

test-fast:
	OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "not slow and not vllm"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
