#!/usr/bin/env bash
# The quick start: set up the environment, then fine-tune SmolLM2-135M on movie-review
# sentiment with Bayesian sparse LoRA next to plain LoRA (MLE) and the zero-shot model
# (same data, seed and budget: experiments/configs/quickstart.yaml), evaluate on held-out
# reviews and on two out-of-distribution sets (plot summaries, news headlines), and print
# the comparison. Extra arguments go to `bslora grid` (e.g. --seeds 0,1,2); CONFIG and OUT
# name another config and run folder (experiments/arc_quickstart.sh sets them for ARC-Easy).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/experiment_env.sh
CONFIG=${CONFIG:-experiments/configs/quickstart.yaml}
OUT=${OUT:-runs/quickstart}
.venv/bin/bslora grid "$CONFIG" --out "$OUT" --methods zero_shot,mle,bslora "$@"
for run in "$OUT"/*/seed*/; do
  .venv/bin/bslora analyze "$run" > /dev/null   # ArviZ posterior.nc, gate heatmaps, plots
done
echo "reports: $OUT/*/seed*/report.md"
