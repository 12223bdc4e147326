"""The network of a plan: :func:`build_network` makes the :class:`UNet` that training (with
deep-supervision heads), prediction and export all use; :mod:`.topology` checks a plan's network
description."""

from __future__ import annotations

from autoseg.networks.topology import input_divisor
from autoseg.networks.unet import UNet, build_network, network_for

__all__ = ["UNet", "build_network", "input_divisor", "network_for"]
