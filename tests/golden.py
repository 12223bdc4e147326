"""The stored golden plan, as an older plan must load: tests of plan migration compare with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from autoseg.planning.plan import Plan
from autoseg.planning.presets import PRESETS

GOLDEN_PLAN = Path(__file__).resolve().parents[1] / "plans" / "hippocampus_sample" / "plans.json"


def golden_without_default_presets() -> Plan:
    """The golden plan less what the presets planned by default added since older schema
    versions (``3d_fullres_resenc`` and its note): what a plan written before them loads as."""
    plan = Plan.load(GOLDEN_PLAN)
    added = {PRESETS[n].configuration_name("3d_fullres") for n in PRESETS if PRESETS[n].planned_by_default}
    assert added <= set(plan.configurations)
    return dataclasses.replace(
        plan,
        configurations={n: c for n, c in plan.configurations.items() if n not in added},
        notes=tuple(n for n in plan.notes if n.split(":")[0] not in added),
    )
