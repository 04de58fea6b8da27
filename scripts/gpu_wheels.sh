#!/usr/bin/env bash
# On the CPU machine: put the pure-Python wheels the GPU machine lacks (pyro-ppl and its
# pyro-api; that image has torch, transformers, peft, accelerate, numpy, opt_einsum, tqdm,
# pyyaml and safetensors) into gpu_wheels/ (gitignored, < 1 MB), for scripts/gpu_check.sh.
# Versions: pyro-ppl as in scripts/constraints.txt. Usage: bash scripts/gpu_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-gpu_wheels}
PYTHON=${PYTHON:-.venv/bin/python}
PYRO=$(grep -E '^pyro-ppl==' scripts/constraints.txt)
"$PYTHON" -m pip download --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 -d "$DIR" "$PYRO" pyro-api==0.1.2
du -sh "$DIR"
