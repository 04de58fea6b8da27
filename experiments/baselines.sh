#!/usr/bin/env bash
# Every baseline next to Bayesian sparse LoRA at quick-start scale: SmolLM2-135M, 600
# ARC-Easy training questions, top 4 blocks + lm_head, 225 steps, three seeds; ARC-Easy dev
# in distribution, ARC-Challenge dev as the shift. Writes runs/baselines/comparison.md
# (mean ± std over seeds, best per column in bold). About 1.5 h on a 2-core CPU.
# A stopped run continues where it stopped (finished runs are kept; --rerun redoes them).
# Extra arguments go to `bslora grid` (e.g. --seeds 0 or --set train.steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ -z "${BSLORA_DATA_DIR:-}" ] && [ -d ../shared/data ]; then
  export BSLORA_DATA_DIR="$(cd ../shared/data && pwd)"  # local copies, else the HF hub
fi
export TOKENIZERS_PARALLELISM=false
methods=zero_shot,mle,map,mc_dropout,ensemble,blob,laplace,random_mask,temperature_scaling,bslora
.venv/bin/bslora grid experiments/configs/quickstart.yaml --out runs/baselines \
  --methods "$methods" --seeds 0,1,2 "$@"
