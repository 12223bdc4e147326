"""The data that ships with autoseg, and a helper to make a dataset from one labelled scan."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from autoseg.io.image import read_image

#: The repository's ``data/`` folder (the built-in sample and the test fixtures).
DATA_DIR = Path(__file__).resolve().parents[2] / "data"


def sample_dataset_dir() -> Path:
    """The built-in sample: 32 + 8 hippocampus MRI cases (MSD layout, CC BY-SA 4.0)."""
    return DATA_DIR / "hippocampus_sample"


def copy_sample_subset(dest: Path, n_cases: int) -> Path:
    """A dataset folder holding the first ``n_cases`` training cases of the built-in sample
    (MSD layout, no held-out cases): a small real dataset for tests and experiments.

    Args:
        dest: the folder to create (its name becomes the dataset name).
        n_cases: how many training cases to copy (at most 32).

    Returns:
        ``dest``.
    """
    src = sample_dataset_dir()
    meta = json.loads((src / "dataset.json").read_text())
    meta["training"] = meta["training"][:n_cases]
    meta["numTraining"], meta["numTest"] = len(meta["training"]), 0
    meta.pop("test", None)
    for sub in ("imagesTr", "labelsTr"):
        (dest / sub).mkdir(parents=True, exist_ok=True)
    for entry in meta["training"]:
        for key in ("image", "label"):
            shutil.copy(src / entry[key], dest / entry[key])
    (dest / "dataset.json").write_text(json.dumps(meta, indent=1))
    return dest


def make_single_case_dataset(
    image: Path, label: Path, dest: Path, *, channel_name: str = "CT", case_id: str = "case_000"
) -> Path:
    """Build an nnU-Net v2 raw dataset holding one labelled scan.

    Labels are declared for the values the label map holds (``label_<value>``), so a sparse
    label set (e.g. 42 of 117 values) is kept as it is: autoseg needs no consecutive values.

    Args:
        image: the scan: a NIfTI file, or a DICOM series folder (copied as ``CASE_0000/``).
        label: its label map on the same grid (its axes may be stored flipped or permuted).
        dest: the dataset folder to create (must not exist).

    Returns:
        ``dest``.
    """
    values = sorted(int(v) for v in np.unique(read_image(label).array))
    (dest / "imagesTr").mkdir(parents=True)
    (dest / "labelsTr").mkdir()
    if image.is_dir():  # a DICOM series: the folder stands for the channel file
        shutil.copytree(image, dest / "imagesTr" / f"{case_id}_0000")
    else:
        shutil.copy(image, dest / "imagesTr" / f"{case_id}_0000.nii.gz")
    shutil.copy(label, dest / "labelsTr" / f"{case_id}.nii.gz")
    labels = {"background" if v == 0 else f"label_{v}": v for v in values}
    meta = {
        "channel_names": {"0": channel_name},
        "labels": labels,
        "numTraining": 1,
        "file_ending": ".nii.gz",
    }
    (dest / "dataset.json").write_text(json.dumps(meta, indent=1))
    return dest
