# edge-sdfa: set-up, demo and tests. Every target is idempotent: the venv is rebuilt
# only when pyproject.toml, host/pyproject.toml or setup.py change.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

# python3.10 is the full-stack interpreter (lava-nc 0.10.0 needs it); pyenv keeps it off PATH
# unless it is the global version, so look for it there as well.
BASE_PY := $(shell for c in python3.10 $$(ls -d $$HOME/.pyenv/versions/3.10*/bin/python3.10 2>/dev/null | sort -V | tail -n1) python3; do \
	if command -v $$c >/dev/null 2>&1 && $$c -c 'import sys' >/dev/null 2>&1; then echo $$c; break; fi; done)

.PHONY: demo test test-fast test-pi lint venv clean embedded bench peer-venv

# Two distributions (docs/architecture.md): the device one at the root, the workstation one in host/.
$(STAMP): pyproject.toml host/pyproject.toml setup.py
	@test -n "$(BASE_PY)" || { echo "error: no python3.10 or python3 found" >&2; exit 2; }
	@test -x $(PY) || $(BASE_PY) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]' -e './host[lava]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/edge-sdfa finetune --store $(CURDIR)/.demo-store --json

# Test tiers are pytest markers (tests/conftest.py): unit (the default; in process, no compiler,
# subprocess, pty or Lava), integration, lava, slow. `make test` lints, then runs every tier.
test: lint
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	$(MAKE) --no-print-directory test-pi

# The device package installed and run on an emulated Raspberry Pi 4 (cortex-a72) and Pi 5
# (cortex-a76): Debian and PyPI downloads cached in .cache/pi (docs/runtime.md).
test-pi: $(STAMP)
	PI_HOST_PYTHON=$(CURDIR)/$(PY) tools/pi/run.sh

test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "unit and not integration and not lava and not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# Rebuild the embedded default bundle and new-user data set from scikit-learn's digits.
embedded: $(STAMP)
	$(PY) -m host_tools.make_embedded

bench: $(STAMP)
	$(PY) benchmarks/accuracy.py --json
	$(PY) benchmarks/step.py --json --peer
	$(PY) benchmarks/binning.py --json
	$(PY) benchmarks/pipesdfa.py --only accounting --only adc_less --only speed --json
	$(PY) benchmarks/executors.py --quick --json
	$(PY) benchmarks/predict.py --quick --json
	$(PY) benchmarks/lava.py --json

# The reference torch SDFA for `benchmarks/step.py --peer`: a CPU build of torch for Python 3.11,
# pinned (an unpinned `torch` pulls a multi-GB CUDA build). Not part of `venv`: only the benchmark needs it.
PEER_VENV := .venv-peer
$(PEER_VENV)/.installed:
	@command -v python3.11 >/dev/null 2>&1 || { echo "error: peer-venv needs python3.11" >&2; exit 2; }
	@test -x $(PEER_VENV)/bin/python || python3.11 -m venv $(PEER_VENV)
	$(PEER_VENV)/bin/pip install -q torch==2.13.0 numpy
	@touch $@

peer-venv: $(PEER_VENV)/.installed

clean:
	rm -rf $(VENV) .demo-store build *.egg-info host/build host/*.egg-info
