"""2.5D with two input channels, end to end: plan (--add-2.5d) -> train -> validate -> predict.

The second channel is the scan flipped left-right, so the two channels carry different images;
the network then takes ``2 * in_slices`` input channels in both training and prediction, and the
outputs land on each scan's grid."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.io.image import read_image
from autoseg.io.samples import sample_dataset_dir
from tests.budget import tiny

pytestmark = pytest.mark.slow

N_CASES = 5


def _two_channel_dataset(root: Path, ids: list[str], *, labelled: bool) -> None:
    sample = sample_dataset_dir()
    for cid in ids:
        img = sitk.ReadImage(str(sample / "imagesTr" / f"{cid}.nii.gz"))
        flipped = sitk.GetImageFromArray(sitk.GetArrayFromImage(img)[:, :, ::-1].copy())
        flipped.CopyInformation(img)
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(img, str(root / "imagesTr" / f"{cid}_0000.nii.gz"))
        sitk.WriteImage(flipped, str(root / "imagesTr" / f"{cid}_0001.nii.gz"))
        if labelled:
            (root / "labelsTr").mkdir(exist_ok=True)
            sitk.WriteImage(
                sitk.ReadImage(str(sample / "labelsTr" / f"{cid}.nii.gz")),
                str(root / "labelsTr" / f"{cid}.nii.gz"),
            )


def test_two_channel_2p5d_trains_and_predicts(tmp_path: Path) -> None:
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (sample_dataset_dir() / "imagesTr").glob("*"))
    ds = tmp_path / "Dataset002_Hippo2ch"
    _two_channel_dataset(ds, ids[:N_CASES], labelled=True)
    (ds / "dataset.json").write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI", "1": "MRI_flipped"},
                "labels": {"background": 0, "anterior": 1, "posterior": 2},
                "numTraining": N_CASES,
                "file_ending": ".nii.gz",
            }
        )
    )
    work = tmp_path / "work"
    common = ["--work-dir", str(work), "-q"]
    assert main(["plan", str(ds), "--add-2.5d", "--workers", "1", *common]) == 0
    plan = json.loads((work / ds.name / "plans.json").read_text())
    k = plan["configurations"]["2.5d"]["in_slices"]
    assert k > 1
    assert (
        main(
            [
                "train",
                ds.name,
                "2.5d",
                "0",
                *tiny(),
                *common,
            ]
        )
        == 0
    )
    fold = work / ds.name / "models" / "2.5d" / "fold_0"
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert len(summary["per_case"]) == 1
    import torch

    weights = torch.load(fold / "checkpoint_final.pt", weights_only=True)["network"]
    assert weights["input_block.conv1.conv.weight"].shape[1] == 2 * k
    scans = tmp_path / "scans"
    _two_channel_dataset(scans, ids[N_CASES : N_CASES + 2], labelled=False)
    out = tmp_path / "out"
    assert (
        main(
            [
                "predict",
                "-i",
                str(scans / "imagesTr"),
                "-o",
                str(out),
                "-d",
                ds.name,
                "-c",
                "2.5d",
                "--device",
                "cpu",
                "--no-tta",
                *common,
            ]
        )
        == 0
    )
    for cid in ids[N_CASES : N_CASES + 2]:
        pred = read_image(out / f"{cid}.nii.gz")
        scan = read_image(scans / "imagesTr" / f"{cid}_0000.nii.gz")
        assert pred.array.shape == scan.array.shape
        assert pred.geometry.same_grid(scan.geometry, rtol=0, atol=1e-5)
        assert set(np.unique(pred.array)) <= {0, 1, 2}
