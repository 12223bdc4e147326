#!/usr/bin/env bash
# The main job on the built-in sample (data/hippocampus_sample: 32 training + 8 held-out cases),
# the way nnU-Net is used: set up .venv, plan, train 3d_fullres on the 5 cross-validation folds
# (briefly, on the CPU), let find-best choose the post-processing from the folds' validation,
# predict the held-out cases with the 5-fold ensemble, and evaluate them (Dice printed; JSON,
# CSV, box plot, one overlay PNG per case). About 9-10 minutes on 2 CPU cores.
# Outputs: ./autoseg_work/demo (override with WORK=...); EPOCHS / ITERS set each fold's budget.
# A rerun continues where it stopped (finished folds are only re-validated).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
WORK=${WORK:-autoseg_work/demo}
A=".venv/bin/autoseg"
S=data/hippocampus_sample
$A plan "$S" --work-dir "$WORK"
for fold in 0 1 2 3 4; do
  $A train hippocampus_sample 3d_fullres "$fold" --work-dir "$WORK" --device cpu --continue \
     --epochs "${EPOCHS:-8}" --iters-per-epoch "${ITERS:-25}" --val-iters 2 --augment-workers 1
done
$A find-best hippocampus_sample --work-dir "$WORK"
$A predict -i "$S/imagesTs" -o "$WORK/predictions" --work-dir "$WORK" --device cpu --overwrite
$A evaluate --pred "$WORK/predictions" --ref "$S/labelsTs" -o "$WORK/evaluation/summary.json" \
   --images "$S/imagesTs" --plot
echo "demo done: $WORK/evaluation/ (summary.json, summary.csv, summary_boxplot.png, summary_overlays/)"
