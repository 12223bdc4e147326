"""Networks built from a plan: :func:`build_network` (a MONAI ``DynUNet`` shaped by the plan)."""

from __future__ import annotations

from autoseg.networks.unet import PlanUNet, build_network, input_divisor

__all__ = ["PlanUNet", "build_network", "input_divisor"]
