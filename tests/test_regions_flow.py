"""End to end on nnU-Net's sparse "regions + ignore" scenario (hippocampus [1, 2] and anterior 1
painted [2, 1], every voxel outside a few slices marked ignore 3): plan, train a fold briefly,
its validation, find-best, predict with probabilities, evaluate with --dataset-json. Accuracy is
not the point (two iterations): what each stage writes is, and that no output holds the ignore
label."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from autoseg.cli import main
from autoseg.inference.probabilities import ProbabilityMap
from autoseg.io.image import read_image
from autoseg.io.samples import make_scenario_dataset
from autoseg.planning.plan import Plan
from tests.budget import tiny

NAMES = ["hippocampus", "anterior"]


def test_regions_with_ignore_from_training_to_evaluation(tmp_path: Path) -> None:
    ds = make_scenario_dataset(tmp_path / "sparse", "regions_ignore", 4)
    work = tmp_path / "work"
    common = ["--work-dir", str(work), "-q"]
    assert main(["plan", str(ds), "--preprocess-workers", "1", *common]) == 0
    train = ["train", "sparse", "2d", "0", "--n-folds", "2", *tiny(batch_size=4)]
    assert main([*train, *common]) == 0
    plan = Plan.load(work / "sparse" / "plans.json")
    scheme = plan.label_scheme
    val = work / "sparse" / "models" / "2d" / "fold_0" / "validation"
    summary = json.loads((val / "summary.json").read_text())
    assert list(summary["mean"]) == NAMES
    val_maps = sorted(val.glob("*.nii.gz"))
    assert len(val_maps) == 2
    for path in val_maps:
        labels = read_image(path).array
        assert set(np.unique(labels)) <= {0, 1, 2}  # never the ignore label 3
        npz = ProbabilityMap.load(path.with_name(path.name.replace(".nii.gz", ".npz")), scheme=scheme)
        assert (npz.activation, list(npz.channel_names)) == ("sigmoid", NAMES)

    assert main(["find-best", "sparse", *common]) == 0
    choice = json.loads((work / "sparse" / "inference.json").read_text())
    assert choice["report"]["labels"] == [[1, 2], 1]
    assert list(choice["report"]["postprocessing"]["per_label"]) == NAMES

    src = tmp_path / "scans"
    src.mkdir()
    for scan in sorted((ds / "imagesTr").glob("*.nii.gz"))[:2]:
        shutil.copy(scan, src / scan.name.replace("_0000", ""))
    out = tmp_path / "out"
    predict = ["predict", "-i", str(src), "-o", str(out), "--save-probabilities", "--device", "cpu"]
    assert main([*predict, *common]) == 0
    predicted = sorted(out.glob("*.nii.gz"))
    assert len(predicted) == 2
    for path in predicted:
        labels = read_image(path).array
        assert set(np.unique(labels)) <= {0, 1, 2}
        npz = ProbabilityMap.load(path.with_name(path.name.replace(".nii.gz", ".npz")), scheme=scheme)
        assert npz.probabilities.shape == (2, *labels.shape)

    refs = tmp_path / "refs"
    refs.mkdir()
    for path in predicted:
        shutil.copy(ds / "labelsTr" / path.name, refs / path.name)
    report = tmp_path / "eval" / "summary.json"
    evaluate = ["evaluate", "--pred", str(out), "--ref", str(refs), "-o", str(report)]
    assert main([*evaluate, "--dataset-json", str(ds / "dataset.json"), "-q"]) == 0
    scored = json.loads(report.read_text())
    assert list(scored["per_label"]) == NAMES
    assert scored["settings"]["label_scheme"]["labels"]["ignore"] == 3
