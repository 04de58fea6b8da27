#!/usr/bin/env bash
# Set up the environment and run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
export BSLORA_DATA_DIR="${BSLORA_DATA_DIR:-$(cd .. && pwd)/shared/data}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check bslora_pyro tests benchmarks experiments
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
