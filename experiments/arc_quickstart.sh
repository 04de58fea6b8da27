#!/usr/bin/env bash
# The ARC quick start: set up the environment, then fine-tune SmolLM2-135M on ARC-Easy with Bayesian sparse
# LoRA next to plain LoRA (MLE) and the zero-shot model (same data, seed and budget),
# evaluate on ARC-Easy dev and ARC-Challenge dev (shift), and print the comparison.
# Extra arguments go to `bslora grid` (e.g. --seeds 0,1,2 or --set train.steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/experiment_env.sh
.venv/bin/bslora grid experiments/configs/arc_quickstart.yaml --out runs/arc_quickstart \
  --methods zero_shot,mle,bslora "$@"
for run in runs/arc_quickstart/*/seed*/; do
  .venv/bin/bslora analyze "$run" > /dev/null   # ArviZ posterior.nc, gate heatmaps, plots
done
echo "reports: runs/arc_quickstart/*/seed*/report.md"
