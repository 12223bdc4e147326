"""End-of-fold validation of a region plan with an ignore label: label maps painted from sigmoid
outputs, probabilities stored as regions, Dice per region (keyed by name) over annotated voxels.

The network is a stand-in for ``predict_logits`` that outputs the preprocessed reference's regions
(a perfect network), and claims every region on the voxels the reference marks as ignore: those
predictions must cost nothing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.inference.probabilities import ProbabilityMap
from autoseg.io.image import read_image, write_image
from autoseg.io.samples import sample_dataset_dir
from autoseg.planning.plan import Plan
from autoseg.preprocessing.case import preprocess_arrays
from autoseg.preprocessing.store import PreprocessedStore
from autoseg.training import validate as validate_module
from autoseg.training.validate import validate_fold
from tests.golden import GOLDEN_PLAN


def _plan() -> Plan:
    d = Plan.load(GOLDEN_PLAN).to_dict()
    d["labels"] = {"background": 0, "hippocampus": [1, 2], "anterior": 1, "ignore": 3}
    d["regions_class_order"] = [2, 1]
    return Plan.from_dict(d)


@pytest.mark.parametrize("save_probabilities", [True, False], ids=["with_npz", "labels_only"])
def test_validation_scores_regions_over_annotated_voxels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, save_probabilities: bool
) -> None:
    plan = _plan()
    scheme = plan.label_scheme
    config = plan.configuration("3d_fullres")
    img = read_image(sample_dataset_dir() / "imagesTr" / "hippocampus_004.nii.gz")
    ref = np.rint(read_image(sample_dataset_dir() / "labelsTr" / "hippocampus_004.nii.gz").array).astype(
        np.uint8
    )
    ref[:, :, :4] = 3  # four unannotated slabs, background and foreground alike
    label_file = write_image(ref, img.geometry, tmp_path / "ref" / "c.nii.gz")
    store = PreprocessedStore(tmp_path / "store")
    store.save(
        preprocess_arrays(
            img.array[None].astype(np.float32),
            ref,
            img.spacing,
            plan,
            config,
            case_id="c",
            geometry=img.geometry,
        )
    )

    def perfect(network: object, data: torch.Tensor, config: object, **_: object) -> torch.Tensor:
        index = torch.from_numpy(np.array(store.load("c").seg)).long()[None, None]
        target, mask = scheme.training_target(index)
        assert mask is not None
        target = torch.where(mask.bool(), target, torch.ones_like(target))  # every region on ignore
        return target[0] * 20 - 10

    monkeypatch.setattr(validate_module, "predict_logits", perfect)
    out = tmp_path / "val"
    summary = validate_fold(
        torch.nn.Identity(),
        plan,
        config,
        store,
        ["c"],
        {"c": label_file},
        out,
        device=torch.device("cpu"),
        amp_dtype=None,
        save_probabilities=save_probabilities,
    )
    assert summary["mean"] == {"hippocampus": 1.0, "anterior": 1.0}
    assert summary["foreground_mean"] == 1.0
    assert json.loads((out / "summary.json").read_text())["per_case"][0]["dice"] == summary["mean"]
    labels = read_image(out / "c.nii.gz").array
    keep = ref != 3
    np.testing.assert_array_equal(labels[keep], ref[keep])
    assert np.all(labels[~keep] == 1)  # anterior painted last over the ignored slabs: never 3
    if save_probabilities:
        stored = ProbabilityMap.load(out / "c.npz", scheme=scheme, shape=ref.shape)
        assert (stored.activation, stored.channel_names) == ("sigmoid", ("hippocampus", "anterior"))
    else:
        assert not (out / "c.npz").exists()
