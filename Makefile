# Every target creates the environment first if it is missing (.venv, CPU torch pinned).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch is pinned in the same install command: left free, pip pulls a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=
RUN     := $(PY) -m dylora.run
REPORT  := $(PY) -m dylora.cli.report

.PHONY: setup java test test-fast demo clean

setup: $(STAMP) java

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "$(TORCH)" -e ".[test]"
	touch $(STAMP)

# The NLG metrics (METEOR 1.5, the PTB tokenizer) run on Java, from Debian.
java:
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null; \
	  else echo "Java is missing: install it (Debian: sudo apt-get install default-jre-headless)"; exit 1; fi; }

## the full suite, slow end-to-end tests included (what CI runs)
test: setup
	OMP_NUM_THREADS=2 $(PY) -m pytest -q $(PYTEST_ARGS)

## the suite without the slow end-to-end tests
test-fast: setup
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

## LoRA vs DyLoRA vs DyLoRA (Frozen) on the synthetic teacher task: results/demo/
demo: setup
	$(RUN) -m experiment=demo method=lora,dylora,dylora_frozen
	$(REPORT) experiment=demo

clean:
	rm -rf .pytest_cache build src/*.egg-info
