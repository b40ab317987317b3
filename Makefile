# One command sets up and runs the demo, one runs the tests (`.ci/run` calls `make lint`, then `make test`).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU-only machines: set TORCH_SPEC to a CPU build, e.g. "torch==2.13.0" from a local wheel or
# TORCH_INDEX=https://download.pytorch.org/whl/cpu; GPU machines take the default CUDA build of PyPI.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: setup system-deps demo test lint clean

$(BIN)/synthmed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/pip install -q -e ".[test]"
	touch $(BIN)/synthmed

setup: $(BIN)/synthmed

demo: setup
	$(BIN)/synthmed demo --out demo_run

# The review tests start a throwaway PostgreSQL server and drive a headless Chromium: Debian packages,
# installed here when missing by root (CI) or with passwordless sudo. Without either they are not installed
# and the tests that need them are skipped, each saying why (SYNTHMED_SKIP_MISSING_SYSTEM_DEPS).
SYSTEM_PACKAGES := $(if $(wildcard /usr/lib/postgresql/*/bin/initdb),,postgresql) $(if $(wildcard /usr/bin/chromium),,chromium)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
CAN_INSTALL ?= $(if $(SUDO),$(shell sudo -n true 2>/dev/null && echo yes),yes)

system-deps:
ifneq ($(strip $(SYSTEM_PACKAGES)),)
ifeq ($(CAN_INSTALL),yes)
	$(SUDO) apt-get update -q
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $(SYSTEM_PACKAGES)
else
	@echo "not root and no passwordless sudo: not installing $(strip $(SYSTEM_PACKAGES)); the tests that need them are skipped"
endif
endif

test: setup system-deps
	$(if $(filter yes,$(CAN_INSTALL)),,SYNTHMED_SKIP_MISSING_SYSTEM_DEPS=1) $(BIN)/python -m pytest -q -p no:cacheprovider

# Style, types (mypy on src/) and the import layers (the contracts in pyproject.toml).
lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) demo_run runs
