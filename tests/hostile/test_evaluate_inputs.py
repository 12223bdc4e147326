"""Class 7 of the hostile inputs: evaluate refuses what it used to score. A reference or
prediction holding non-integer values, or a prediction that does not overlay its reference
(another origin or direction), is one line naming the file, exit 2, no summary written."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.io.samples import sample_dataset_dir

CASES = sorted((sample_dataset_dir() / "labelsTs").glob("*.nii.gz"))[:2]


def _float_values(value: float) -> Callable[[sitk.Image], sitk.Image]:
    def change(img: sitk.Image) -> sitk.Image:
        arr = sitk.GetArrayFromImage(img).astype(np.float32)
        arr[arr.shape[0] // 2, 10, 10] = value
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        return out

    return change


def _shifted(mm: float) -> Callable[[sitk.Image], sitk.Image]:
    def change(img: sitk.Image) -> sitk.Image:
        img.SetOrigin(tuple(o + mm for o in img.GetOrigin()))
        return img

    return change


def _tilted(img: sitk.Image) -> sitk.Image:
    a = np.deg2rad(3)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    img.SetDirection(tuple((rot @ np.reshape(img.GetDirection(), (3, 3))).ravel()))
    return img


VARIANTS = {
    "reference_half_values": ("ref", _float_values(0.5), "holds non-integer values (e.g. 0.5)"),
    "reference_nan": ("ref", _float_values(float("nan")), "NaN or inf voxel value"),
    "prediction_probabilities": ("pred", _float_values(0.73), "holds non-integer values (e.g. 0.73)"),
    "prediction_shifted_1mm": ("pred", _shifted(1.0), "origin/direction differ from its reference"),
    "prediction_shifted_half_voxel": ("pred", _shifted(0.5), "origin/direction differ from its reference"),
    "prediction_tilted": ("pred", _tilted, "origin/direction differ from its reference"),
}


@pytest.mark.parametrize(("which", "change", "words"), list(VARIANTS.values()), ids=list(VARIANTS))
def test_refused_naming_the_file(
    tmp_path: Path,
    which: str,
    change: Callable[[sitk.Image], sitk.Image],
    words: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    pred.mkdir()
    ref.mkdir()
    for p in CASES:
        shutil.copy(p, pred / p.name)
        shutil.copy(p, ref / p.name)
    victim = (pred if which == "pred" else ref) / CASES[1].name
    sitk.WriteImage(change(sitk.ReadImage(str(victim))), str(victim))
    out = tmp_path / "eval" / "summary.json"
    capsys.readouterr()
    assert main(["evaluate", "--pred", str(pred), "--ref", str(ref), "-o", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert str(victim) in err
    assert words in err
    assert "Traceback" not in err
    assert not out.parent.exists()
