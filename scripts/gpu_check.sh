#!/usr/bin/env bash
# The GPU check, for a CUDA machine that has PyTorch and transformers but no network and none of
# this project's other dependencies: everything else comes from one folder that scripts/gpu_bundle.sh
# builds (default .gpu/; copy it along with the working tree). From the repository root:
#   bash scripts/gpu_check.sh [BUNDLE] [RESULTS]      (RESULTS default: $OUT, else /tmp/dylora-gpu-check)
# It runs, printing each step's wall-clock:
#   1. the tests marked gpu, and the rest of tests/test_precision.py, on this machine;
#   2. make bench's measurements (python3 -m dylora.lab.bench: make's set-up would build a venv);
#   3. LoRA vs DyLoRA on MiniLM, MRPC and STS-B, bf16, EPOCHS epochs (default 10: about 4 minutes
#      on an H200 by estimate; the printed wall-clock says how to size it), each run's rank curve in
#      short (dylora-run's summary), then the report's summary and finding.
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=$(realpath "${1:-.gpu}")
RESULTS=$(realpath -m "${2:-${OUT:-/tmp/dylora-gpu-check}}")
EPOCHS=${EPOCHS:-10}
DEVICE=${DEVICE:-cuda}    # DEVICE=cpu runs the same steps on a CPU: a check of this script, not of the GPU
BENCH_ARGS=${BENCH_ARGS:-}  # e.g. "--repeats=2 --batch=4 --seq=32" for a quick pass
RUN_ARGS=${RUN_ARGS:-}      # more Hydra overrides of step 3, e.g. "data.max_eval_samples=50"
PYTHON=${PYTHON:-python3}
SITE=/tmp/dylora-gpu-site
status=0
step() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }
# a pipeline runs timed in a subshell, where status is lost: such a caller adds || status=1 (pipefail)
timed() { local start=$SECONDS; "$@"; local rc=$?; echo "--- $(( SECONDS - start )) s, exit $rc"; [ $rc = 0 ] || status=1; return $rc; }

step "environment"
[ -d "$BUNDLE/wheels" ] || { echo "gpu_check: no $BUNDLE/wheels: run scripts/gpu_bundle.sh first and carry its folder"; exit 1; }
mkdir -p "$RESULTS"
rm -rf "$SITE"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$BUNDLE"/wheels/*.whl \
  && "$PYTHON" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --no-cache-dir --target "$SITE" . \
  || { echo "gpu_check: installing the wheels and dylora failed"; exit 1; }
export PYTHONPATH="$SITE" PYTHONUNBUFFERED=1 HYDRA_FULL_ERROR=1 WANDB_MODE=disabled
DEVICE=$DEVICE "$PYTHON" - <<'PY' || exit 1
import importlib, sys
wanted = ["torch", "transformers", "datasets", "hydra", "omegaconf", "pandas", "pyarrow", "scipy", "sklearn", "peft",
          "pytest", "safetensors", "matplotlib", "dylora.conf"]
missing = [m for m in wanted if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu_check: missing here and too big to carry: {missing}; install them on this machine")
import os
import torch
if os.environ["DEVICE"] == "cpu":
    print(f"torch {torch.__version__} on the CPU (DEVICE=cpu), python {sys.version.split()[0]}")
elif not torch.cuda.is_available():
    sys.exit("gpu_check: torch sees no CUDA device")
else:
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name()}, "
          f"bf16 {torch.cuda.is_bf16_supported()}, python {sys.version.split()[0]}")
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null

step "1. tests: gpu-marked, and tests/test_precision.py"
timed "$PYTHON" -m pytest -q -p no:cacheprovider -m "gpu or not slow" tests/test_precision.py \
  -o addopts="-ra" 2>&1 | tail -n 15 || status=1

step "2. bench ($DEVICE)"
REAL_ARGS=()  # the bench's real run (where it has one): MRPC and MiniLM from the bundle
if "$PYTHON" -m dylora.lab.bench --help 2>/dev/null | grep -q -- "--real OVERRIDE"; then
  REAL_ARGS=(--real experiment=table1_cpu --real task=mrpc --real "data.glue_dir=$BUNDLE/glue"
             --real "model.path=$BUNDLE/minilm")
fi
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
timed "$PYTHON" -m dylora.lab.bench --device "$DEVICE" --model-path "$BUNDLE/minilm" --out "$RESULTS/bench.json" $BENCH_ARGS \
  ${REAL_ARGS[@]+"${REAL_ARGS[@]}"}

step "3. LoRA vs DyLoRA, MiniLM, MRPC and STS-B, bf16, $EPOCHS epochs"
RUNS="$RESULTS/runs"
# shellcheck disable=SC2086  # RUN_ARGS is a list of overrides
timed "$PYTHON" -m dylora.run -m experiment=table1_cpu task=mrpc,stsb method=lora,dylora seed=42 \
  model.path="$BUNDLE/minilm" data.glue_dir="$BUNDLE/glue" trainer.precision=bf16 trainer.device="$DEVICE" \
  trainer.epochs="$EPOCHS" out_dir="$RUNS" $RUN_ARGS 2>&1 \
  | grep -E "^(---|done|skip|error|warning|rank curve of|  (truncation|prefix|svd) )|Error" || status=1
"$PYTHON" - "$RUNS" <<'PY'
import json, sys
from pathlib import Path
for env in sorted(Path(sys.argv[1]).glob("table1_cpu/*/*/*/env.json")):
    e = json.loads(env.read_text())
    run = env.parent
    p = e["precision"]  # {autocast, base_dtype, tf32}, or (older records) the autocast's name
    precision = ", ".join(f"{k} {v}" for k, v in p.items()) if isinstance(p, dict) else p
    print(f"{run.parts[-3]:>5} {run.parts[-2]:>7}: train {e['train_seconds']:.1f} s for {e['train_steps']} steps "
          f"({1000 * e['train_seconds'] / e['train_steps']:.1f} ms/step), sweep {e['sweep_seconds']:.1f} s, "
          f"{precision}, {e['device']}")
PY
timed "$PYTHON" -m dylora.cli.report experiment=table1_cpu out_dir="$RUNS" results_dir="$RESULTS/report" >/dev/null
cat "$RESULTS/report/table1_cpu/summary.md" "$RESULTS/report/table1_cpu/finding.md" 2>/dev/null

step "done: exit $status; results in $RESULTS"
exit $status
