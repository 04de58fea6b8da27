#!/usr/bin/env bash
# Set up the environment, lint, build the documentation site (a broken link or a missing
# page fails) and run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ -z "${BSLORA_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export BSLORA_DATA_DIR="$(cd ../shared/data && pwd)"  # local copies, else the HF hub
fi
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check bslora_pyro tests benchmarks experiments scripts docs
SITE=$(mktemp -d)  # built to check it, then removed
NO_MKDOCS_2_WARNING=1 .venv/bin/mkdocs build --strict --site-dir "$SITE"
rm -rf "$SITE"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
