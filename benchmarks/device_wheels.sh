#!/usr/bin/env bash
# Wheels for running the GPU check on the lent device machine, which has no network and whose
# python3 (3.12, torch with CUDA, onnx, onnxruntime, scipy, scikit-image, matplotlib, tqdm) lacks
# autoseg's other dependencies. Run here (where pip can download); it fills two ignored folders,
# because the device tool carries at most 64 MiB per call and SimpleITK alone is ~53 MB:
#   .whl-a/  SimpleITK
#   .whl-b/  monai, batchgenerators, pydicom, connected-components-3d
# Then two back-to-back `run` calls (the machine stays warm between them; the repo's ignored
# .site/ folder is kept between calls):
#   carry [".whl-a"]: python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl-a/*.whl
#   carry [".whl-b"]: python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl-b/*.whl
#                     && PYTHONPATH=.site:. python3 -m pytest -q -m cuda tests -p no:cacheprovider;
#                     PYTHONPATH=.site:. python3 benchmarks/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
get() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$@"
}
get .whl-a SimpleITK==2.5.7
get .whl-b monai==1.6.1 batchgenerators==0.25.5 pydicom==3.0.2 connected-components-3d==4.1.1
du -sh .whl-a .whl-b
