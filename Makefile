# Every target creates the environment first if it is missing (.venv, CPU torch pinned).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch is pinned in the same install command: left free, pip pulls a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup test test-fast demo clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)" -e ".[test]"
	touch $(STAMP)

## the full suite, slow end-to-end tests included (what CI runs)
test: setup
	OMP_NUM_THREADS=2 $(PY) -m pytest -q $(PYTEST_ARGS)

## the suite without the slow end-to-end tests
test-fast: setup
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf .pytest_cache build src/*.egg-info
