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


def test_train_and_predict_on_cuda(trained_copy: Path, tmp_path: Path) -> None:
    common = ["--work-dir", str(trained_copy), "-q"]
    assert (
        main(
            [
                "train",
                "hippo",
                "3d_fullres",
                "all",
                "--epochs",
                "1",
                "--iters-per-epoch",
                "3",
                "--val-iters",
                "1",
                "--device",
                "cuda",
                "--workers",
                "1",
                *common,
            ]
        )
        == 0
    )
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "-i",
                str(sample_dataset_dir() / "imagesTs"),
                "-o",
                str(out),
                "-d",
                "hippo",
                "-c",
                "3d_fullres",
                "--device",
                "cuda",
                *common,
            ]
        )
        == 0
    )
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


def test_ensemble_of_folds_and_configurations_on_cuda(trained_work: Path) -> None:
    """Folds summed in place and configurations averaged, on the GPU: the label map equals the
    CPU's (both fp32) except at near-ties; the fold sum of a network with itself is that network."""
    from dataclasses import replace

    from autoseg.inference.model import load_model
    from autoseg.inference.predictor import Predictor
    from autoseg.io.case import LoadedCase
    from autoseg.io.image import read_image

    img = read_image(sorted((sample_dataset_dir() / "imagesTs").glob("*.nii.gz"))[0])
    case = LoadedCase("case", img.array[None].astype(np.float32), None, img.geometry)
    outputs = {}
    for device in ("cpu", "cuda"):
        models = [
            load_model(trained_work / "hippo" / "models" / c, device=device) for c in ("3d_fullres", "2d")
        ]
        models[0] = replace(models[0], networks=models[0].networks * 3)
        p = Predictor(models, device=torch.device(device), amp_dtype=None)
        outputs[device] = p.predict(case, with_probabilities=True)
    (cpu_labels, cpu_probs), (gpu_labels, gpu_probs) = outputs["cpu"], outputs["cuda"]
    assert np.abs(cpu_probs.astype(np.float32) - gpu_probs.astype(np.float32)).max() < 2e-3
    assert (cpu_labels != gpu_labels).mean() < 1e-3
