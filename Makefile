# The two set-up commands (see README): `make demo` and `make test`.
# Each creates .venv when missing, installs the pinned environment once (a stamp file
# records it), and is safe to run again: the venv and the DVC cache are reused.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed
# The offline page template `dvc plots show` uses (.dvc/config's plots.html_template).
PLOTS_TEMPLATE := build/plots_template.html
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# pip's config on these machines lists extra local indexes that may be absent: hide the noise.
PIP_QUIET := 2>&1 | { grep -v "^WARNING: Location '.*' is ignored" || true; }

# The pins pyproject.toml lists under [tool.robust-deepfake] install-without-deps.
export WITHOUT_DEPS := import tomllib; print(" ".join(tomllib.load(open("pyproject.toml", "rb"))["tool"]["robust-deepfake"]["install-without-deps"]))

.PHONY: install demo test test-all lint

install: $(STAMP) $(PLOTS_TEMPLATE)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]' $(PIP_QUIET)
	@# pyproject.toml's [tool.robust-deepfake] install-without-deps (torchattacks: its
	@# requests~=2.25.1 pin conflicts with ours), each installed alone without deps.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps \
	  $$($(BIN)/python -c "$$WITHOUT_DEPS") $(PIP_QUIET)
	@touch $(STAMP)

# vega, vega-lite and vega-embed, pinned in package-lock.json, inlined into one page
# template so `dvc plots show` renders with no network (docs/pipeline.md, "Reading the outputs with DVC").
# Rebuilt when the pins or the build module change; the file itself is the stamp.
$(PLOTS_TEMPLATE): package.json package-lock.json tools/plots_template.py $(STAMP)
	@command -v npm >/dev/null || { echo "npm not found: install Node.js with npm (Debian: apt-get install npm)" >&2; exit 1; }
	npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	$(BIN)/python -m tools.plots_template

demo: $(STAMP) $(PLOTS_TEMPLATE)
	robust-deepfake data ensure
	dvc repro

# Two tiers (tests/conftest.py marks a test slow when it uses a micro repo, a Prefect or
# MLflow server, `mlflow models serve` or headless Chromium). `make test`: the fast tier,
# run before every commit. `make test-all`: everything, what CI (.ci/run) runs.
test: $(STAMP) $(PLOTS_TEMPLATE)
	$(BIN)/python -m pytest -m "not slow"

test-all: $(STAMP) $(PLOTS_TEMPLATE)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/python -m ruff check src stages flows tests benchmarks tools
