#!/usr/bin/env bash
# The main job on the built-in sample (data/hippocampus_sample: 32 training + 8 held-out cases):
# set up .venv, plan, train 3d_fullres briefly on the CPU (all training cases), predict the
# held-out cases, evaluate them (JSON, CSV, box plot, one overlay PNG per case).
# Outputs: ./autoseg_work/demo (override with WORK=...); EPOCHS / ITERS set the training budget.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
WORK=${WORK:-autoseg_work/demo}
A=".venv/bin/autoseg"
S=data/hippocampus_sample
$A plan "$S" --work-dir "$WORK"
$A train hippocampus_sample 3d_fullres all --work-dir "$WORK" --device cpu \
   --epochs "${EPOCHS:-12}" --iters-per-epoch "${ITERS:-25}" --val-iters 2 --workers 1
$A predict -i "$S/imagesTs" -o "$WORK/predictions" -d hippocampus_sample -c 3d_fullres \
   --work-dir "$WORK" --device cpu --overwrite
$A evaluate --pred "$WORK/predictions" --ref "$S/labelsTs" -o "$WORK/evaluation/summary.json" \
   --images "$S/imagesTs" --plot
echo "demo done: $WORK/evaluation/ (summary.json, summary.csv, summary_boxplot.png, summary_overlays/)"
