"""What a plan's network description must satisfy: plain functions on the plan (no network
library), used by :func:`autoseg.networks.build_network` and by the tests."""

from __future__ import annotations

import math
from collections.abc import Sequence

from autoseg.errors import PlanError
from autoseg.planning.kinds import kind_of
from autoseg.planning.plan import PLAIN_DECODER_CONVS, Configuration

__all__ = ["check_network", "conv_padding", "input_divisor"]


def input_divisor(strides: Sequence[Sequence[int]]) -> tuple[int, ...]:
    """What each spatial axis of the input must be a multiple of: the product of the strides.

    Args:
        strides: per stage, one stride per spatial axis (a plan's ``network.strides``).

    Returns:
        One divisor per spatial axis.

    Examples:
        >>> input_divisor([(1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2)])
        (4, 8, 8)
    """
    return tuple(math.prod(axis) for axis in zip(*strides, strict=True))


def conv_padding(kernel: Sequence[int], stride: Sequence[int]) -> tuple[int, ...]:
    """Zero padding per axis of a convolution, ``(kernel - stride + 1) // 2``.

    The rule ``DynUNet`` uses: with odd kernels a stride-1 convolution keeps the size and a
    stride-s one divides it by s exactly, which is what :func:`input_divisor` relies on.

    Examples:
        >>> conv_padding((1, 3, 3), (1, 2, 2))
        (0, 1, 1)
    """
    return tuple((k - s + 1) // 2 for k, s in zip(kernel, stride, strict=True))


def check_network(config: Configuration, *, in_channels: int, n_classes: int) -> None:
    """Raise :class:`PlanError` naming the first inconsistency of ``config.network``.

    Raises:
        PlanError: the network description is inconsistent (lengths, dimensions, fewer than 3
            stages) or the patch size is not divisible by the product of the strides.
        ValueError: ``in_channels`` or ``n_classes`` is below 1.
    """
    if in_channels < 1 or n_classes < 1:
        msg = f"in_channels and n_classes must be >= 1, got {in_channels} and {n_classes}"
        raise ValueError(msg)
    net = config.network
    where = f"configuration {config.name!r}"
    kind = kind_of(config.kind)
    dims = kind.spatial_dims
    if net.n_stages < 3:
        msg = f"{where}: the U-Net needs at least 3 stages, got n_stages={net.n_stages}"
        raise PlanError(msg)
    lengths = {
        "features_per_stage": len(net.features_per_stage),
        "kernel_sizes": len(net.kernel_sizes),
        "strides": len(net.strides),
    }
    if any(n != net.n_stages for n in lengths.values()):
        msg = f"{where}: n_stages is {net.n_stages} but the per-stage lists have lengths {lengths}"
        raise PlanError(msg)
    for name, per_stage in (("kernel_sizes", net.kernel_sizes), ("strides", net.strides)):
        if any(len(v) != dims for v in per_stage):
            msg = (
                f"{where}: every entry of {name} needs {dims} values for kind {config.kind!r}, "
                f"got {per_stage}"
            )
            raise PlanError(msg)
    _check_encoder(config)
    if kind.stacks_slices and config.in_slices < 1:
        msg = f"{where}: in_slices must be >= 1 for {config.kind}, got {config.in_slices}"
        raise PlanError(msg)
    divisor = input_divisor(net.strides)
    if len(config.patch_size) != dims or any(p % d for p, d in zip(config.patch_size, divisor, strict=True)):
        msg = (
            f"{where}: patch size {tuple(config.patch_size)} must have {dims} axes, each divisible by "
            f"the product of the strides {divisor}; run `autoseg plan` again"
        )
        raise PlanError(msg)


def _check_encoder(config: Configuration) -> None:
    """The encoder fields agree: a plain encoder has no block counts and 2 decoder convolutions
    (the only plain U-Net there is); a residual one a block count >= 1 per stage."""
    net = config.network
    where = f"configuration {config.name!r}"
    if net.encoder == "plain" and (
        net.blocks_per_stage is not None or net.decoder_convs != PLAIN_DECODER_CONVS
    ):
        msg = (
            f"{where}: a plain encoder has blocks_per_stage null and decoder_convs "
            f"{PLAIN_DECODER_CONVS}, got {net.blocks_per_stage} and {net.decoder_convs}"
        )
        raise PlanError(msg)
    if net.encoder == "residual":
        blocks = net.blocks_per_stage
        if blocks is None or len(blocks) != net.n_stages or min(blocks) < 1:
            msg = (
                f"{where}: a residual encoder needs blocks_per_stage, one count >= 1 per stage, got {blocks}"
            )
            raise PlanError(msg)
        if net.decoder_convs < 1:
            msg = f"{where}: decoder_convs must be >= 1, got {net.decoder_convs}"
            raise PlanError(msg)
