"""Overlay pictures: one PNG per case on the slice with the most reference foreground, outlines
drawn on the scan's grid whatever the orientation the label files were stored in."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.errors import DatasetError
from autoseg.evaluation.overlay import _best_slice, save_overlays
from autoseg.io.samples import sample_dataset_dir

SAMPLE = sample_dataset_dir()
CASES = [p.name.removesuffix(".nii.gz") for p in sorted((SAMPLE / "labelsTs").glob("*.nii.gz"))[:2]]
PNG = b"\x89PNG\r\n\x1a\n"


def test_best_slice_has_the_most_reference_foreground():
    ref = np.zeros((4, 5, 5), np.uint8)
    ref[1, :2] = 1
    ref[3, :4] = 2
    pred = np.zeros_like(ref)
    pred[0] = 1
    assert _best_slice(ref, pred) == 3
    assert _best_slice(np.zeros_like(ref), pred) == 0  # no reference: the prediction decides


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, Path]:
    out = {name: tmp_path / name for name in ("images", "refs", "preds", "turned")}
    for d in out.values():
        d.mkdir()
    for cid in CASES:
        shutil.copy(SAMPLE / "imagesTs" / f"{cid}.nii.gz", out["images"])
        shutil.copy(SAMPLE / "labelsTs" / f"{cid}.nii.gz", out["refs"])
        label = sitk.ReadImage(str(SAMPLE / "labelsTs" / f"{cid}.nii.gz"))
        sitk.WriteImage(label, str(out["preds"] / f"{cid}.nii.gz"))
        sitk.WriteImage(sitk.DICOMOrient(label, "SAR"), str(out["turned"] / f"{cid}.nii.gz"))
    return out


def test_one_png_per_case_and_orientation_does_not_matter(folders: dict[str, Path], tmp_path: Path):
    (folders["preds"] / "no_reference.nii.gz").write_bytes(
        (folders["preds"] / f"{CASES[0]}.nii.gz").read_bytes()
    )
    plain = save_overlays(folders["images"], folders["refs"], folders["preds"], tmp_path / "plain")
    turned = save_overlays(folders["images"], folders["refs"], folders["turned"], tmp_path / "turned_out")
    assert [p.name for p in plain] == [f"{c}.png" for c in CASES]  # the case without a reference is left out
    for a, b in zip(plain, turned, strict=True):
        assert a.read_bytes()[:8] == PNG
        assert a.read_bytes() == b.read_bytes()
    assert not list((tmp_path / "plain").glob(".partial-*"))


def test_a_prediction_on_another_grid_is_refused(folders: dict[str, Path], tmp_path: Path):
    path = folders["preds"] / f"{CASES[0]}.nii.gz"
    img = sitk.ReadImage(str(path))
    img.SetOrigin(tuple(o + 3.0 for o in img.GetOrigin()))
    sitk.WriteImage(img, str(path))
    with pytest.raises(DatasetError, match=rf"{path.name}: does not lie on the grid of .*{CASES[0]}"):
        save_overlays(folders["images"], folders["refs"], folders["preds"], tmp_path / "out")


def test_evaluate_images_writes_the_overlays(folders: dict[str, Path], tmp_path: Path):
    out = tmp_path / "eval" / "summary.json"
    args = ["evaluate", "--pred", str(folders["turned"]), "--ref", str(folders["refs"]), "-o", str(out)]
    assert main([*args, "--images", str(folders["images"]), "-q"]) == 0
    assert sorted(p.name for p in (tmp_path / "eval" / "summary_overlays").iterdir()) == [
        f"{c}.png" for c in CASES
    ]
