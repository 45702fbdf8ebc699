# The two set-up commands (see README): `make demo` and `make test`.
# Each creates .venv when missing, installs the pinned environment once (a stamp file
# records it), and is safe to run again: the venv and the DVC cache are reused.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# pip's config on these machines lists extra local indexes that may be absent: hide the noise.
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }

.PHONY: install demo test lint clean-outputs

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' $(PIP_QUIET)
	@# torchattacks is a test-only oracle; its requests~=2.25.1 pin would send the
	@# resolver into a 20+ minute backtrack, so it is installed alone without deps.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps torchattacks==3.5.1 $(PIP_QUIET)
	@touch $(STAMP)

demo: $(STAMP)
	robust-deepfake data ensure
	dvc repro

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/python -m ruff check src stages flows tests benchmarks
