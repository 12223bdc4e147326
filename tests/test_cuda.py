"""CUDA paths (skipped without a GPU; benchmarks/gpu_check.sh runs them on a GPU machine).

The same code runs on the CPU in the other tests; here the device is CUDA: AMP training steps
with the gradient scaler, prediction with the blending on the GPU, and the out-of-memory
fallback that moves the blending to the CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg._device import cuda_available
from autoseg.cli import main
from autoseg.io.samples import sample_dataset_dir

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")]


def test_train_and_predict_on_cuda(trained_work: Path, tmp_path: Path) -> None:
    common = ["--work-dir", str(trained_work), "-q"]
    assert main(["train", "hippo", "3d_fullres", "all", "--epochs", "1", "--iters-per-epoch", "3",
                 "--val-iters", "1", "--device", "cuda", "--workers", "1", *common]) == 0
    out = tmp_path / "out"
    assert main(["predict", "-i", str(sample_dataset_dir() / "imagesTs"), "-o", str(out), "-d",
                 "hippo", "-c", "3d_fullres", "--device", "cuda", *common]) == 0
    assert len(list(out.glob("*.nii.gz"))) == 8


def test_out_of_memory_falls_back_to_cpu_blending(trained_work: Path, monkeypatch) -> None:
    from autoseg.inference import predictor as pred_mod
    from autoseg.inference.model import load_model
    from autoseg.inference.predictor import Predictor

    model = load_model(trained_work / "hippo" / "models" / "3d_fullres", device="cuda")
    real = pred_mod.predict_logits
    calls = []

    def flaky(net, data, **kw):
        calls.append(kw.get("output_device"))
        if kw.get("output_device") is None:
            raise torch.cuda.OutOfMemoryError("simulated")
        return real(net, data, **kw)

    monkeypatch.setattr(pred_mod, "predict_logits", flaky)
    p = Predictor([model], device=torch.device("cuda"), amp_dtype=torch.float16)
    out = p._logits(model, torch.zeros(1, 40, 56, 40))
    assert calls == [None, "cpu"]
    assert out.device.type == "cpu"
    assert np.isfinite(out.numpy()).all()
