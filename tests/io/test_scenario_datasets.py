"""The sparse scenario of nnU-Net's integration tests, as built from the shipped sample (its
training through every configuration: tests/test_scenario_*.py)."""

from __future__ import annotations

from pathlib import Path

from autoseg.io.samples import make_scenario_dataset


def test_sparse_scenario_keeps_a_few_annotated_slices(tmp_path: Path) -> None:
    import SimpleITK as sitk

    ds = make_scenario_dataset(tmp_path / "sparse", "regions_ignore", 2)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(sorted((ds / "labelsTr").iterdir())[0])))
    annotated = seg != 3
    assert 0.02 < annotated.mean() < 0.2  # about 3 x 3.3 % of the slices
    for axis in range(3):  # whole slices are annotated, along every axis
        other = tuple(a for a in range(3) if a != axis)
        assert annotated.all(axis=other).any()
