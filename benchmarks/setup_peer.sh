#!/usr/bin/env bash
# Create the peer environment for the benchmarks: a venv at benchmarks/.peer-venv
# holding nnU-Net v2 (and the torch it needs), kept apart from the project venv.
#
# Idempotent: does nothing if benchmarks/.peer-venv/bin/nnUNetv2_plan_experiment
# already exists.  Override the interpreter with PEER_PYTHON=/path/to/python3.11.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${here}/.peer-venv"
python="${PEER_PYTHON:-python3.11}"

if [[ -x "${venv}/bin/nnUNetv2_plan_experiment" ]]; then
    echo "peer env already present: ${venv}"
    exit 0
fi

if ! command -v "${python}" >/dev/null 2>&1; then
    python="python3"
fi

start=$(date +%s)
echo "creating peer venv at ${venv} with $(${python} --version 2>&1)"
"${python}" -m venv "${venv}"
"${venv}/bin/python" -m pip install --upgrade pip
# torch is a multi-GB CUDA build; the wheels for python 3.11 lie on local disk.
"${venv}/bin/python" -m pip install torch==2.14.1 torchvision==0.29.1 nnunetv2

if [[ ! -x "${venv}/bin/nnUNetv2_plan_experiment" ]]; then
    echo "error: nnUNetv2_plan_experiment missing after install" >&2
    exit 1
fi
echo "peer env ready in $(( $(date +%s) - start )) s: ${venv}"
