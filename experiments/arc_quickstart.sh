#!/usr/bin/env bash
# The ARC quick start: the quick start's three methods (zero-shot, MLE, Bayesian sparse
# LoRA) fine-tuned on ARC-Easy and evaluated on ARC-Easy dev and ARC-Challenge dev (shift),
# with experiments/configs/arc_quickstart.yaml, into runs/arc_quickstart. Extra arguments
# go to `bslora grid` (e.g. --seeds 0,1,2 or --set train.steps=100).
CONFIG=experiments/configs/arc_quickstart.yaml OUT=runs/arc_quickstart \
  exec bash "$(dirname "$0")/quickstart.sh" "$@"
