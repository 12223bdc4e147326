"""Self-configuration: from a fingerprint to a typed plan."""

from __future__ import annotations

from autoseg.planning.plan import Configuration, Network, Normalization, Plan, Resampling
from autoseg.planning.planner import make_plan

__all__ = ["Configuration", "Network", "Normalization", "Plan", "Resampling", "make_plan"]
