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


#: nnU-Net v2's four integration-test datasets, built from MSD hippocampus (labels 1 anterior,
#: 2 posterior): name -> (labels, regions_class_order, fraction of slices per axis left annotated).
#: nnU-Net's numbers: Dataset999 (standard), 998 (ignore: posterior unannotated), 997 (regions),
#: 996 (regions + ignore, sparse: ~3.3 % of the slices along each axis annotated).
SCENARIOS: dict[str, tuple[dict[str, int | list[int]], list[int] | None, float | None]] = {
    "standard": ({"background": 0, "anterior": 1, "posterior": 2}, None, None),
    "ignore": ({"background": 0, "anterior": 1, "ignore": 2}, None, None),
    "regions": ({"background": 0, "hippocampus": [1, 2], "anterior": 1}, [2, 1], None),
    "regions_ignore": (
        {"background": 0, "hippocampus": [1, 2], "anterior": 1, "ignore": 3},
        [2, 1],
        0.1 / 3,
    ),
}


def make_scenario_dataset(dest: Path, scenario: str, n_cases: int, *, seed: int = 1234) -> Path:
    """One of nnU-Net's integration scenarios (:data:`SCENARIOS`) from the built-in sample, in
    the nnU-Net v2 raw layout (``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``).

    ``ignore`` keeps the label maps (value 2, posterior, is now the ignore label); the sparse
    ``regions_ignore`` keeps the annotation of a few random whole slices along each axis (at
    least one per axis) and marks every other voxel ignore (3), as nnU-Net's
    ``sparsify_segmentation`` does.

    Args:
        dest: the dataset folder to create.
        scenario: a key of :data:`SCENARIOS`.
        n_cases: the first ``n_cases`` training cases of the sample (at most 32).
        seed: of the annotated slices' choice.

    Returns:
        ``dest``.
    """
    import SimpleITK as sitk

    labels, order, fraction = SCENARIOS[scenario]
    src = sample_dataset_dir()
    meta = json.loads((src / "dataset.json").read_text())
    (dest / "imagesTr").mkdir(parents=True)
    (dest / "labelsTr").mkdir()
    rng = np.random.default_rng(seed)
    ignore = labels.get("ignore")
    for entry in meta["training"][:n_cases]:
        case = Path(entry["image"]).name.removesuffix(".nii.gz")
        shutil.copy(src / entry["image"], dest / "imagesTr" / f"{case}_0000.nii.gz")
        if fraction is None:
            shutil.copy(src / entry["label"], dest / "labelsTr" / f"{case}.nii.gz")
            continue
        assert isinstance(ignore, int)
        img = sitk.ReadImage(str(src / entry["label"]))
        seg = sitk.GetArrayFromImage(img)
        sparse = np.full_like(seg, ignore)
        for axis, n in enumerate(seg.shape):
            kept = rng.choice(n, max(1, round(n * fraction)), replace=False)
            index: list[slice | np.ndarray] = [slice(None)] * seg.ndim
            index[axis] = kept
            sparse[tuple(index)] = seg[tuple(index)]
        out = sitk.GetImageFromArray(sparse)
        out.CopyInformation(img)
        sitk.WriteImage(out, str(dest / "labelsTr" / f"{case}.nii.gz"), useCompression=True)
    dataset = {
        "channel_names": {"0": "MRI"},
        "labels": labels,
        "numTraining": min(n_cases, len(meta["training"])),
        "file_ending": ".nii.gz",
        "name": f"hippocampus_{scenario}",
    }
    if order is not None:
        dataset["regions_class_order"] = order
    (dest / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return dest


#: BraTS (2015 label values: 1 necrosis, 2 edema, 3 non-enhancing tumour, 4 enhancing tumour)
#: as the three regions the challenge scores, largest first; regions_class_order paints whole
#: tumour as edema, tumour core as necrosis, enhancing tumour as itself.
BRATS_REGIONS: dict[str, int | list[int]] = {
    "background": 0,
    "whole tumour": [1, 2, 3, 4],
    "tumour core": [1, 3, 4],
    "enhancing tumour": [4],
}
BRATS_REGIONS_ORDER = [2, 1, 4]


def make_brats_regions_dataset(source: Path, dest: Path) -> Path:
    """A BraTS-2015-style nnU-Net v2 dataset (``source``, labels 0-4) declared as the three
    BraTS regions (:data:`BRATS_REGIONS`), without copying the scans: ``dest`` holds symbolic
    links to ``source``'s files and a new ``dataset.json``; nothing is written into ``source``.

    Returns:
        ``dest``.
    """
    meta = json.loads((source / "dataset.json").read_text())
    for sub in ("imagesTr", "labelsTr"):
        (dest / sub).mkdir(parents=True)
        for f in sorted((source / sub).iterdir()):
            (dest / sub / f.name).symlink_to(f.resolve())
    meta["labels"] = BRATS_REGIONS
    meta["regions_class_order"] = BRATS_REGIONS_ORDER
    (dest / "dataset.json").write_text(json.dumps(meta, indent=1))
    return dest
