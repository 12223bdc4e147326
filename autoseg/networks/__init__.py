"""Networks built from a plan.

* :func:`build_network`: the training U-Net (MONAI ``DynUNet`` shaped by the plan, with
  deep-supervision heads at native resolution);
* :func:`build_inference_network`: the same U-Net in plain torch, without heads, loading the
  training checkpoints; prediction uses it so that ``autoseg predict`` does not import MONAI.

The MONAI-based names are resolved on first use, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

from autoseg.networks.inference import InferenceUNet, build_inference_network
from autoseg.networks.topology import input_divisor

__all__ = ["InferenceUNet", "PlanUNet", "build_inference_network", "build_network", "input_divisor"]


def __getattr__(name: str) -> Any:
    if name in ("PlanUNet", "build_network"):
        from autoseg.networks import unet

        return getattr(unet, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
