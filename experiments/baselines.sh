#!/usr/bin/env bash
# Every baseline next to Bayesian sparse LoRA at quick-start scale: SmolLM2-135M, 600
# ARC-Easy training questions, top 4 blocks + lm_head, 225 steps, three seeds; ARC-Easy dev
# in distribution, ARC-Challenge dev as the shift. Writes runs/baselines/comparison.md
# (mean ± std over seeds, best per column in bold). 1 h 42 min on a 2-core CPU.
# The quick start adapts the top 8 blocks; this grid keeps the 4 that the table in
# docs/results/quickstart-baselines.md was measured on. Started again, it keeps finished runs and resumes unfinished ones
# (--rerun redoes all). Extra arguments go to `bslora grid` (e.g. --seeds 0 or
# --set train.steps=100; a later --set 'adapter.layers="-8:"' gives the quick start's).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/experiment_env.sh
methods=zero_shot,mle,map,mc_dropout,ensemble,blob,laplace,random_mask,temperature_scaling,bslora
.venv/bin/bslora grid experiments/configs/arc_quickstart.yaml --out runs/baselines \
  --methods "$methods" --seeds 0,1,2 --set 'adapter.layers="-4:"' "$@"
