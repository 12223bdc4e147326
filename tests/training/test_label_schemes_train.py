"""nnU-Net's four integration scenarios (standard, ignore, regions, sparse regions + ignore),
built from the shipped sample, plan and train: the network has one output per label or region,
the pseudo-Dice one value per label or region, oversampling never aims at unannotated voxels."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.io.samples import SCENARIOS, make_scenario_dataset
from autoseg.planning.plan import Plan
from autoseg.preprocessing.store import PreprocessedStore
from autoseg.training.checkpoint import load_checkpoint


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_plans_preprocesses_and_trains(tmp_path: Path, scenario: str) -> None:
    ds = make_scenario_dataset(tmp_path / scenario, scenario, 4)
    work = tmp_path / "work"
    assert main(["plan", str(ds), "--work-dir", str(work), "--preprocess-workers", "1", "-q"]) == 0
    plan = Plan.load(work / scenario / "plans.json")
    scheme = plan.label_scheme
    labels, order, _ = SCENARIOS[scenario]
    assert scheme.regions == (order is not None)
    assert (scheme.ignore is not None) == ("ignore" in labels)
    args = [
        "train",
        scenario,
        "2d",
        "all",
        "--work-dir",
        str(work),
        "--epochs",
        "1",
        "--iters-per-epoch",
        "2",
    ]
    args += ["--val-iters", "1", "--batch-size", "4", "--device", "cpu", "--augment-workers", "0", "-q"]
    assert main(args) == 0
    fold = work / scenario / "models" / "2d" / "fold_all"
    record = json.loads((fold / "progress.jsonl").read_text().splitlines()[-1])
    assert len(record["pseudo_dice"]) == len(scheme.entries)
    assert np.isfinite(record["train_loss"])
    net = load_checkpoint(fold / "checkpoint_final.pt")["network"]
    heads = [k for k in net if k.startswith("output_block") and k.endswith("weight")]
    assert heads
    assert all(net[k].shape[0] == scheme.n_outputs for k in heads)
    store_dir = next(p for p in (work / scenario / "preprocessed").iterdir() if p.is_dir())
    store = PreprocessedStore(store_dir)
    for props in sorted(store_dir.glob("*.json")):
        if props.stem == "plan_part":
            continue
        case = store.load(props.stem, mmap=False)
        assert case.seg is not None
        assert set(np.unique(case.seg)) <= set(range(len(scheme.stored_values)))
        z, y, x = case.locations[:, 1:].T
        at = case.seg[z, y, x]
        if scheme.ignore_index is not None:
            assert (at != scheme.ignore_index).all()
        for c in np.unique(case.locations[:, 0]):  # each sampled voxel is in its label or region
            mask = dict(scheme.sampling_masks(case.seg))[int(c)]
            rows = case.locations[case.locations[:, 0] == c]
            assert mask[rows[:, 1], rows[:, 2], rows[:, 3]].all()


def test_sparse_scenario_keeps_a_few_annotated_slices(tmp_path: Path) -> None:
    import SimpleITK as sitk

    ds = make_scenario_dataset(tmp_path / "sparse", "regions_ignore", 2)
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(sorted((ds / "labelsTr").iterdir())[0])))
    annotated = seg != 3
    assert 0.02 < annotated.mean() < 0.2  # about 3 x 3.3 % of the slices
    for axis in range(3):  # whole slices are annotated, along every axis
        other = tuple(a for a in range(3) if a != axis)
        assert annotated.all(axis=other).any()
