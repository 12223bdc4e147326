"""Class 8 of the hostile inputs: messages that stopped short. Every problem of every file is
reported (a broken image no longer hides its broken label); a damaged DICOM slice is named, not
only its series folder; a dataset too small for five folds is told what it can do, and can do it
(fold ``all``, ``--n-folds N``, its own ``splits.json``)."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.io.samples import DATA_DIR, copy_sample_subset, make_single_case_dataset
from tests.budget import tiny

CASE = "hippocampus_023"
TINY = [*tiny(iters=1, val_iters=0), "--no-val-probabilities", "-q"]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().err


# --------------------------------------------------------------------------- image and label


def _truncate(path: Path) -> None:
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data)[: len(gzip.compress(data)) // 2])


def _remove(path: Path) -> None:
    path.unlink()


def _value(v: float, dtype: type = np.float32) -> Callable[[Path], None]:
    def change(path: Path) -> None:
        img = sitk.ReadImage(str(path))
        arr = sitk.GetArrayFromImage(img).astype(dtype)
        arr[arr.shape[0] // 2, 5, 5] = v
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(path))

    return change


BOTH_BROKEN = {
    "truncated_image_undeclared_label": (
        _truncate,
        _value(7, np.uint8),
        ("truncated or corrupt", "[7] not declared"),
    ),
    "missing_image_missing_label": (_remove, _remove, ("image file of case", "label file of case")),
    "nan_image_half_label": (_value(float("nan")), _value(0.5), ("NaN or inf", "non-integer values")),
}


@pytest.mark.parametrize(
    ("image_fault", "label_fault", "words"), list(BOTH_BROKEN.values()), ids=list(BOTH_BROKEN)
)
def test_every_problem_of_a_case_is_reported(
    tmp_path: Path,
    image_fault: Callable[[Path], None],
    label_fault: Callable[[Path], None],
    words: tuple[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    ds = copy_sample_subset(tmp_path / "hippo", 4)
    image, label = ds / "imagesTr" / f"{CASE}.nii.gz", ds / "labelsTr" / f"{CASE}.nii.gz"
    image_fault(image)
    label_fault(label)
    code, err = _run(
        capsys, "verify", str(ds), "--work-dir", str(tmp_path / "work"), "--preprocess-workers", "1"
    )
    assert code == 2
    lines = err.strip().splitlines()
    assert any(str(image) in line and words[0] in line for line in lines), err
    assert any(str(label) in line and words[1] in line for line in lines), err
    assert "Traceback" not in err


# --------------------------------------------------------------------------- DICOM slices


def _cut_pixels(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def test_a_damaged_slice_of_a_training_series_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ct = DATA_DIR / "fixtures" / "ct_sample"
    ds = make_single_case_dataset(ct / "example_ct_dicom", ct / "example_seg_dicom.nii.gz", tmp_path / "CT")
    slices = sorted((ds / "imagesTr" / "case_000_0000").iterdir())
    _cut_pixels(slices[7])
    code, err = _run(
        capsys, "verify", str(ds), "--work-dir", str(tmp_path / "work"), "--preprocess-workers", "1"
    )
    assert code == 2
    assert f"{slices[7]}: this slice's pixel data cannot be read (truncated?); re-copy the series" in err


@pytest.mark.parametrize("n_cut", [1, 3])
def test_damaged_slices_of_a_series_to_predict_are_named(
    trained_work: Path, tmp_path: Path, n_cut: int, capsys: pytest.CaptureFixture[str]
) -> None:
    series = tmp_path / "in" / "mr_series"
    shutil.copytree(DATA_DIR / "fixtures" / "dicom_mr" / "13_HCropVolume", series)
    cut = [series / f"{i}.dcm" for i in (12, 20, 5)[:n_cut]]
    for p in cut:
        _cut_pixels(p)
    code, err = _run(
        capsys,
        "predict",
        "-i",
        str(tmp_path / "in"),
        "-o",
        str(tmp_path / "out"),
        "-d",
        "hippo",
        "-c",
        "3d_fullres",
        "--no-tta",
        "--device",
        "cpu",
        "--work-dir",
        str(trained_work),
    )
    assert code == 2
    named = [p for p in cut if str(p) in err or p.name in err]
    assert len(named) == min(n_cut, 4)
    assert (f"(and {n_cut - 1} more" in err) == (n_cut > 1)
    assert not any((tmp_path / "out").glob("*.nii.gz"))


# --------------------------------------------------------------------------- small datasets


@pytest.fixture
def planned(tmp_path: Path) -> Callable[[int], Path]:
    def make(n: int) -> Path:
        ds = copy_sample_subset(tmp_path / f"hippo{n}", n)
        work = tmp_path / "work"
        assert main(["plan", str(ds), "--work-dir", str(work), "--preprocess-workers", "1", "-q"]) == 0
        return work

    return make


def test_one_case_dataset_is_told_what_it_can_do(planned, capsys: pytest.CaptureFixture[str]) -> None:
    work = planned(1)
    code, err = _run(capsys, "train", "hippo1", "3d_fullres", "0", *TINY, "--work-dir", str(work))
    assert code == 2
    assert "1 case(s) cannot make 5 folds; train fold 'all' (every case, no validation)" in err
    assert "give your own folds as splits.json" in err
    assert not (work / "hippo1" / "splits.json").exists()
    code, err = _run(capsys, "train", "hippo1", "3d_fullres", "all", *TINY, "--work-dir", str(work))
    assert code == 0, err


def test_fewer_folds_with_n_folds(planned, capsys: pytest.CaptureFixture[str]) -> None:
    work = planned(3)
    code, err = _run(capsys, "train", "hippo3", "3d_fullres", "0", *TINY, "--work-dir", str(work))
    assert code == 2
    assert "--n-folds (2 to 3)" in err
    code, err = _run(
        capsys, "train", "hippo3", "3d_fullres", "2", "--n-folds", "3", *TINY, "--work-dir", str(work)
    )
    assert code == 0, err
    splits = json.loads((work / "hippo3" / "splits.json").read_text())
    assert len(splits) == 3
    code, err = _run(capsys, "train", "hippo3", "3d_fullres", "3", *TINY, "--work-dir", str(work))
    assert code == 2
    assert "fold 3 is not in the splits; valid folds: 0-2 or 'all'" in err


def test_a_fold_beyond_the_splits_writes_nothing(planned, capsys: pytest.CaptureFixture[str]) -> None:
    work = planned(5)
    code, err = _run(capsys, "train", "hippo5", "3d_fullres", "5", *TINY, "--work-dir", str(work))
    assert code == 2
    assert "fold 5 is not in the splits; valid folds: 0-4 or 'all'" in err
    assert not (work / "hippo5" / "splits.json").exists()
    assert not (work / "hippo5" / "models").exists()


@pytest.mark.parametrize("name", ["splits.json", "splits_final.json"])
def test_the_dataset_folder_may_bring_its_folds(
    tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ds = copy_sample_subset(tmp_path / "hippo", 2)
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (ds / "imagesTr").iterdir())
    given = [{"train": [ids[0]], "val": [ids[1]]}, {"train": [ids[1]], "val": [ids[0]]}]
    (ds / name).write_text(json.dumps(given))
    work = tmp_path / "work"
    assert main(["plan", str(ds), "--work-dir", str(work), "--preprocess-workers", "1", "-q"]) == 0
    code, err = _run(capsys, "train", "hippo", "3d_fullres", "1", *TINY, "--work-dir", str(work))
    assert code == 0, err
    assert json.loads((work / "hippo" / "splits.json").read_text()) == given
    summary = json.loads(
        (work / "hippo" / "models" / "3d_fullres" / "fold_1" / "validation" / "summary.json").read_text()
    )
    assert [c["case_id"] for c in summary["per_case"]] == [ids[0]]
