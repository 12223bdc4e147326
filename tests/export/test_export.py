"""ONNX export and the onnxruntime backend against the torch backend; TensorRT's absence fails
cleanly (it cannot be installed on these machines)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg._optional import get_tensorrt
from autoseg.cli import main
from autoseg.errors import MissingDependencyError
from autoseg.io.image import read_image
from autoseg.io.samples import sample_dataset_dir

CASES = sorted((sample_dataset_dir() / "imagesTs").glob("*.nii.gz"))[:3]


def _cli(work: Path, *args: str) -> int:
    return main([*args, "--work-dir", str(work), "-q"])


def _predict(work: Path, inputs: Path, out: Path, config: str, backend: str, *extra: str) -> int:
    """``autoseg predict`` of ``inputs`` on the CPU with the hippo model of ``config``."""
    where = ["-i", str(inputs), "-o", str(out), "-d", "hippo", "-c", config]
    return _cli(work, "predict", *where, "--backend", backend, "--device", "cpu", *extra)


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    src = tmp_path / "in"
    src.mkdir()
    for p in CASES:
        shutil.copy(p, src / p.name)
    return src


@pytest.mark.parametrize("config", ["3d_fullres", "2d"])
def test_onnx_backend_matches_torch(trained_copy: Path, inputs: Path, tmp_path: Path, config: str) -> None:
    copy = tmp_path / "exported"
    assert _cli(trained_copy, "export", "hippo", config, "--format", "onnx", "-o", str(copy)) == 0
    model_dir = trained_copy / "hippo" / "models" / config
    assert (model_dir / "fold_all" / "model.onnx").is_file()
    assert (copy / "fold_all" / "model.onnx").is_file()
    side = json.loads((model_dir / "export.json").read_text())
    assert side["configuration"] == config
    assert side["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}
    assert (side["activation"], side["regions_class_order"]) == ("softmax", None)
    assert side["output_names"] == ["background", "Anterior", "Posterior"]
    assert side["folds"] == {"all": "fold_all/model.onnx"}
    assert side["plan"]["configurations"][config]["patch_size"] == side["patch_size"]
    assert json.loads((copy / "export.json").read_text()) == side

    outs = {}
    for backend in ("torch", "onnx"):
        out = tmp_path / backend
        flags = ("--precision", "fp32", "--save-probabilities")
        assert _predict(trained_copy, inputs, out, config, backend, *flags) == 0
        outs[backend] = out
    for p in CASES:
        a = read_image(outs["torch"] / p.name).array
        b = read_image(outs["onnx"] / p.name).array
        stem = p.name[:-7]
        with np.load(outs["torch"] / f"{stem}.npz") as za, np.load(outs["onnx"] / f"{stem}.npz") as zb:
            # this model is trained for 2 iterations, so near-ties are everywhere: labels must be
            # equal wherever the top two classes are further apart than the backends differ
            top2 = np.sort(za["probabilities"].astype(np.float32), axis=0)[-2:]
            clear = top2[1] - top2[0] > 2e-3
            np.testing.assert_array_equal(a[clear], b[clear])
            assert float(np.mean(a != b)) < 1e-3
            # float16 on disk: a 1e-6 difference can round to neighbouring float16 values, one
            # step apart (up to 4.9e-4 near 1.0); the 1e-4 bound is checked in float32 below
            diff = np.abs(za["probabilities"].astype(np.float32) - zb["probabilities"].astype(np.float32))
            assert float(diff.max()) <= 1e-3


def test_onnx_probabilities_within_1e4_in_float32(trained_copy: Path) -> None:
    """The acceptance bound, on the float32 probabilities before they are stored."""
    import torch

    from autoseg.export.onnx import export_onnx
    from autoseg.inference.model import load_model
    from autoseg.inference.sliding_window import predict_logits

    model_dir = trained_copy / "hippo" / "models" / "3d_fullres"
    export_onnx(model_dir)
    t = load_model(model_dir, backend="torch")
    o = load_model(model_dir, backend="onnx")
    data = torch.from_numpy(read_image(CASES[0]).array[None].astype(np.float32))
    data = (data - data.mean()) / data.std()
    pa = torch.softmax(predict_logits(t.networks[0], data, t.config), 0)
    pb = torch.softmax(predict_logits(o.networks[0], data, o.config), 0)
    diff = float((pa - pb).abs().max())
    assert diff < 1e-4
    top2 = pa.sort(0).values[-2:]
    clear = top2[1] - top2[0] > 2 * diff  # where an argmax flip is impossible at this difference
    assert torch.equal(pa.argmax(0)[clear], pb.argmax(0)[clear])


def test_onnx_backend_without_export_is_a_clear_error(
    trained_copy: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert not list((trained_copy / "hippo" / "models" / "2d").glob("fold_*/model.onnx"))  # never exported
    assert _predict(trained_copy, inputs, tmp_path / "o", "2d", "onnx") == 2
    assert "autoseg export" in capsys.readouterr().err


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None,
    reason="TensorRT is installed here; this test is for machines without it",
)
def test_tensorrt_absent_fails_cleanly(
    trained_copy: Path, inputs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(MissingDependencyError, match=r"pip install 'autoseg\[tensorrt\]'"):
        get_tensorrt()
    engine_dir = trained_copy / "hippo" / "models" / "3d_fullres"
    before = sorted(p.name for p in engine_dir.rglob("*"))
    assert _cli(trained_copy, "export", "hippo", "3d_fullres", "--format", "tensorrt") == 2
    err = capsys.readouterr().err
    assert "TensorRT is not installed" in err
    assert len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in engine_dir.rglob("*")) == before  # nothing written
    assert _predict(trained_copy, inputs, tmp_path / "o", "3d_fullres", "tensorrt") == 2
    assert "TensorRT is not installed" in capsys.readouterr().err
