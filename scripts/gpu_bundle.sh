#!/usr/bin/env bash
# Builds the folder scripts/gpu_check.sh takes everything from on a CUDA machine without network
# (default .gpu/, ignored by git; carry it with the working tree):
#   wheels/  the project's dependencies that such a machine lacks (those the H200 image lacks; pure
#            Python, for Python $PYVER), pinned to the versions this checkout's venv runs
#            (wheels/requirements.txt lists the pins)
#   glue/    MRPC and STS-B (train.tsv, dev.tsv) from $GLUE_DIR
#   minilm/  the bundled MiniLM-L6 (dylora.bundled.minilm_path) and its tokenizer, weights stored in
#            fp16 (dylora loads them in fp32)
# Needs `make setup` first (and PyPI, for the wheels). Usage: scripts/gpu_bundle.sh [DIR]
# The folder is built beside DIR and renamed into place at the end: a failed build leaves no partial
# DIR, and an earlier DIR stays as it was. WHEELS=0 skips the download (the pins are still written):
# the test suite runs the other steps so.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.gpu}
GLUE_DIR=${GLUE_DIR:-../shared/data/glue}
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
WHEELS=${WHEELS:-1}
# importable on the H200 image already (device/KINDS.md): torch, transformers, pyarrow, pandas, scipy,
# scikit-learn, peft, pytest, safetensors, xxhash, fsspec, yaml. pyarrow and scipy alone are ~80 MB.
PACKAGES=(datasets dill multiprocess hydra-core omegaconf antlr4-python3-runtime)

[ -x "$PY" ] || [ -x "$(command -v "$PY")" ] || { echo "gpu_bundle: $PY is missing: run make setup first" >&2; exit 1; }
for task in MRPC STS-B; do
  for split in train dev; do
    [ -f "$GLUE_DIR/$task/$split.tsv" ] || { echo "gpu_bundle: no $GLUE_DIR/$task/$split.tsv: set GLUE_DIR" >&2; exit 1; }
  done
done
DIR=${DIR%/}
mkdir -p "$(dirname "$DIR")"
BUILD=$(mktemp -d "$(dirname "$DIR")/.$(basename "$DIR").build-XXXXXX")
trap 'rm -rf "$BUILD"' EXIT
mkdir -p "$BUILD/wheels"

# the pins: each package at the version this venv runs (fails naming a package the venv lacks)
"$PY" - "${PACKAGES[@]}" > "$BUILD/wheels/requirements.txt" <<'PYTHON'
import sys
from importlib import metadata

for package in sys.argv[1:]:
    try:
        print(f"{package}=={metadata.version(package)}")
    except metadata.PackageNotFoundError:
        sys.exit(f"gpu_bundle: {package} is not installed in this venv: run make setup first")
PYTHON
if [ "$WHEELS" != 0 ]; then
  while read -r pin; do
    # a binary for Python $PYVER where PyPI has one; else a wheel built from the (pure Python) sdist
    "$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version "$PYVER" \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$BUILD/wheels" \
        "$pin" 2>/dev/null \
      || "$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$BUILD/wheels" "$pin"
  done < "$BUILD/wheels/requirements.txt"
fi
for task in MRPC STS-B; do
  mkdir -p "$BUILD/glue/$task"
  cp "$GLUE_DIR/$task/train.tsv" "$GLUE_DIR/$task/dev.tsv" "$BUILD/glue/$task/"
done
"$PY" - "$BUILD/minilm" <<'PYTHON'
import sys

import torch
from transformers import AutoModel, AutoTokenizer

from dylora.bundled import minilm_path

source, target = str(minilm_path()), sys.argv[1]
AutoModel.from_pretrained(source, dtype=torch.float16).save_pretrained(target)
AutoTokenizer.from_pretrained(source).save_pretrained(target)
PYTHON
rm -rf "$DIR"
mv "$BUILD" "$DIR"
trap - EXIT
du -sh "$DIR"/*; du -sh "$DIR"
