#!/usr/bin/env bash
# Builds the folder scripts/gpu_check.sh takes everything from on a CUDA machine without network
# (default .gpu/, ignored by git; carry it with the working tree):
#   wheels/  the project's dependencies that such a machine lacks (those the H200 image lacks; pure
#            Python, for Python $PYVER), pinned to the versions this checkout's venv runs
#   glue/    MRPC and STS-B (train.tsv, dev.tsv) from $GLUE_DIR
#   minilm/  the bundled MiniLM-L6 and its tokenizer, weights stored in fp16 (dylora loads them in fp32)
# Needs `make setup` first (and PyPI, for the wheels). Usage: scripts/gpu_bundle.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.gpu}
GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
# importable on the H200 image already (device/KINDS.md): torch, transformers, pyarrow, pandas, scipy,
# scikit-learn, peft, pytest, safetensors, xxhash, fsspec, yaml. pyarrow and scipy alone are ~80 MB.
PACKAGES=(datasets dill multiprocess hydra-core omegaconf antlr4-python3-runtime)

[ -x "$PY" ] || { echo "gpu_bundle: $PY is missing: run make setup first" >&2; exit 1; }
for task in MRPC STS-B; do
  [ -f "$GLUE_DIR/$task/train.tsv" ] || { echo "gpu_bundle: no $GLUE_DIR/$task/train.tsv: set GLUE_DIR" >&2; exit 1; }
done
rm -rf "$DIR"
mkdir -p "$DIR/wheels"
for package in "${PACKAGES[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m; print(m.version('$package'))")
  # a binary for Python $PYVER where PyPI has one; else a wheel built from the (pure Python) sdist
  "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PYVER" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$DIR/wheels" \
      "$package==$version" 2>/dev/null \
    || "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$DIR/wheels" "$package==$version"
done
for task in MRPC STS-B; do
  mkdir -p "$DIR/glue/$task"
  cp "$GLUE_DIR/$task/train.tsv" "$GLUE_DIR/$task/dev.tsv" "$DIR/glue/$task/"
done
"$PY" - "$DIR/minilm" <<'PYTHON'
import sys

import torch
from transformers import AutoModel, AutoTokenizer

from dylora.models import bundled_minilm_path

source, target = str(bundled_minilm_path()), sys.argv[1]
AutoModel.from_pretrained(source, dtype=torch.float16).save_pretrained(target)
AutoTokenizer.from_pretrained(source).save_pretrained(target)
PYTHON
du -sh "$DIR"/*; du -sh "$DIR"
