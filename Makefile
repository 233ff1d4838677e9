# The two commands of the README. Both set everything up first (idempotent: a stamp file skips the install when
# pyproject.toml has not changed).
#   make demo   set up .venv, then run the offline demo on the embedded tiny model
#   make test   two legs, each timed:
#               full:  .venv, an editable install with the deepspeed and dev extras; the whole test suite
#               plain: .venv-plain, a non-editable `pip install .` with no extras (what `pip install hf-retain`
#                      gives a user); the CLI and the core tests against that installed copy
#                      (tests/plain/plain_leg.sh)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.hf_retain-installed
PLAIN_VENV  ?= .venv-plain
PLAIN_BIN   := $(PLAIN_VENV)/bin
PLAIN_STAMP := $(PLAIN_VENV)/.hf_retain-base-installed
# torch==2.13.0 is a CPU build; installing it first keeps pip from pulling a multi-GB CUDA torch for `torch>=2.9,<2.14`.
TORCH  ?= torch==2.13.0
# The plain leg's test runners: tools beside hf_retain, not extras of it.
PLAIN_TEST_TOOLS := "pytest>=8" "hypothesis>=6.100"

export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup setup-plain demo test test-full test-plain lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install "$(TORCH)"
	DS_BUILD_OPS=0 $(BIN)/python -m pip install -e ".[deepspeed,dev]"
	touch $@

# The plain environment is rebuilt from nothing when pyproject.toml changes, so it never keeps a package that
# pyproject.toml no longer asks for. It holds torch and the test tools; plain_leg.sh installs hf_retain itself
# (and the rest of its dependencies) on every run, since a non-editable install does not follow the checkout.
setup-plain: $(PLAIN_STAMP)

$(PLAIN_STAMP): pyproject.toml
	rm -rf $(PLAIN_VENV)
	$(PYTHON) -m venv $(PLAIN_VENV)
	$(PLAIN_BIN)/python -m pip install --upgrade pip
	$(PLAIN_BIN)/python -m pip install "$(TORCH)" $(PLAIN_TEST_TOOLS)
	touch $@

demo: setup
	$(BIN)/hf-retain demo

test: test-full test-plain

test-full: setup
	@start=$$(date +%s); $(BIN)/python -m pytest; rc=$$?; \
	echo "make test: full leg exited $$rc after $$(( $$(date +%s) - start )) s"; exit $$rc

test-plain: setup-plain
	@start=$$(date +%s); tests/plain/plain_leg.sh $(PLAIN_VENV); rc=$$?; \
	echo "make test: plain leg exited $$rc after $$(( $$(date +%s) - start )) s"; exit $$rc

lint: setup
	$(BIN)/ruff check hf_retain tests benchmarks

clean:
	rm -rf $(VENV) $(PLAIN_VENV) hf_retain_demo outputs .pytest_cache
