"""A dataset whose label files are stored flipped or with permuted axes relative to their images
trains, validates and finds the best configuration exactly as the same dataset stored aligned:
every stage that reads a reference label (preprocessing, fold validation, find-best and its
post-processing) lands it on the image grid the same way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.io.samples import copy_sample_subset
from tests.budget import tiny

pytestmark = pytest.mark.slow


def _train_and_choose(ds: Path, work: Path) -> tuple[dict, dict]:
    common = ["--work-dir", str(work), "-q"]
    assert main(["plan", str(ds), "--workers", "1", *common]) == 0
    assert (
        main(
            [
                "train",
                ds.name,
                "3d_fullres",
                "0",
                *tiny(),
                *common,
            ]
        )
        == 0
    )
    fold = work / ds.name / "models" / "3d_fullres" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert main(["find-best", ds.name, "--workers", "1", *common]) == 0
    return summary, json.loads((work / ds.name / "inference.json").read_text())


def test_flipped_labels_give_the_results_of_aligned_ones(tmp_path: Path) -> None:
    aligned = copy_sample_subset(tmp_path / "aligned" / "hippo", 5)
    turned = copy_sample_subset(tmp_path / "turned" / "hippo", 5)
    labels = sorted((turned / "labelsTr").glob("*.nii.gz"))
    for path, orientation in zip(labels, ["LPS", "SAR", "RAI", "PIL", "RAS"], strict=True):
        sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(path)), orientation), str(path))
    base_summary, base_info = _train_and_choose(aligned, tmp_path / "aligned" / "work")
    summary, info = _train_and_choose(turned, tmp_path / "turned" / "work")
    assert summary == base_summary
    assert base_summary["foreground_mean"] is not None
    assert info["cv_dice"] == base_info["cv_dice"]
    assert info["postprocessing"] == base_info["postprocessing"]
