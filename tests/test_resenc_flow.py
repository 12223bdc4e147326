"""The ResEnc presets through the command line: ``plan --preset`` on the shipped sample gives the
golden plan; a preset configuration (ResEnc M as asked for, and ``3d_fullres_resenc`` as planned
by default) trains on 3d_fullres's preprocessed data (no second store), predicts, exports to ONNX
and predicts the same with ``--backend onnx``. (find-best needs nothing
new: it scores every folder under ``models/``, whatever the configuration's name.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.io.image import read_image
from autoseg.io.samples import copy_sample_subset, sample_dataset_dir
from autoseg.pipeline import preprocess
from autoseg.planning.plan import Plan
from autoseg.preprocessing.store import store_key
from autoseg.workspace import Workspace
from tests.budget import tiny

PLANS_DIR = Path(__file__).resolve().parents[1] / "plans"
CONFIG = "3d_fullres_resenc_m"
CASE = sorted((sample_dataset_dir() / "imagesTs").glob("*.nii.gz"))[0]


def _cli(work: Path, *args: str) -> int:
    return main([*args, "--work-dir", str(work), "-q"])


@pytest.fixture
def cpu_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default budget of a machine without CUDA (8 GB), as the golden plans were made."""
    monkeypatch.setattr("autoseg._device.default_gpu_memory_gb", lambda: 8.0)


def test_plan_with_presets_on_the_sample_is_the_golden_plan(tmp_path: Path, cpu_budget: None) -> None:
    work = tmp_path / "work"
    args = (
        "plan",
        str(sample_dataset_dir()),
        "--preset",
        "resenc_m",
        "resenc_l",
        "--preprocess-workers",
        "2",
    )
    assert _cli(work, *args) == 0
    written = json.loads((work / "hippocampus_sample" / "plans.json").read_text())
    assert written == json.loads((PLANS_DIR / "hippocampus_sample" / "plans_resenc.json").read_text())
    cfg = written["configurations"][CONFIG]
    # hippocampus sample (32 cases of ~36x50x35): the default patch, 23 samples a batch instead of
    # the default's floor of 2 (5 % of the dataset is < 1 patch), 4 stages of 1, 3, 4, 6 blocks
    assert (cfg["patch_size"], cfg["batch_size"]) == ([40, 56, 40], 23)
    assert written["configurations"]["3d_fullres"]["batch_size"] == 2
    assert cfg["network"]["blocks_per_stage"] == [1, 3, 4, 6]


@pytest.fixture(scope="module", params=[CONFIG, "3d_fullres_resenc"])
def resenc_work(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """4 sample cases planned with ``--preset resenc_m`` (``3d_fullres_resenc`` comes without
    asking), one preset configuration trained for 2 iterations: (work folder, configuration)."""
    config: str = request.param
    root = tmp_path_factory.mktemp("resenc")
    ds = copy_sample_subset(root / "hippo", 4)
    work = root / "work"
    assert _cli(work, "plan", str(ds), "--preset", "resenc_m", "--preprocess-workers", "1") == 0
    assert _cli(work, "train", "hippo", config, "all", *tiny()) == 0
    return work, config


def test_trains_on_the_data_of_3d_fullres(resenc_work: tuple[Path, str]) -> None:
    work, config = resenc_work
    plan = Plan.load(work / "hippo" / "plans.json")
    stores = [p.name for p in (work / "hippo" / "preprocessed").iterdir() if p.is_dir()]
    # one store, and it is the one 3d_fullres would use: the preset did not preprocess anew
    assert stores == [store_key(plan, plan.configuration("3d_fullres"))]
    model = work / "hippo" / "models" / config
    assert (model / "fold_all" / "checkpoint_final.pt").is_file()
    assert Plan.load(model / "plans.json").configuration(config).network.encoder == "residual"


def test_preprocessing_every_configuration_lists_each_store_once(
    resenc_work: tuple[Path, str], tmp_path: Path
) -> None:
    work = tmp_path / "work"
    shutil.copytree(resenc_work[0], work)
    plan = Plan.load(work / "hippo" / "plans.json")
    assert {"3d_fullres", "3d_fullres_resenc", "3d_fullres_resenc_m", "2d"} <= set(plan.configurations)
    folders = preprocess("hippo", Workspace(work), configurations=None, workers=1)
    expected = [store_key(plan, plan.configuration(c)) for c in ("3d_fullres", "2d")]
    assert [f.name for f in folders] == expected


def test_predict_export_and_onnx_agree(resenc_work: tuple[Path, str], tmp_path: Path) -> None:
    trained, config = resenc_work
    work = tmp_path / "work"
    shutil.copytree(trained, work)
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(CASE, src / CASE.name)
    assert _cli(work, "export", "hippo", config, "--format", "onnx") == 0
    assert (work / "hippo" / "models" / config / "fold_all" / "model.onnx").is_file()
    out = {}
    for backend in ("torch", "onnx"):
        out[backend] = tmp_path / backend
        flags = ("--backend", backend, "--precision", "fp32", "--device", "cpu", "--no-tta")
        args = ("predict", "-i", str(src), "-o", str(out[backend]), "-d", "hippo", "-c", config, *flags)
        assert _cli(work, *args, "--save-probabilities") == 0
    a = read_image(out["torch"] / CASE.name).array
    b = read_image(out["onnx"] / CASE.name).array
    assert a.shape == read_image(CASE).array.shape
    stem = CASE.name[: -len(".nii.gz")]
    with np.load(out["torch"] / f"{stem}.npz") as pa, np.load(out["onnx"] / f"{stem}.npz") as pb:
        p, q = pa["probabilities"].astype(np.float32), pb["probabilities"].astype(np.float32)
    assert float(np.abs(p - q).max()) <= 1e-3  # float16 on disk (see tests/export)
    top2 = np.sort(p, axis=0)[-2:]
    clear = top2[1] - top2[0] > 2e-3  # 2 iterations of training: near-ties everywhere else
    np.testing.assert_array_equal(a[clear], b[clear])
