"""Loading a cascade stage for prediction: its previous stage must be trained, with its plan."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autoseg.errors import ModelError
from autoseg.fingerprint.model import Fingerprint
from autoseg.inference.model import load_model
from autoseg.planning import Plan, make_plan

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Plan]:
    """A cascade stage with one (dummy) trained fold and no 3d_lowres yet."""
    fp = Fingerprint.load(ROOT / "plans" / "hippocampus_sample" / "fingerprint.json")
    plan = make_plan(fp, add_lowres=True)
    casc = tmp_path / "models" / "3d_cascade_fullres"
    (casc / "fold_0").mkdir(parents=True)
    (casc / "fold_0" / "checkpoint_final.pt").write_bytes(b"")
    plan.save(casc / "plans.json")
    return tmp_path / "models", plan


def test_an_untrained_previous_stage_is_named(models):
    root, plan = models
    with pytest.raises(ModelError, match="takes the prediction of 3d_lowres as input") as e:
        load_model(root / "3d_cascade_fullres")
    assert f"`autoseg train {plan.dataset_name} 3d_lowres FOLD`" in str(e.value)


def test_a_previous_stage_of_another_plan_is_refused(models):
    root, plan = models
    low = plan.configuration("3d_lowres")
    other = dataclasses.replace(
        plan,
        configurations={**plan.configurations, "3d_lowres": dataclasses.replace(low, spacing=(3.0,) * 3)},
    )
    (root / "3d_lowres" / "fold_0").mkdir(parents=True)
    (root / "3d_lowres" / "fold_0" / "checkpoint_final.pt").write_bytes(b"")
    other.save(root / "3d_lowres" / "plans.json")
    with pytest.raises(ModelError, match="3d_lowres was trained with another plan"):
        load_model(root / "3d_cascade_fullres")
