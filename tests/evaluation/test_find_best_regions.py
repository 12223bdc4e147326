"""find_best with region plans (``{"background": 0, "hippocampus": [1, 2], "anterior": 1}``
painted ``[2, 1]``): configurations scored per region, pairs ensembled by averaging sigmoid
probabilities and painting the mean, the winner's post-processing decided per region.

Two configurations each miss part of a region, unsure where the other is sure: only their
ensemble is right everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.evaluation.find_best import ensemble_labels, find_best
from autoseg.inference.probabilities import ProbabilityMap
from autoseg.io.image import read_image, write_image
from autoseg.io.samples import copy_sample_subset
from autoseg.planning.plan import Plan
from tests.golden import GOLDEN_PLAN

REGIONS = {"background": 0, "hippocampus": [1, 2], "anterior": 1}


def _region_plan() -> Plan:
    d = Plan.load(GOLDEN_PLAN).to_dict()
    d["labels"], d["regions_class_order"] = REGIONS, [2, 1]
    return Plan.from_dict(d)


def _upper(ref: np.ndarray) -> np.ndarray:
    m = np.zeros(ref.shape, bool)
    m[: ref.shape[0] // 2] = True
    return m


def _config_a(ref: np.ndarray) -> np.ndarray:
    """Sure of hippocampus; anterior only just missed (0.45) in the upper half."""
    hip = np.where(ref > 0, 0.9, 0.1)
    ant = np.where(ref == 1, np.where(_upper(ref), 0.45, 0.9), 0.1)
    return np.stack([hip, ant]).astype(np.float32)


def _config_b(ref: np.ndarray) -> np.ndarray:
    """Hippocampus only just missed (0.4) in the lower half, anterior there unsure (0.3)."""
    lower = ~_upper(ref)
    hip = np.where(ref > 0, np.where(lower, 0.4, 0.9), 0.1)
    ant = np.where(ref == 1, np.where(lower, 0.3, 0.7), 0.1)
    return np.stack([hip, ant]).astype(np.float32)


def test_region_pairs_average_sigmoids_then_paint() -> None:
    scheme = _region_plan().label_scheme
    a = np.array([[0.9, 0.9, 0.2], [0.45, 0.2, 0.9]]).reshape(2, 3, 1, 1)
    b = np.array([[0.4, 0.2, 0.2], [0.7, 0.2, 0.9]]).reshape(2, 3, 1, 1)
    # voxel 0: both regions above 0.5 -> anterior painted last (1); voxel 1: hippocampus only (2);
    # voxel 2: anterior alone (0.9) without hippocampus (0.2) is still painted 1
    assert ensemble_labels([a, b], scheme).ravel().tolist() == [1, 2, 1]


@pytest.fixture
def dataset_dir(tmp_path: Path) -> Path:
    source = copy_sample_subset(tmp_path / "hippo", 2)
    plan = _region_plan()
    d = tmp_path / "work" / "hippo"
    d.mkdir(parents=True)
    (d / "source.json").write_text(json.dumps({"dataset_folder": str(source)}))
    for config, make in (("3d_fullres", _config_a), ("2d", _config_b)):
        plan.save(d / "models" / config / "plans.json")
        val = d / "models" / config / "fold_0" / "validation"
        for ref_path in sorted((source / "labelsTr").glob("*.nii.gz")):
            img = read_image(ref_path)
            probs = make(np.rint(img.array).astype(np.uint8))
            cid = ref_path.name.removesuffix(".nii.gz")
            write_image(plan.label_scheme.to_label_map(probs), img.geometry, val / f"{cid}.nii.gz")
            ProbabilityMap.of(probs, plan.label_scheme).save(val / f"{cid}.npz")
        (val / "summary.json").write_text("{}")
    return d


def test_find_best_scores_regions_and_picks_the_ensemble(dataset_dir: Path) -> None:
    info = find_best(dataset_dir)
    report = info["report"]
    assert report["labels"] == [[1, 2], 1]
    assert set(report["candidates"]["3d_fullres"]["mean"]) == {"hippocampus", "anterior"}
    assert report["candidates"]["3d_fullres"]["mean"]["hippocampus"] == 1.0
    assert report["candidates"]["3d_fullres"]["mean"]["anterior"] < 1.0
    assert report["candidates"]["2d"]["mean"]["hippocampus"] < 1.0
    assert info["best"] == "2d__3d_fullres"
    assert info["cv_dice"]["2d__3d_fullres"] == 1.0
    for ens in sorted((dataset_dir / "ensembles" / "2d__3d_fullres").glob("*.nii.gz")):
        source = Path(json.loads((dataset_dir / "source.json").read_text())["dataset_folder"])
        ref = read_image(source / "labelsTr" / ens.name).array
        np.testing.assert_array_equal(read_image(ens).array, ref)
    assert report["postprocessing"]["labels"] == [[1, 2], 1]
    assert set(report["postprocessing"]["per_label"]) == {"hippocampus", "anterior"}


def test_plans_with_other_label_schemes_are_refused(dataset_dir: Path) -> None:
    from autoseg.errors import ModelError

    plain = Plan.load(GOLDEN_PLAN)
    plain.save(dataset_dir / "models" / "2d" / "plans.json")
    with pytest.raises(
        ModelError,
        match=r"plans have different labels \(2d: \{'background': 0, 'Anterior': 1, 'Posterior': 2\}; "
        r"3d_fullres: .*'hippocampus': \[1, 2\]",
    ):
        find_best(dataset_dir)
