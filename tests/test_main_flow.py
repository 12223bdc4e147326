"""The flow a user runs, with default options, on the shipped sample: plan -> train two
configurations x 5 folds (tiny budgets) -> find-best -> predict with no ``-c``/``-f`` -> evaluate.

Every ensembled prediction is checked against an ensemble computed here, independently of the
predictor, from single-model outputs: ``predict -c C -f k --save-probabilities`` of each member.
Folds are averaged as logits (nnU-Net's rule): the logits of fold k are ``log p_k`` plus a
per-voxel constant, so the fold ensemble is ``softmax(mean_k log p_k)``; configurations are
averaged as probabilities, then argmax, then the chosen post-processing. The saved probabilities
are float16, so labels must agree wherever the reference's top two classes are further apart
than float16 rounding could move them (and those voxels must be nearly all of them).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.inference.postprocess import Postprocessing, apply_postprocessing
from autoseg.io.image import read_image
from autoseg.io.samples import copy_sample_subset, sample_dataset_dir
from tests.budget import tiny

pytestmark = pytest.mark.slow

CONFIGS = ("2d", "3d_fullres")
FOLDS = ("0", "1", "2", "3", "4")
N_CASES = 10  # 5 folds of 2 validation cases
#: In probability (or log-probability) units: far beyond float16 rounding of the saved values.
MARGIN = 2e-3
#: Predictions in fp32 without TTA: cheap, and comparable with the ONNX backend (fp32).
FAST = ("--precision", "fp32", "--no-tta")


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Plan, train 2d and 3d_fullres on every fold, find-best; then each member's probabilities
    on three held-out scans (one single-fold prediction per configuration and fold)."""
    root = tmp_path_factory.mktemp("flow")
    ds = copy_sample_subset(root / "hippo", N_CASES)
    work = root / "work"
    common = ["--work-dir", str(work), "-q"]
    assert main(["plan", str(ds), "--workers", "1", *common]) == 0
    for config in CONFIGS:
        for fold in FOLDS:
            assert (
                main(
                    [
                        "train",
                        "hippo",
                        config,
                        fold,
                        *tiny(),
                        *common,
                    ]
                )
                == 0
            )
    assert main(["find-best", "hippo", "--workers", "1", *common]) == 0
    scans = root / "scans"
    scans.mkdir()
    for p in sorted((sample_dataset_dir() / "imagesTs").glob("*.nii.gz"))[:3]:
        shutil.copy(p, scans / p.name)
    members: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for config in CONFIGS:
        for fold in FOLDS:
            out = root / "members" / f"{config}_{fold}"
            assert _predict(work, scans, out, "-c", config, "-f", fold, "--save-probabilities", *FAST) == 0
            members[config, fold] = _probabilities(out)
    return {
        "work": work,
        "scans": scans,
        "members": members,
        "ds_dir": work / "hippo",
        "labels": ds / "labelsTr",
    }


def _predict(work: Path, src: Path, out: Path, *extra: str) -> int:
    return main(
        ["predict", "-i", str(src), "-o", str(out), "--work-dir", str(work), "--device", "cpu", "-q", *extra]
    )


def _probabilities(out: Path) -> dict[str, np.ndarray]:
    probs = {}
    for npz in sorted(out.glob("*.npz")):
        with np.load(npz, allow_pickle=False) as z:
            probs[npz.name.removesuffix(".npz")] = z["probabilities"].astype(np.float32)
            assert list(z["label_values"]) == [0, 1, 2]
    return probs


def _independent_ensemble(
    members: dict, chosen: dict[str, list[str]], case: str
) -> tuple[np.ndarray, np.ndarray]:
    """Class map and top-two margin of the ensemble of ``chosen`` (configuration -> folds),
    from the members' saved probabilities alone."""
    per_config = []
    for config, folds in chosen.items():
        logs = np.mean([np.log(np.clip(members[config, f][case], 1e-12, None)) for f in folds], 0)
        e = np.exp(logs - logs.max(0, keepdims=True))
        per_config.append(e / e.sum(0, keepdims=True))
    mean = np.mean(per_config, 0)
    top2 = np.sort(mean, axis=0)[-2:]
    return mean.argmax(0), top2[1] - top2[0]


def _check_ensemble(
    flow: dict,
    out: Path,
    args: tuple[str, ...],
    chosen: dict[str, list[str]],
    pp: Postprocessing | None,
    *,
    work: Path | None = None,
) -> None:
    """``predict *args`` into ``out`` equals the independent ensemble of ``chosen`` followed by
    ``pp``: its raw label maps (``--no-postprocessing``) equal the independent ensemble wherever
    that is clear of float16 rounding, and its output is exactly ``pp`` applied to them."""
    work = work or flow["work"]
    assert _predict(work, flow["scans"], out, *args) == 0
    raw = out
    if pp is not None and not pp.is_identity:
        raw = out.with_name(out.name + "_raw")
        assert _predict(work, flow["scans"], raw, *args, "--no-postprocessing") == 0
    cases = sorted(p.name.removesuffix(".nii.gz") for p in flow["scans"].glob("*.nii.gz"))
    for folder in (out, raw):
        assert sorted(p.name for p in folder.glob("*.nii.gz")) == [f"{c}.nii.gz" for c in cases]
    for case in cases:
        classes, margin = _independent_ensemble(flow["members"], chosen, case)
        expected = np.array([0, 1, 2], np.uint8)[classes]
        got_raw = read_image(raw / f"{case}.nii.gz")
        got = read_image(out / f"{case}.nii.gz")
        scan = read_image(flow["scans"] / f"{case}.nii.gz")
        assert got.geometry.same_grid(scan.geometry, rtol=0, atol=1e-5)
        clear = margin > MARGIN
        assert clear.mean() > 0.95, f"{case}: too few clear voxels ({clear.mean():.3f})"
        np.testing.assert_array_equal(got_raw.array[clear], expected[clear])
        want = got_raw.array if pp is None else apply_postprocessing(got_raw.array, pp)
        np.testing.assert_array_equal(got.array, want)


def _inference(flow: dict) -> dict:
    return json.loads((flow["ds_dir"] / "inference.json").read_text())


def _chosen(info: dict, folds: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    return {c: list(folds or info["folds"][c]) for c in info["configurations"]}


def test_find_best_saw_every_fold_and_the_ensemble(flow: dict) -> None:
    info = _inference(flow)
    assert set(info["cv_dice"]) == {"2d", "3d_fullres", "2d__3d_fullres"}
    assert info["report"]["n_cases"] == N_CASES
    assert info["best"] in info["cv_dice"]
    for config in info["configurations"]:
        assert info["folds"][config] == list(FOLDS)


def test_default_predict_is_find_best_choice_then_evaluate(flow: dict, tmp_path: Path) -> None:
    """No -c/-f: find-best's configurations, all five folds, its post-processing."""
    info = _inference(flow)
    out = tmp_path / "out"
    _check_ensemble(flow, out, FAST, _chosen(info), Postprocessing.from_dict(info["postprocessing"]))
    ref = tmp_path / "ref"
    ref.mkdir()
    for p in out.glob("*.nii.gz"):
        shutil.copy(sample_dataset_dir() / "labelsTs" / p.name, ref / p.name)
    summary_path = tmp_path / "eval" / "summary.json"
    assert main(["evaluate", "--pred", str(out), "--ref", str(ref), "-o", str(summary_path), "-q"]) == 0
    summary = json.loads(summary_path.read_text())
    assert summary["settings"]["n_cases"] == 3
    assert set(summary["per_label"]) == {"1", "2"}


def test_default_predict_with_an_ensemble_choice(flow: dict, tmp_path: Path) -> None:
    """find-best's choice is whatever the tiny models scored best; here the choice is made the
    pairwise ensemble with both post-processing steps, as find-best writes it for an ensemble."""
    info = _inference(flow)
    info.update(
        best="2d__3d_fullres",
        configurations=list(CONFIGS),
        folds={c: list(FOLDS) for c in CONFIGS},
        postprocessing={"foreground_largest_only": True, "largest_only_labels": [1, 2]},
    )
    work = tmp_path / "work"
    shutil.copytree(flow["work"], work)
    (work / "hippo" / "inference.json").write_text(json.dumps(info))
    _check_ensemble(flow, tmp_path / "out", FAST, _chosen(info), Postprocessing(True, (1, 2)), work=work)


def test_folds_without_configurations_override_find_best(flow: dict, tmp_path: Path) -> None:
    info = _inference(flow)
    _check_ensemble(
        flow,
        tmp_path / "out",
        ("-f", "0", "1", *FAST),
        _chosen(info, ("0", "1")),
        Postprocessing.from_dict(info["postprocessing"]),
    )


@pytest.mark.parametrize("folds", [("0", "1"), FOLDS], ids=["2folds", "5folds"])
def test_two_configurations_several_folds(flow: dict, tmp_path: Path, folds: tuple[str, ...]) -> None:
    _check_ensemble(
        flow, tmp_path / "out", ("-c", *CONFIGS, "-f", *folds, *FAST), {c: list(folds) for c in CONFIGS}, None
    )


def _model_postprocessing(flow: dict, config: str) -> Postprocessing | None:
    path = flow["ds_dir"] / "models" / config / "postprocessing.json"
    return Postprocessing.load(path) if path.is_file() else None


def test_onnx_backend_several_folds(flow: dict, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    work = tmp_path / "work"
    shutil.copytree(flow["work"], work)
    assert main(["export", "hippo", "3d_fullres", "-f", "0", "1", "--work-dir", str(work), "-q"]) == 0
    _check_ensemble(
        flow,
        tmp_path / "out",
        ("--backend", "onnx", "-c", "3d_fullres", "-f", "0", "1", "--no-tta"),
        {"3d_fullres": ["0", "1"]},
        _model_postprocessing(flow, "3d_fullres"),
        work=work,
    )


def test_probabilities_are_written_where_label_maps_exist(flow: dict, tmp_path: Path) -> None:
    """A case is done only when every requested output exists: asking for probabilities into a
    folder that has the label maps writes the probabilities (and keeps nothing stale)."""
    out = tmp_path / "out"
    args = ("-c", "3d_fullres", "-f", "0", *FAST)
    assert _predict(flow["work"], flow["scans"], out, *args) == 0
    assert not list(out.glob("*.npz"))
    assert _predict(flow["work"], flow["scans"], out, *args, "--save-probabilities") == 0
    probs = _probabilities(out)
    assert sorted(probs) == sorted(p.name.removesuffix(".nii.gz") for p in flow["scans"].glob("*"))
    for case, p in probs.items():
        np.testing.assert_array_equal(p, flow["members"]["3d_fullres", "0"][case])
