"""nnU-Net v2's own integration scenarios, run through autoseg's whole chain (issue 13).

nnU-Net's repository builds four datasets from MSD Hippocampus (standard labels; posterior as
ignore; regions {hippocampus: [1, 2], anterior: 1}; regions + ignore with ~3 % of the slices per
axis annotated), trains 2d, 3d_fullres, 3d_lowres and 3d_cascade_fullres, runs find-best,
predicts a test set and applies post-processing. Here each scenario is built from the shipped
sample (:func:`autoseg.io.samples.make_scenario_dataset`, 6 cases: 4 to train, 2 held out with
their labels), with a tiny budget (1 epoch of 2 iterations) and fold 0 of 2 (the cascade's fold 0
needs 3d_lowres folds 0 and 1). Every configuration predicts the held-out scans: outputs have
the input's exact geometry and only declared label values, never the ignore value; evaluate
scores every label or region. ``benchmarks/bench_scenarios.py`` runs all 5 folds.

One test file per scenario (``tests/test_scenario_<name>.py``) calls :func:`run_scenario`: each
takes about a minute, and pytest-xdist (``--dist loadfile``) spreads files, not the parameters of
one test, over its workers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.io.samples import make_scenario_dataset
from autoseg.labels import LabelScheme
from autoseg.planning.plan import Plan
from autoseg.preprocessing.store import PreprocessedStore
from autoseg.training.checkpoint import load_checkpoint
from tests.budget import tiny

CONFIGS = ("2d", "3d_fullres", "3d_lowres", "3d_cascade_fullres")


def _held_out(root: Path, scenario: str) -> tuple[Path, Path, Path]:
    """The scenario's dataset (4 cases) and 2 held-out scans with their reference labels."""
    ds = make_scenario_dataset(root / scenario, scenario, 6)
    scans, refs = root / "scans", root / "refs"
    scans.mkdir()
    refs.mkdir()
    for label in sorted((ds / "labelsTr").glob("*.nii.gz"))[4:]:
        case = label.name.removesuffix(".nii.gz")
        shutil.move(ds / "imagesTr" / f"{case}_0000.nii.gz", scans / f"{case}.nii.gz")
        shutil.move(label, refs / label.name)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["numTraining"] = 4
    (ds / "dataset.json").write_text(json.dumps(meta))
    return ds, scans, refs


def run_scenario(tmp_path: Path, scenario: str) -> None:
    """Plan, train every configuration, find-best, predict and evaluate one scenario (see above)."""
    ds, scans, refs = _held_out(tmp_path, scenario)
    work = tmp_path / "work"
    common = ["--work-dir", str(work), "-q"]
    assert main(["plan", str(ds), "--add-lowres", "--preprocess-workers", "1", *common]) == 0
    plan = Plan.load(work / scenario / "plans.json")
    assert set(CONFIGS) <= set(plan.configurations)
    scheme = plan.label_scheme
    budget = ["--n-folds", "2", *tiny(), *common]
    runs = [(c, "0") for c in CONFIGS if c != "3d_cascade_fullres"]
    runs += [("3d_lowres", "1"), ("3d_cascade_fullres", "0")]
    for config, fold in runs:
        assert main(["train", scenario, config, fold, *budget]) == 0, (config, fold)
    _check_training(work / scenario, scheme)
    with pytest.warns(UserWarning, match="compared on the 2 cases they share"):  # lowres: 2 folds
        assert main(["find-best", scenario, "--preprocess-workers", "1", *common]) == 0
    choice = json.loads((work / scenario / "inference.json").read_text())
    assert set(choice["report"]["candidates"]) >= set(CONFIGS)  # every configuration was compared

    allowed = {0, *scheme.output_values}
    assert scheme.ignore not in allowed
    for config in CONFIGS:
        out = tmp_path / f"out_{config}"
        args = ["predict", "-i", str(scans), "-o", str(out), "-d", scenario, "-c", config, "-f", "0"]
        assert main([*args, "--device", "cpu", *common]) == 0, config
        for scan in sorted(scans.iterdir()):
            src, pred = sitk.ReadImage(str(scan)), sitk.ReadImage(str(out / scan.name))
            assert pred.GetSize() == src.GetSize()
            np.testing.assert_allclose(pred.GetSpacing(), src.GetSpacing())
            np.testing.assert_allclose(pred.GetOrigin(), src.GetOrigin())
            np.testing.assert_allclose(pred.GetDirection(), src.GetDirection())
            assert set(np.unique(sitk.GetArrayFromImage(pred)).tolist()) <= allowed, config
        report = tmp_path / f"eval_{config}.json"
        evaluate = ["evaluate", "--pred", str(out), "--ref", str(refs), "-o", str(report)]
        assert main([*evaluate, "--dataset-json", str(ds / "dataset.json"), "-q"]) == 0
        scored = json.loads(report.read_text())
        names = [e.name for e in scheme.entries]
        assert len(scored["per_label"]) == len(names)


def _check_training(work: Path, scheme: LabelScheme) -> None:
    """One output and one pseudo-Dice per label or region; oversampling never aims at an
    unannotated voxel, and every sampled voxel lies in its label or region."""
    fold = work / "models" / "2d" / "fold_0"
    record = json.loads((fold / "progress.jsonl").read_text().splitlines()[-1])
    assert len(record["pseudo_dice"]) == len(scheme.entries)
    assert np.isfinite(record["train_loss"])
    net = load_checkpoint(fold / "checkpoint_final.pt")["network"]
    heads = [k for k in net if k.startswith("output_block") and k.endswith("weight")]
    assert heads
    assert all(net[k].shape[0] == scheme.n_outputs for k in heads)
    for store_dir in (p for p in (work / "preprocessed").iterdir() if p.is_dir()):
        store = PreprocessedStore(store_dir)
        for props in sorted(store_dir.glob("*.json")):
            if props.stem == "plan_part":
                continue
            case = store.load(props.stem, mmap=False)
            assert case.seg is not None
            assert set(np.unique(case.seg)) <= set(range(len(scheme.stored_values)))
            masks = dict(scheme.sampling_masks(case.seg))
            if scheme.ignore_index is not None:
                z, y, x = case.locations[:, 1:].T
                assert (case.seg[z, y, x] != scheme.ignore_index).all()
            for c in np.unique(case.locations[:, 0]):
                rows = case.locations[case.locations[:, 0] == c]
                assert masks[int(c)][rows[:, 1], rows[:, 2], rows[:, 3]].all()
