#!/usr/bin/env bash
# The main job on the built-in sample (data/hippocampus_sample, 32 training + 8 held-out cases):
# set up .venv, plan, train briefly on the CPU, predict the held-out cases, evaluate.
# Outputs go to ./autoseg_work/demo (override with WORK=...).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
WORK=${WORK:-autoseg_work/demo}
A=".venv/bin/autoseg"
$A plan data/hippocampus_sample --work-dir "$WORK"
$A train hippocampus_sample 3d_fullres 0 --work-dir "$WORK" --device cpu \
   --epochs "${EPOCHS:-10}" --iters-per-epoch "${ITERS:-20}" --val-iters 4 --workers 1
