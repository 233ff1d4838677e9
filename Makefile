# The two commands of the README. Both set everything up first (idempotent: a stamp file skips the install when
# pyproject.toml has not changed).
#   make demo   set up, then run the offline demo on the embedded tiny model
#   make test   set up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hf_retain-installed
# torch==2.13.0 is a CPU build; installing it first keeps pip from pulling a multi-GB CUDA torch for `torch>=2.9`.
TORCH  ?= torch==2.13.0

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH)"
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -e ".[deepspeed,dev]"
	touch $@

demo: setup
	$(BIN)/hf-retain demo

test: setup
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check hf_retain tests benchmarks

clean:
	rm -rf $(VENV) hf_retain_demo outputs .pytest_cache
