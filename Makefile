# Set-up and the project's main commands. Every target creates .venv (with Python 3.12)
# and installs the package into it when needed, so a fresh clone needs only `make demo`
# and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Python 3.12: `python3.12` on PATH, or a pyenv-installed 3.12 when the shim has none
# selected. Override with `make PYTHON=/path/to/python3.12 ...`.
PYTHON ?= $(shell for p in python3.12 $$(command -v pyenv >/dev/null 2>&1 && ls -d "$$(pyenv root)"/versions/3.12*/bin/python3.12 2>/dev/null); do \
  "$$p" -c 'import sys; assert sys.version_info[:2] == (3, 12)' >/dev/null 2>&1 && { echo "$$p"; break; }; done)

.PHONY: install lock demo test lint format clean accelerator-wheels

install: $(STAMP)

# Installs exactly the versions of requirements.lock (every direct and indirect dependency,
# with hashes), then this package itself without dependencies: every fresh clone and CI get
# the versions the suite passed with. `make lock` is the one deliberate way to upgrade.
$(STAMP): setup.py requirements.lock
	@if [ ! -x "$(PY)" ]; then \
	  if [ -z "$(PYTHON)" ]; then \
	    echo "error: mtm_jax needs Python 3.12 (jax >= 0.11 requires it), and no working"; \
	    echo "       python3.12 was found. Install it, or run: make PYTHON=/path/to/python3.12 $(MAKECMDGOALS)"; \
	    exit 1; \
	  fi; \
	  echo "Creating $(VENV) with $(PYTHON)"; \
	  "$(PYTHON)" -m venv $(VENV); \
	fi
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# requirements.lock refreshed to the newest releases that setup.py's ranges allow (for
# Python 3.12 on every platform), installed, and kept only if the whole suite passes with
# it; otherwise the previous lock is put back and reinstalled. Commit the new lock.
UV_VERSION := 0.13.9
LOCK_COMMAND = printf 'pip\nsetuptools\nwheel\n' | $(VENV)/bin/uv pip compile setup.py - --extra test \
  --universal --python-version 3.12 --generate-hashes --quiet --custom-compile-command 'make lock'

lock: $(STAMP)
	$(PY) -m pip install --quiet uv==$(UV_VERSION)
	$(LOCK_COMMAND) --upgrade --output-file requirements.lock.new
	$(PY) -m pip install --quiet --require-hashes -r requirements.lock.new
	@if $(TEST_COMMAND); then \
	  mv requirements.lock.new requirements.lock; touch $(STAMP); \
	  echo "requirements.lock refreshed and the suite passed with it: commit it"; \
	else \
	  rm -f requirements.lock.new; $(PY) -m pip install --quiet --require-hashes -r requirements.lock; \
	  echo "error: the suite failed with the newest versions; requirements.lock is unchanged and reinstalled"; \
	  exit 1; \
	fi

# Builds a small synthetic data set, pretrains MtM and a temporal-masking baseline,
# evaluates both and prints MtM vs temporal vs oracle (runs/demo/report.md).
demo: $(STAMP)
	$(PY) -m experiments.demo --flagfile=experiments/flags/demo.flags

TEST_COMMAND = $(PY) -m pytest -q -n 2 tests

test: $(STAMP)
	$(TEST_COMMAND)

# The code's format (ruff format, line length 120, 2-space indents: ruff.toml) and
# pyflakes' checks; `make format` rewrites the files into that format.
lint: $(STAMP)
	$(PY) -m ruff format --check --quiet .
	$(PY) -m ruff check --quiet .

format: $(STAMP)
	$(PY) -m ruff format --quiet .

clean:
	rm -rf $(VENV) runs *.egg-info .pytest_cache

# The wheels of the packages the GPU machine's image lacks, into .whl/ (git-ignored; the
# device tool carries it: docs/accelerators.md).
accelerator-wheels: $(STAMP)
	$(PY) -m benchmarks.accelerator --fetch_wheels --wheels=.whl

# The PyTorch side of the parity tests (docs/parity.md): a Python 3.11 environment in
# parity/.venv with CPU PyTorch and torch_brain. tests/test_parity.py uses it when present.
PARITY_PYTHON ?= python3.11
PARITY_VENV := parity/.venv
PARITY_STAMP := $(PARITY_VENV)/.installed

.PHONY: parity-env parity

parity-env: $(PARITY_STAMP)

$(PARITY_STAMP): parity/requirements.txt
	"$(PARITY_PYTHON)" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' || \
	  { echo "error: the parity environment needs Python 3.11 (CPU PyTorch 2.13.0); set PARITY_PYTHON"; exit 1; }
	"$(PARITY_PYTHON)" -m venv $(PARITY_VENV)
	$(PARITY_VENV)/bin/python -m pip install --quiet -r parity/requirements.txt
	@touch $(PARITY_STAMP)

# Parity of mtm_jax with the reference implementations (PyTorch side in parity/.venv).
parity: $(STAMP) $(PARITY_STAMP)
	$(PY) -m pytest -q tests/test_parity.py

# The official NEDS code (yzhang511/NEDS at 61d2ef6; docs/parity.md, "NEDS") for
# tests/test_parity_neds.py: a Python 3.11 environment in parity/.neds-venv, and their src/
# and data/ exported into parity/.neds-src from $(NEDS_SRC), a git repository holding the
# commit (a clone or mirror), or else from a fresh clone of github.com/yzhang511/NEDS.
NEDS_COMMIT := 61d2ef6
NEDS_PYTHON ?= python3.11
NEDS_VENV := parity/.neds-venv
NEDS_CHECKOUT := parity/.neds-src
NEDS_STAMP := $(NEDS_VENV)/.installed

.PHONY: parity-neds-env parity-neds

parity-neds-env: $(NEDS_STAMP) $(NEDS_CHECKOUT)/.commit

$(NEDS_STAMP): parity/neds-requirements.txt
	"$(NEDS_PYTHON)" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' || \
	  { echo "error: the NEDS parity environment needs Python 3.11 (CPU PyTorch 2.13.0); set NEDS_PYTHON"; exit 1; }
	"$(NEDS_PYTHON)" -m venv $(NEDS_VENV)
	$(NEDS_VENV)/bin/python -m pip install --quiet -r parity/neds-requirements.txt
	@touch $(NEDS_STAMP)

$(NEDS_CHECKOUT)/.commit:
	rm -rf $(NEDS_CHECKOUT) && mkdir -p $(NEDS_CHECKOUT)
	repo="$(NEDS_SRC)"; if [ -z "$$repo" ]; then repo=$(NEDS_CHECKOUT).git; rm -rf $$repo; \
	  git clone --quiet --bare https://github.com/yzhang511/NEDS $$repo; fi; \
	git -C "$$repo" archive $(NEDS_COMMIT) src data | tar -x -C $(NEDS_CHECKOUT)
	@echo $(NEDS_COMMIT) > $@

# Parity of models/neds.py with the official NEDS code.
parity-neds: $(STAMP) parity-neds-env
	$(PY) -m pytest -q tests/test_parity_neds.py

# The official BrainWideBench scorer (ibl-bwb-eval 0.1.0, docs/bwb.md) in its own Python 3.11
# environment, parity/.bwb-venv: CPU PyTorch and the scorer's light dependencies, then the
# scorer with --no-deps. tests/test_bwb_scorer.py scores one small submission with it and with
# mtm_jax.bwb when present ($MTM_BWB_PYTHON names another interpreter).
BWB_PYTHON ?= python3.11
BWB_VENV := parity/.bwb-venv
BWB_STAMP := $(BWB_VENV)/.installed

.PHONY: bwb-env bwb-parity

bwb-env: $(BWB_STAMP)

$(BWB_STAMP): parity/bwb-requirements.txt
	"$(BWB_PYTHON)" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' || \
	  { echo "error: the scorer environment needs Python 3.11 (CPU PyTorch 2.13.0); set BWB_PYTHON"; exit 1; }
	"$(BWB_PYTHON)" -m venv $(BWB_VENV)
	$(BWB_VENV)/bin/python -m pip install --quiet -r parity/bwb-requirements.txt
	$(BWB_VENV)/bin/python -m pip install --quiet --no-deps ibl-bwb-eval==0.1.0
	@touch $(BWB_STAMP)

# mtm_jax.bwb's scores against the official scorer's on one small submission.
bwb-parity: $(STAMP) $(BWB_STAMP)
	$(PY) -m pytest -q tests/test_bwb_scorer.py
