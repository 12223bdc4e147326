"""The brain-tumour case (issue 13): the BraTS 2015 sample of ../shared/data declared as the three
BraTS regions (whole tumour [1, 2, 3, 4], tumour core [1, 3, 4], enhancing tumour [4]), planned,
trained briefly, predicted and evaluated per region.

The BraTS data is licensed for non-commercial use only and is never shipped with autoseg: these
tests skip, saying so, where ../shared is absent (a user's fresh clone).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.io.samples import BRATS_REGIONS, make_brats_regions_dataset
from autoseg.planning.plan import Plan
from tests.budget import tiny

BRATS = Path(__file__).resolve().parents[2] / "shared" / "data" / "brats2015_sample"
pytestmark = pytest.mark.skipif(
    not (BRATS / "dataset.json").is_file(),
    reason="needs ../shared/data/brats2015_sample (BraTS: non-commercial licence, never shipped)",
)
REGION_NAMES = [n for n in BRATS_REGIONS if n != "background"]


@pytest.mark.slow
def test_brats_regions_train_predict_evaluate(tmp_path: Path) -> None:
    ds = make_brats_regions_dataset(BRATS, tmp_path / "brats")
    work = tmp_path / "work"
    common = ["--work-dir", str(work), "-q"]
    assert main(["plan", str(ds), "--preprocess-workers", "2", *common]) == 0
    plan = Plan.load(work / "brats" / "plans.json")
    scheme = plan.label_scheme
    assert (scheme.activation, list(scheme.output_names)) == ("sigmoid", REGION_NAMES)
    # fold 'all': no final validation of 155-slice volumes (validation per region is tested on
    # the hippocampus scenarios); two iterations are enough to exercise the region outputs
    budget = tiny(batch_size=4, augment_workers=None)  # the default augmentation workers
    assert main(["train", "brats", "2d", "all", *budget, *common]) == 0

    scan_dir, out = tmp_path / "scans", tmp_path / "out"
    scan_dir.mkdir()
    case = sorted((ds / "labelsTr").iterdir())[0].name.removesuffix(".nii.gz")
    for ch in (0, 1):
        (scan_dir / f"{case}_{ch:04d}.nii.gz").symlink_to(ds / "imagesTr" / f"{case}_{ch:04d}.nii.gz")
    predict = ["predict", "-i", str(scan_dir), "-o", str(out), "-d", "brats", "-c", "2d", "-f", "all"]
    assert main([*predict, "--no-tta", "--device", "cpu", *common]) == 0
    pred = sitk.ReadImage(str(out / f"{case}.nii.gz"))
    src = sitk.ReadImage(str(scan_dir / f"{case}_0000.nii.gz"))
    assert pred.GetSize() == src.GetSize()
    np.testing.assert_allclose(pred.GetOrigin(), src.GetOrigin())
    assert set(np.unique(sitk.GetArrayFromImage(pred)).tolist()) <= {0, 1, 2, 4}  # painted values

    refs = tmp_path / "refs"
    refs.mkdir()
    (refs / f"{case}.nii.gz").symlink_to(ds / "labelsTr" / f"{case}.nii.gz")
    report = tmp_path / "summary.json"
    evaluate = ["evaluate", "--pred", str(out), "--ref", str(refs), "-o", str(report), "-q"]
    assert main([*evaluate, "--dataset-json", str(ds / "dataset.json")]) == 0
    assert list(json.loads(report.read_text())["per_label"]) == REGION_NAMES
