"""Loading a trained model checks each checkpoint's metadata against the model folder's plan:
a checkpoint of another configuration, plan or class count is refused naming the file; a
format-1 checkpoint (written before the metadata record) still loads, to the same network."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from autoseg.checkpoint_meta import CHECKPOINT_FORMAT
from autoseg.errors import CheckpointError
from autoseg.inference.model import load_model
from autoseg.planning.plan import Plan


@pytest.fixture
def model_dir(trained_work: Path, tmp_path: Path) -> Path:
    """A copy of the trained 2d model (fold ``all``) that tests may alter."""
    dst = tmp_path / "models" / "2d"
    shutil.copytree(trained_work / "hippo" / "models" / "2d", dst)
    return dst


def _checkpoint(model_dir: Path) -> Path:
    return model_dir / "fold_all" / "checkpoint_final.pt"


def _rewrite(path: Path, change) -> None:
    ck = torch.load(path, map_location="cpu", weights_only=True)
    change(ck)
    torch.save(ck, path)


def _as_format_1(ck: dict) -> None:
    """What the trainer wrote before the metadata record (format 1)."""
    meta = ck.pop("meta")
    ck.update(
        format=1,
        train_config=meta["train_config"],
        configuration=meta["configuration"],
        n_classes=meta["n_classes"],
    )


def _outputs(model_dir: Path) -> torch.Tensor:
    model = load_model(model_dir, folds=["all"])
    x = torch.randn(1, 1, *model.config.patch_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return model.networks[0](x)


def test_the_checkpoint_records_its_plan(model_dir: Path) -> None:
    ck = torch.load(_checkpoint(model_dir), map_location="cpu", weights_only=True)
    plan = Plan.load(model_dir / "plans.json")
    assert ck["meta"]["format"] == CHECKPOINT_FORMAT
    assert ck["meta"]["configuration"] == "2d"
    assert ck["meta"]["n_classes"] == plan.num_classes
    assert ck["meta"]["plan_hash"] == plan.configuration_hash("2d")
    assert ck["meta"]["train_config"]["fold"] == "all"
    assert not {"format", "train_config", "configuration", "n_classes"} & set(ck)


def test_a_format_1_checkpoint_still_loads_to_the_same_network(model_dir: Path) -> None:
    before = _outputs(model_dir)
    _rewrite(_checkpoint(model_dir), _as_format_1)
    assert torch.equal(_outputs(model_dir), before)


def test_a_checkpoint_of_another_plan_is_refused(model_dir: Path) -> None:
    plans = model_dir / "plans.json"
    d = json.loads(plans.read_text())
    d["configurations"]["2d"]["patch_size"][0] += 8  # re-planned with another budget, say
    plans.write_text(json.dumps(d))
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(_checkpoint(model_dir)))}: does not fit {re.escape(str(plans))}: "
        r"it was trained with another plan of 2d \(plan hash [0-9a-f]{16}, this plan's [0-9a-f]{16}: .*\); "
        r"retrain fold all with this plan, or leave it out \(-f with the other folds\)$",
    ):
        load_model(model_dir, folds=["all"])


def test_a_replan_that_changes_only_the_batch_keeps_the_folds(model_dir: Path) -> None:
    plans = model_dir / "plans.json"
    d = json.loads(plans.read_text())
    d["configurations"]["2d"]["batch_size"] += 1
    plans.write_text(json.dumps(d))
    assert load_model(model_dir, folds=["all"]).folds == ["all"]


@pytest.mark.parametrize("fmt", [1, 2])
def test_a_checkpoint_of_another_configuration_is_refused(model_dir: Path, fmt: int) -> None:
    def change(ck: dict) -> None:
        if fmt == 1:
            _as_format_1(ck)
            ck["configuration"] = "3d_fullres"
        else:
            ck["meta"]["configuration"] = "3d_fullres"

    _rewrite(_checkpoint(model_dir), change)
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(_checkpoint(model_dir)))}: does not fit .*: "
        r"it was trained for configuration '3d_fullres', not '2d'",
    ):
        load_model(model_dir, folds=["all"])


def test_invalid_metadata_is_refused(model_dir: Path) -> None:
    _rewrite(_checkpoint(model_dir), lambda ck: ck["meta"].update(n_classes="3"))
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(_checkpoint(model_dir)))}: checkpoint metadata\.n_classes: expected int",
    ):
        load_model(model_dir, folds=["all"])
