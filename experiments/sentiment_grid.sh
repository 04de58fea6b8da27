#!/usr/bin/env bash
# The movie-review sentiment benchmark (experiments/configs/sentiment.yaml): every method
# of experiments/sentiment_methods.yaml, then the gated variants of
# experiments/sentiment_study.yaml each beside its matched random-dropout control, three
# seeds, into runs/sentiment; then the tables (runs/sentiment/tables.md, study.md).
# Started again, it keeps finished runs and resumes unfinished ones from their checkpoints,
# so it can be run in parts: SEEDS=0 first, then SEEDS=1,2. Extra arguments go to
# experiments/calibration_study.py (e.g. --only mle,bslora).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/experiment_env.sh
OUT=${OUT:-runs/sentiment}
SEEDS=${SEEDS:-0,1,2}
.venv/bin/python experiments/calibration_study.py experiments/configs/sentiment.yaml \
  experiments/sentiment_methods.yaml experiments/sentiment_study.yaml \
  --out "$OUT" --seeds "$SEEDS" --quiet "$@" > /dev/null
.venv/bin/python experiments/sentiment_tables.py "$OUT"
