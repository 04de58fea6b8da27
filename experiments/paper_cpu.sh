#!/usr/bin/env bash
# The paper's protocol at CPU scale (experiments/configs/paper_cpu.yaml): every method of
# experiments/paper_cpu_methods.yaml on ARC-Easy, ARC-Challenge, OpenBookQA and
# WinoGrande-S, three seeds, and the OpenBookQA runs evaluated under the paper's shift
# (ARC-C, ARC-E, MMLU college chemistry and physics). Writes runs/paper_cpu/paper_table.md.
# Started again, it keeps finished runs and resumes unfinished ones from their checkpoints.
# Extra arguments go to experiments/paper_grid.py (e.g. --tasks arc_easy --seeds 0).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/experiment_env.sh
.venv/bin/python experiments/paper_grid.py experiments/configs/paper_cpu.yaml \
  --out runs/paper_cpu --variants experiments/paper_cpu_methods.yaml \
  --tasks arc_easy,arc_challenge,openbookqa,winogrande_s --seeds 0,1,2 \
  --train-limit 480 --eval-limit 250 "$@"
