"""Checkpoint metadata: typed, versioned (``format``), validated from the plain dict a checkpoint
holds, and compared with the plan a checkpoint is about to be used with."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from autoseg.checkpoint_meta import CHECKPOINT_FORMAT, CheckpointMeta
from autoseg.errors import CheckpointError
from autoseg.planning.plan import Plan

PLAN = Path(__file__).resolve().parents[1] / "plans" / "hippocampus_sample" / "plans.json"
PATH = Path("/w/models/2d/fold_0/checkpoint_final.pt")
FIX = "; retrain this fold"
TRAIN_CONFIG = {"configuration": "2d", "fold": 0, "epochs": 3}


@pytest.fixture(scope="module")
def plan() -> Plan:
    return Plan.load(PLAN)


@pytest.fixture
def meta(plan) -> dict:
    return CheckpointMeta.for_training(plan, plan.configuration("2d"), TRAIN_CONFIG).to_dict()


def _read(checkpoint: object) -> CheckpointMeta:
    return CheckpointMeta.from_checkpoint(checkpoint, PATH)


def _where() -> str:
    return re.escape(str(PATH))


def test_round_trip(plan, meta):
    assert meta == {
        "format": CHECKPOINT_FORMAT,
        "configuration": "2d",
        "n_classes": 3,
        "plan_hash": plan.configuration_hash("2d"),
        "train_config": TRAIN_CONFIG,
        "previous_stage": None,
    }
    back = _read({"meta": meta, "network": {}})
    assert back.to_dict() == meta
    assert back.differences(plan, plan.configuration("2d")) == []


@pytest.mark.parametrize("version", [4, 1, "3", None], ids=["4", "1", "str", "none"])
def test_wrong_format(meta, version):
    meta["format"] = version
    with pytest.raises(
        CheckpointError,
        match=rf"^{_where()}: checkpoint metadata format is {re.escape(repr(version))}, "
        rf"this autoseg reads 3{re.escape(FIX)}$",
    ):
        _read({"meta": meta})


def test_missing_format(meta):
    del meta["format"]
    with pytest.raises(CheckpointError, match=rf"^{_where()}: checkpoint metadata format is missing"):
        _read({"meta": meta})


def test_missing_key(meta):
    del meta["plan_hash"]
    with pytest.raises(
        CheckpointError,
        match=rf"^{_where()}: checkpoint metadata: missing key\(s\) \['plan_hash'\]{re.escape(FIX)}$",
    ):
        _read({"meta": meta})


def test_extra_key(meta):
    meta["git_commit"] = "abc"
    with pytest.raises(
        CheckpointError, match=rf"^{_where()}: checkpoint metadata: unknown key\(s\) \['git_commit'\]"
    ):
        _read({"meta": meta})


def test_wrong_type(meta):
    meta["n_classes"] = 3.0
    with pytest.raises(
        CheckpointError, match=rf"^{_where()}: checkpoint metadata\.n_classes: expected int, found 3\.0"
    ):
        _read({"meta": meta})


@pytest.mark.parametrize(
    "checkpoint", [{"network": {}}, {"format": 7, "network": {}}], ids=["none", "format-7"]
)
def test_no_metadata(checkpoint):
    with pytest.raises(CheckpointError, match=rf"^{_where()}: no checkpoint metadata \(format (missing|7);"):
        _read(checkpoint)


def test_not_a_dict():
    with pytest.raises(CheckpointError, match=rf"^{_where()}: not an autoseg checkpoint \(a list\)"):
        _read([])


class TestFormat2:
    """Checkpoints of format 2 lack ``previous_stage`` (the cascade's input digest): read as None."""

    def test_loads_without_the_previous_stage_digest(self, plan, meta):
        del meta["previous_stage"]
        meta["format"] = 2
        back = _read({"meta": meta})
        assert (back.format, back.previous_stage) == (CHECKPOINT_FORMAT, None)
        assert back.differences(plan, plan.configuration("2d")) == []

    def test_format_2_with_format_3_keys_is_refused(self, meta):
        meta["format"] = 2
        with pytest.raises(CheckpointError, match="format is 2, this autoseg reads 3"):
            _read({"meta": meta})

    def test_a_cascade_digest_round_trips(self, plan):
        meta = CheckpointMeta.for_training(
            plan, plan.configuration("2d"), TRAIN_CONFIG, previous_stage="0123456789abcdef"
        )
        assert _read({"meta": meta.to_dict()}).previous_stage == "0123456789abcdef"


class TestFormat1:
    """Checkpoints written before the metadata record: its keys at the top level, no plan hash."""

    @pytest.fixture
    def old(self) -> dict:
        return {
            "format": 1,
            "network": {},
            "epoch": 3,
            "train_config": TRAIN_CONFIG,
            "configuration": "2d",
            "n_classes": 3,
        }

    def test_loads_without_plan_identity(self, plan, old):
        meta = _read(old)
        assert meta == CheckpointMeta(1, "2d", 3, None, TRAIN_CONFIG)
        # configuration and classes are still checked; the plan cannot be
        assert meta.differences(plan, plan.configuration("2d")) == []
        assert meta.differences(plan, plan.configuration("3d_fullres")) != []

    def test_missing_key(self, old):
        del old["n_classes"]
        with pytest.raises(
            CheckpointError, match=rf"^{_where()}: checkpoint metadata: missing key\(s\) \['n_classes'\]"
        ):
            _read(old)


class TestCheck:
    def test_what_differs_is_named(self, plan, meta):
        config = plan.configuration("2d")
        meta = _read({"meta": meta})
        other = dataclasses.replace(config, patch_size=tuple(2 * p for p in config.patch_size))
        replanned = dataclasses.replace(plan, configurations={**plan.configurations, "2d": other})
        with pytest.raises(
            CheckpointError,
            match=rf"^{_where()}: does not fit /w/models/2d/plans\.json: "
            rf"it was trained with another plan of 2d \(plan hash {meta.plan_hash}, "
            rf"this plan's {replanned.configuration_hash('2d')}: .*\); do this$",
        ):
            meta.check(replanned, other, path=PATH, against="/w/models/2d/plans.json", fix="do this")

    def test_configuration_and_classes(self, plan, meta):
        meta = _read({"meta": meta})
        fewer = dataclasses.replace(plan, labels={"background": 0, "a": 1})
        found = meta.differences(fewer, plan.configuration("3d_fullres"))
        assert found == [
            "it was trained for configuration '2d', not '3d_fullres'",
            "it has 3 classes, the plan 2",
        ]

    def test_fitting_checkpoint_passes(self, plan, meta):
        _read({"meta": meta}).check(plan, plan.configuration("2d"), path=PATH, against="x", fix="y")
