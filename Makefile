# Two commands for a new user: `make demo` (the main job) and `make test` (the whole suite);
# `make test-fast` is the lane a developer runs between two edits (everything but the e2e tests).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# On a machine without CUDA, install the CPU wheel of torch first so that the project's
# torch range is already satisfied and pip never pulls a multi-GB CUDA build.
# Elsewhere set TORCH_INDEX=https://download.pytorch.org/whl/cpu to fetch the CPU build.
TORCH_CPU   ?= torch==2.13.0
TORCH_INDEX ?=
PYTEST_ARGS ?=
# Tests run in TEST_JOBS processes (pytest-xdist), each test file whole in one of them; every test uses one
# torch thread, so 2 suits a 2-core machine. TEST_JOBS=0 runs them in this process (e.g. for pdb).
TEST_JOBS   ?= 2
XDIST       := $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile --no-loadscope-reorder)

.PHONY: demo test test-fast lint install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml Makefile | $(BIN)/python
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
	  echo "CUDA GPU found: torch comes from the project's dependencies"; \
	else \
	  echo "no CUDA GPU: installing $(TORCH_CPU) (CPU build) first"; \
	  $(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_CPU)"; \
	fi
	$(BIN)/pip install -q -e '.[test]'
	@# OpenICL 0.1.8 itself, for the evaluator's cross-check test only: its wheel pins old transformers
	@# and faiss-gpu, so it goes in without dependencies, plus the light modules it imports.
	$(BIN)/pip install -q --no-deps openicl==0.1.8 evaluate==0.4.6
	$(BIN)/pip install -q rank_bm25==0.2.2 openai==3.57.0
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/emotune demo

lint: $(VENV)/.installed
	$(BIN)/ruff check emotune tests benchmarks

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(XDIST) $(PYTEST_ARGS)

test-fast: $(VENV)/.installed
	$(BIN)/python -m pytest -q $(XDIST) -m 'not e2e' $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
