"""The extension points of training: optimiser, schedule, loss and augmentation chosen by name
from registries a user extends (from Python, or from a package's entry points)."""

from __future__ import annotations

import json
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest
import torch

from autoseg import _registry
from autoseg._registry import Registry
from autoseg.cli import main
from autoseg.data.augmentation import AUGMENTATIONS, Augmentation, validation_transforms
from autoseg.errors import AutosegError
from autoseg.io.samples import copy_sample_subset
from autoseg.training.losses import LOSSES, dice_ce
from autoseg.training.schedule import OPTIMIZERS, SCHEDULES
from tests.budget import tiny


class TestRegistry:
    def test_register_and_get(self):
        reg: Registry = Registry("widget", flag="--widget")

        @reg.register("a")
        def a() -> int:
            return 1

        assert reg.get("a") is a
        assert reg.names() == ["a"]

    def test_a_name_is_registered_once(self):
        reg: Registry = Registry("widget", flag="--widget")
        reg.register("a")(len)
        with pytest.raises(ValueError, match="a widget named 'a' is registered already"):
            reg.register("a")(abs)

    def test_unknown_name_lists_the_known_ones(self):
        reg: Registry = Registry("widget", flag="--widget")
        reg.register("b")(len)
        reg.register("a")(abs)
        with pytest.raises(
            AutosegError, match=r"^--widget 'c': no widget of that name; choose one of \['a', 'b'\]"
        ):
            reg.get("c")

    def test_entry_points_are_loaded_on_a_miss(self, monkeypatch: pytest.MonkeyPatch):
        seen = []

        def entry_points(*, group: str) -> list[EntryPoint]:
            seen.append(group)
            return [EntryPoint("plugin_poly", "autoseg.training.schedule:poly_lr", group)]

        monkeypatch.setattr(_registry.metadata, "entry_points", entry_points)
        reg: Registry = Registry("schedule", flag="--schedule")
        from autoseg.training.schedule import poly_lr

        assert reg.get("plugin_poly") is poly_lr
        assert seen == ["autoseg.schedule"]
        with pytest.raises(AutosegError):
            reg.get("still_missing")
        assert seen == ["autoseg.schedule"]  # loaded once

    def test_built_in_names(self):
        assert {"dice_ce", "dice_focal"} <= set(LOSSES.names())
        assert "sgd" in OPTIMIZERS.names()
        assert "poly" in SCHEDULES.names()
        assert {"default", "none"} <= set(AUGMENTATIONS.names())


@pytest.fixture
def user_components():
    """A loss, optimiser, schedule and augmentation registered as a user would, each recording
    that it was used; unregistered afterwards."""
    calls: dict[str, list] = {"loss": [], "optimizer": [], "schedule": [], "augmentation": []}

    def loss(*, batch_dice: bool):
        calls["loss"].append(batch_dice)
        return dice_ce(batch_dice=batch_dice)

    def optimizer(parameters, settings):
        calls["optimizer"].append(settings.lr)
        return torch.optim.Adam(parameters, lr=settings.lr)

    def schedule(initial: float, epoch: int, total: int) -> float:
        calls["schedule"].append(epoch)
        return initial / (1 + epoch)

    def augmentation(config):
        calls["augmentation"].append(config.name)
        return Augmentation(tuple(config.patch_size), validation_transforms(config, tensors=False))

    entries = [
        (LOSSES, "test_loss", loss),
        (OPTIMIZERS, "test_adam", optimizer),
        (SCHEDULES, "test_harmonic", schedule),
        (AUGMENTATIONS, "test_crop_only", augmentation),
    ]
    for registry, name, fn in entries:
        registry.register(name)(fn)
    yield calls
    for registry, name, _ in entries:
        registry._items.pop(name)


def test_training_uses_the_named_components(tmp_path: Path, user_components: dict) -> None:
    ds = copy_sample_subset(tmp_path / "hippo", 5)
    work = tmp_path / "work"
    common = ["--work-dir", str(work), "-q"]
    assert main(["plan", str(ds), "--preprocess-workers", "1", *common]) == 0
    args = [
        "train",
        "hippo",
        "3d_fullres",
        "all",
        *tiny(epochs=2, iters=1),
        "--lr",
        "0.001",
        "--loss",
        "test_loss",
        "--optimizer",
        "test_adam",
        "--schedule",
        "test_harmonic",
        "--augmentation",
        "test_crop_only",
        *common,
    ]
    assert main(args) == 0
    assert user_components["loss"] == [False]  # the 3d_fullres plan of 5 cases: no batch Dice
    assert user_components["optimizer"] == [0.001]
    assert user_components["schedule"] == [0, 1]
    assert user_components["augmentation"] == ["3d_fullres"]
    saved = json.loads(
        (work / "hippo" / "models" / "3d_fullres" / "fold_all" / "train_config.json").read_text()
    )
    assert (saved["loss"], saved["optimizer"], saved["schedule"], saved["augmentation"]) == (
        "test_loss",
        "test_adam",
        "test_harmonic",
        "test_crop_only",
    )


def test_a_run_stored_before_the_named_components_continues(tmp_path: Path) -> None:
    """A checkpoint whose stored settings predate --optimizer/--schedule/--augmentation meant
    sgd/poly/default: --continue accepts it."""
    ds = copy_sample_subset(tmp_path / "hippo", 5)
    work = tmp_path / "work"
    common = ["--work-dir", str(work), "-q"]
    assert main(["plan", str(ds), "--preprocess-workers", "1", *common]) == 0
    args = ["train", "hippo", "3d_fullres", "all", *common]
    assert main([*args, *tiny(iters=1)]) == 0
    fold = work / "hippo" / "models" / "3d_fullres" / "fold_all"
    stored = sorted(fold.glob("checkpoint_*.pt"))
    assert fold / "checkpoint_final.pt" in stored
    for path in stored:
        ck = torch.load(path, weights_only=True)
        for key in ("optimizer", "schedule", "augmentation"):
            del ck["meta"]["train_config"][key]
        torch.save(ck, path)
    assert main([*args, *tiny(epochs=2, iters=1), "--continue"]) == 0
    path = fold / "checkpoint_final.pt"
    assert torch.load(path, weights_only=True)["epoch"] == 2
