# make demo | make test | make bench — each creates/refreshes .venv and builds the extension first.
# VENV_ARGS=--system-site-packages reuses an installed (e.g. CUDA) torch: torch is installed
# only when the venv cannot import one, and an existing torch is never replaced.
PYTHON ?= python3
VENV ?= .venv
VENV_ARGS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.threepc-editable

.PHONY: venv build demo test test-fast bench bench-e2e package clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

venv: $(BIN)/python
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q numpy numba matplotlib scikit-learn pytest pytest-benchmark hypothesis ninja "setuptools>=77" wheel

# First time: the editable install (it builds the extension in place). Later: an incremental
# (ninja) rebuild in build/, where only changed sources recompile.
build: venv
	@if [ -f $(STAMP) ]; then $(BIN)/python setup.py -q build_ext --inplace; \
	else $(BIN)/python -m pip install -q --no-build-isolation --no-deps -e . && touch $(STAMP); fi

demo: build
	$(BIN)/python -m benchmarks.demo --workers 2 --hook ef14 --opt compressor=topk8 --opt ratio=0.05

test: build
	$(BIN)/python -m pytest tests --durations=40

test-fast: build
	$(BIN)/python -m pytest tests -m "not slow"

bench: build
	$(BIN)/python -m pytest benchmarks --benchmark-columns=min,median,mean,rounds --benchmark-sort=name

# time to accuracy in a shaped private network namespace (root: unshare, tc); long, see the README
bench-e2e: build
	$(BIN)/python -m benchmarks.e2e

# sdist, then a wheel built from it (one compile proves both); both land in dist/
package: venv
	$(BIN)/python -c "from setuptools import build_meta; build_meta.build_sdist('dist')"
	$(BIN)/python -m pip wheel -q --no-build-isolation --no-deps -w dist dist/threepc-*.tar.gz

clean:
	rm -rf build dist compressors/_C*.so compressors/_C_build.json *.egg-info .benchmarks
