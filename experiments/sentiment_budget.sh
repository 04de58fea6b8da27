#!/usr/bin/env bash
# How the sentiment benchmark's step budget was chosen: plain LoRA (MLE) on its 1,000
# training reviews for 1,500 steps of 8, validated every 50 steps on the 500 dev reviews
# (test set cut to 500 to keep it short; the choice reads validation only). Prints the
# validation NLL by step: the budget (1,000 steps) is where MLE has long passed its best
# validation NLL, the overfitting regime the gates are meant to calibrate.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/experiment_env.sh
OUT=${OUT:-runs/sentiment_sweep/mle_n1000}
.venv/bin/bslora train experiments/configs/sentiment.yaml --out "$OUT" --set method=mle \
  --set 'method_options={}' --set train.steps=1500 --set train.validate_every=50 \
  --set 'data.eval=[{task: movie_reviews, split: test, limit: 500}]' --quiet
.venv/bin/python - "$OUT" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/train_log.jsonl")]
for row in rows:
    if "val_nll" in row:
        print(f"step {row['step']:5d}  validation NLL {row['val_nll']:.3f}")
PY
