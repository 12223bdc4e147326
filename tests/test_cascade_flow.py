"""The cascade end to end on 6 real sample cases: plan --add-lowres -> 3d_lowres folds 0 and 1 ->
3d_cascade_fullres fold 0 -> predict with the cascade (both stages).

Also: the cascade's fold reads each case's 3d_lowres prediction from the fold that validated it
(never from a model trained on it), and a missing 3d_lowres fold is one clear error naming it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.cli import main
from autoseg.io.image import read_image
from autoseg.io.samples import copy_sample_subset, sample_dataset_dir
from tests.budget import tiny

pytestmark = pytest.mark.slow

TINY = [*tiny(), "--preprocess-workers", "1"]


def _train(work: Path, config: str, fold: str, *extra: str) -> int:
    return main(["train", "hippo", config, fold, *TINY, *extra, "--work-dir", str(work), "-q"])


def test_cascade_trains_on_cv_predictions_and_predicts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    t0 = time.monotonic()
    ds = copy_sample_subset(tmp_path / "hippo", 6)
    work = tmp_path / "work"
    plan_args = ["plan", str(ds), "--add-lowres", "--preprocess-workers", "1"]
    assert main([*plan_args, "--work-dir", str(work), "-q"]) == 0
    plan = json.loads((work / "hippo" / "plans.json").read_text())
    low, casc = plan["configurations"]["3d_lowres"], plan["configurations"]["3d_cascade_fullres"]
    assert all(lo > 1.5 * fu for lo, fu in zip(low["spacing"], casc["spacing"], strict=True))
    assert casc["previous_stage"] == "3d_lowres"
    assert any("--add-lowres" in n for n in plan["notes"])

    # (b) no 3d_lowres fold trained yet: one line naming the folds and the commands
    capsys.readouterr()
    assert _train(work, "3d_cascade_fullres", "0", "--n-folds", "2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "3d_lowres fold(s) 0, 1" in err
    assert "`autoseg train hippo 3d_lowres 0` and `autoseg train hippo 3d_lowres 1`" in err
    assert not (work / "hippo" / "models" / "3d_cascade_fullres").exists()

    assert _train(work, "3d_lowres", "0", "--n-folds", "2") == 0
    # fold 1 still missing: named alone
    assert _train(work, "3d_cascade_fullres", "0") == 2
    err = capsys.readouterr().err
    assert "3d_lowres fold(s) 1 " in err
    assert "`autoseg train hippo 3d_lowres 1`" in err
    assert _train(work, "3d_lowres", "1") == 0
    assert _train(work, "3d_cascade_fullres", "0") == 0

    # (a) each case's input came from the 3d_lowres fold that validated it, not one trained on it
    splits = json.loads((work / "hippo" / "splits.json").read_text())
    fold_dir = work / "hippo" / "models" / "3d_cascade_fullres" / "fold_0"
    manifest = json.loads((fold_dir / "previous_stage.json").read_text())
    assert set(manifest["cases"]) == set(splits[0]["train"]) | set(splits[0]["val"])
    for cid, src in manifest["cases"].items():
        k = int(src["fold"])
        assert cid in splits[k]["val"]
        assert cid not in splits[k]["train"]
        lowres = work / "hippo" / "models" / "3d_lowres"
        assert Path(src["file"]) == lowres / f"fold_{k}" / "validation" / f"{cid}.nii.gz"
    # the network takes the image plus one channel per foreground label (anterior, posterior)
    weights = torch.load(fold_dir / "checkpoint_final.pt", weights_only=True)["network"]
    assert weights["input_block.conv1.conv.weight"].shape[1] == 1 + 2
    summary = json.loads((fold_dir / "validation" / "summary.json").read_text())
    assert sorted(c["case_id"] for c in summary["per_case"]) == splits[0]["val"]
    # find-best weighs the cascade (its fold-0 CV predictions) like any configuration
    with pytest.warns(UserWarning, match="compared on the 3 cases they share"):
        assert main(["find-best", "hippo", "--preprocess-workers", "1", "--work-dir", str(work), "-q"]) == 0
    choice = json.loads((work / "hippo" / "inference.json").read_text())
    assert {"3d_lowres", "3d_cascade_fullres", "3d_cascade_fullres__3d_lowres"} <= set(choice["cv_dice"])

    # --continue on the same 3d_lowres predictions continues (one more epoch) ...
    assert _train(work, "3d_cascade_fullres", "0", "--continue", "--epochs", "2") == 0
    # ... but not once a 3d_lowres fold was retrained (other inputs for the rest of the run)
    assert _train(work, "3d_lowres", "1", "--seed", "7") == 0
    capsys.readouterr()
    inputs = sorted([fold_dir / "previous_stage.json", *(fold_dir / "previous_stage").glob("*.npy")])
    before = {p: p.read_bytes() for p in inputs}
    assert _train(work, "3d_cascade_fullres", "0", "--continue", "--epochs", "3") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "3d_lowres's predictions that this fold takes as input changed" in err
    assert "without --continue" in err
    # refused before anything of the fold changed: its inputs are still those of its checkpoints
    assert {p: p.read_bytes() for p in inputs} == before
    assert sorted([fold_dir / "previous_stage.json", *(fold_dir / "previous_stage").iterdir()]) == inputs
    assert _train(work, "3d_cascade_fullres", "0") == 0  # from scratch on the new predictions

    # predict 2 unseen scans with the cascade: both stages run, outputs on each scan's grid
    scans = tmp_path / "scans"
    scans.mkdir()
    ids = sorted(p.name for p in (sample_dataset_dir() / "imagesTr").glob("*.nii.gz"))[-2:]
    for name in ids:
        (scans / name).write_bytes((sample_dataset_dir() / "imagesTr" / name).read_bytes())
    out = tmp_path / "out"
    args = ["predict", "-i", str(scans), "-o", str(out), "-d", "hippo", "-c", "3d_cascade_fullres"]
    assert main([*args, "--device", "cpu", "--no-tta", "--work-dir", str(work), "-q"]) == 0
    for name in ids:
        pred, scan = read_image(out / name), read_image(scans / name)
        assert pred.array.shape == scan.array.shape
        assert pred.geometry.same_grid(scan.geometry, rtol=0, atol=1e-5)
        assert set(np.unique(pred.array)) <= {0, 1, 2}

    # the same with both stages exported to ONNX: the cascade's ONNX runs the lowres ONNX first
    for config in ("3d_cascade_fullres", "3d_lowres"):
        assert main(["export", "hippo", config, "--work-dir", str(work), "-q"]) == 0
    side = json.loads((work / "hippo" / "models" / "3d_cascade_fullres" / "export.json").read_text())
    assert (side["previous_stage"], side["previous_stage_channels"], side["input_channels"]) == (
        "3d_lowres",
        2,
        3,
    )
    outs = {}
    for backend in ("torch", "onnx"):  # both in float32 (torch's default on CPU is bfloat16)
        args[4] = str(outs.setdefault(backend, tmp_path / f"out_{backend}"))
        run = [*args, "--device", "cpu", "--no-tta", "--precision", "fp32", "--backend", backend]
        assert main([*run, "--work-dir", str(work), "-q"]) == 0
    for name in ids:
        a, b = (read_image(outs[backend] / name).array for backend in ("torch", "onnx"))
        assert np.mean(a != b) < 1e-3  # near-ties of a 2-iteration model may flip a voxel
    assert time.monotonic() - t0 < 300  # ~80 s on an idle 2-core machine
