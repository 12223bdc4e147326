#!/usr/bin/env bash
# GPU check (under 5 minutes on one NVIDIA GPU): the CUDA tests, then one table of AMP training
# speed, data-loader headroom and per-case prediction time for torch / onnxruntime / TensorRT.
# Usage on a GPU machine: TORCH_SPEC=torch bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m pytest -q -m cuda tests -p no:cacheprovider
.venv/bin/python benchmarks/gpu_check.py
