"""DICOM series as training images: ``imagesTr/CASE_0000/`` is found like a file, and the CT
sample's label map (stored y-flipped relative to its DICOM series) is reoriented exactly."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.errors import DatasetError
from autoseg.io.case import load_case
from autoseg.io.dataset import load_dataset
from autoseg.io.image import read_image
from autoseg.io.samples import DATA_DIR, make_single_case_dataset

CT = DATA_DIR / "fixtures" / "ct_sample"


@pytest.fixture
def ct_dataset(tmp_path: Path) -> Path:
    return make_single_case_dataset(
        CT / "example_ct_dicom", CT / "example_seg_dicom.nii.gz", tmp_path / "CTDicom", case_id="ct"
    )


def test_dicom_folder_is_a_channel_and_flipped_label_is_reoriented(ct_dataset: Path) -> None:
    ds = load_dataset(ct_dataset)
    (case,) = ds.cases
    assert case.images == (ct_dataset / "imagesTr" / "ct_0000",)
    loaded = load_case(case, ds)
    seg = read_image(CT / "example_seg_dicom.nii.gz")
    np.testing.assert_array_equal(loaded.label, seg.array[:, ::-1, :])
    assert any("flipped along y" in w and "reoriented exactly" in w for w in loaded.warnings)
    assert loaded.geometry == read_image(CT / "example_ct_dicom").geometry
    # the label's foreground lies on the body, not on air
    assert (loaded.data[0][loaded.label > 0] > -300).mean() > 0.95


def test_plan_reads_the_dicom_dataset(ct_dataset: Path, tmp_path: Path) -> None:
    assert main(["plan", str(ct_dataset), "--work-dir", str(tmp_path / "work"), "--workers", "1", "-q"]) == 0
    assert (tmp_path / "work" / "CTDicom" / "plans.json").is_file()


def test_file_and_folder_for_one_channel_is_refused(ct_dataset: Path) -> None:
    shutil.copy(CT / "example_ct_sm.nii.gz", ct_dataset / "imagesTr" / "ct_0000.nii.gz")
    with pytest.raises(DatasetError, match=r"channel 0 of case ct is also .*ct_0000; keep one"):
        load_dataset(ct_dataset)


def test_dicom_folder_without_channel_suffix_is_refused(ct_dataset: Path) -> None:
    (ct_dataset / "imagesTr" / "ct_0000").rename(ct_dataset / "imagesTr" / "ct")
    with pytest.raises(
        DatasetError,
        match=r"imagesTr/ct: DICOM series folder name lacks the "
        r"channel suffix; name it CASE_0000",
    ):
        load_dataset(ct_dataset)


def test_folder_without_dicom_files_is_not_an_image(ct_dataset: Path) -> None:
    folder = ct_dataset / "imagesTr" / "ct_0000"
    shutil.rmtree(folder)
    folder.mkdir()
    (folder / "notes.txt").write_text("not a scan")
    ds = load_dataset(ct_dataset)
    with pytest.raises(DatasetError, match=r"ct_0000\.nii\.gz: image file of case ct not found"):
        load_case(ds.cases[0], ds)


def test_msd_training_entry_may_name_a_dicom_folder(tmp_path: Path) -> None:
    import json

    root = tmp_path / "MSDDicom"
    shutil.copytree(CT / "example_ct_dicom", root / "imagesTr" / "ct")
    (root / "labelsTr").mkdir()
    shutil.copy(CT / "example_seg_dicom.nii.gz", root / "labelsTr" / "ct.nii.gz")
    values = sorted(int(v) for v in np.unique(read_image(CT / "example_seg_dicom.nii.gz").array))
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "modality": {"0": "CT"},
                "labels": {str(v): f"l{v}" for v in values},
                "training": [{"image": "./imagesTr/ct", "label": "./labelsTr/ct.nii.gz"}],
            }
        )
    )
    ds = load_dataset(root)
    (case,) = ds.cases
    assert case.case_id == "ct"
    loaded = load_case(case, ds)
    np.testing.assert_array_equal(loaded.label, read_image(CT / "example_seg_dicom.nii.gz").array[:, ::-1, :])
