#!/usr/bin/env bash
# Create ./.venv (if needed) and install autoseg with its test and ONNX extras.
# torch is installed first and pinned: an unpinned torch pulls a multi-GB CUDA build.
# Set TORCH_SPEC to choose another build (e.g. TORCH_SPEC="torch" on a CUDA machine).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
stamp=.venv/.autoseg-installed
want="$(cat setup.cfg scripts/setup_env.sh | sha256sum | cut -c1-16) $TORCH_SPEC"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[test,onnx]"
echo "$want" > "$stamp"
