#!/usr/bin/env bash
# On the CPU machine: put the pure-Python wheels the GPU machine lacks (pyro-ppl and its
# pyro-api; that image has torch, transformers, peft, accelerate, numpy, opt_einsum, tqdm,
# pyyaml and safetensors) into gpu_wheels/ (gitignored, < 1 MB), for scripts/gpu_check.sh.
# Versions: pyro-ppl and pyro-api as in scripts/requirements-lock.txt.
# Usage: bash scripts/gpu_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-gpu_wheels}
PYTHON=${PYTHON:-.venv/bin/python}
PYRO=$(grep -E '^pyro-ppl==' scripts/requirements-lock.txt)
API=$(grep -E '^pyro-api==' scripts/requirements-lock.txt)
"$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 -d "$DIR" "$PYRO" "$API"
du -sh "$DIR"
