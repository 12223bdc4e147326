"""Segmentation losses with deep supervision: Dice + cross-entropy (nnU-Net's) or Dice + focal.

:func:`make_loss` builds a :class:`DeepSupervisionLoss` that takes the network's training output
(:class:`~autoseg.networks.unet.UNet`: logits ``[full, 1/2, 1/4, ...]`` at their native
resolutions, or one tensor) and the integer label map ``(B, 1, *spatial)``, and returns a scalar.

* Head ``i`` has weight ``1 / 2**i``; the lowest-resolution head gets 0; the weights are then
  normalised to sum to 1 (:func:`deep_supervision_weights`). The base loss is not evaluated for a
  head of weight 0; the head still enters the result as ``0 * logits.sum()``, so its parameters get
  a zero gradient rather than none: DistributedDataParallel (without ``find_unused_parameters``)
  requires every parameter to take part, and weight decay treats the head as nnU-Net does.
* The target is brought to each head's resolution by **nearest-neighbour** sampling of the
  integer label map (``interpolate(..., mode="nearest-exact")``), as nnU-Net v2 does
  (batchgeneratorsv2 ``DownsampleSegForDSTransform``). The alternative, max-pooling a one-hot
  target, marks a coarse voxel as every class present in its block: the target is then no longer a
  partition, so cross-entropy against a class index is undefined and Dice rewards predicting
  several classes at once at boundaries. Nearest keeps a valid label map at every scale and costs
  almost nothing.
* The loss is computed in float32 with autocast disabled, whatever precision the network ran in
  (bf16 on CPU, fp16 on CUDA): softmax, log and the Dice sums lose too much in 16 bits.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from torch import nn

from autoseg._registry import Registry
from autoseg.errors import AutosegError
from autoseg.labels import LabelScheme

__all__ = [
    "LOSSES",
    "DeepSupervisionLoss",
    "DiceFocalLoss",
    "MaskedDiceLoss",
    "MaskedPointwiseLoss",
    "SchemeLoss",
    "deep_supervision_weights",
    "make_loss",
]

SMOOTH = 1e-5


def deep_supervision_weights(n_outputs: int) -> tuple[float, ...]:
    """nnU-Net's deep-supervision weights: ``1 / 2**i``, the last one 0, normalised to sum 1.

    With a single output the weight is 1 (there is nothing to supervise below it).

    Args:
        n_outputs: number of network outputs, finest first.

    Returns:
        One weight per output.

    Raises:
        ValueError: ``n_outputs`` is below 1.

    Examples:
        >>> [round(w, 4) for w in deep_supervision_weights(3)]
        [0.6667, 0.3333, 0.0]
        >>> deep_supervision_weights(1)
        (1.0,)
    """
    if n_outputs < 1:
        msg = f"n_outputs must be >= 1, got {n_outputs}"
        raise ValueError(msg)
    if n_outputs == 1:
        return (1.0,)
    raw = [0.5**i for i in range(n_outputs - 1)] + [0.0]
    total = sum(raw)
    return tuple(w / total for w in raw)


def _soft_dice_args(batch_dice: bool) -> dict[str, Any]:
    """MONAI's Dice arguments for nnU-Net's soft Dice of plain labels (both losses use them):
    softmax over the classes, background left out, smooth 1e-5 on both sides."""
    return {
        "include_background": False,
        "to_onehot_y": True,
        "softmax": True,
        "batch": batch_dice,
        "smooth_nr": SMOOTH,
        "smooth_dr": SMOOTH,
    }


class DiceFocalLoss(nn.Module):
    """Soft Dice (foreground classes) plus softmax focal loss (all classes).

    MONAI's ``DiceFocalLoss`` applies ``include_background`` to both terms and uses a *sigmoid*
    focal loss, so with ``include_background=False`` the background logit would get no focal
    gradient at all. Here the focal term plays the role cross-entropy plays in Dice + CE: softmax
    over all classes, summed over classes and averaged over voxels, so with ``gamma = 0`` it equals
    cross-entropy.

    Args:
        batch_dice: sum the Dice statistics over the batch before dividing (True) or per sample.
        gamma: focusing exponent of the focal term.
    """

    def __init__(self, *, batch_dice: bool, gamma: float = 2.0) -> None:
        super().__init__()
        self.dice = DiceLoss(**_soft_dice_args(batch_dice))
        self.focal = FocalLoss(
            include_background=True, to_onehot_y=True, use_softmax=True, gamma=gamma, reduction="none"
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Loss of ``(B, C, *spatial)`` logits against a ``(B, 1, *spatial)`` label map."""
        focal = self.focal(logits, target).sum(dim=1).mean()
        return self.dice(logits, target) + focal


class DeepSupervisionLoss(nn.Module):
    """A weighted sum of one base loss over the outputs of a deeply supervised network.

    Args:
        base: loss of ``(B, C, *spatial)`` float32 logits against a ``(B, 1, *spatial)`` int64
            label map, returning a scalar.
        weights: one per output, finest first (see :func:`deep_supervision_weights`).

    Call it with ``outputs``, a list of logits ``[(B, C, *s_0), (B, C, *s_1), ...]`` finest first
    (``len(weights)`` of them) or one ``(B, C, *s_0)`` tensor, and ``target``, ``(B, 1, *s_0)``
    integer labels ``0..C-1`` (a float tensor holding integers is accepted too); with a
    ``scheme``, the stored indices of :class:`~autoseg.labels.LabelScheme`, turned into each
    head's target and ignore mask by :meth:`~autoseg.labels.LabelScheme.training_target`. The
    target is resampled to each output's size with nearest-neighbour sampling.
    """

    def __init__(
        self,
        base: Callable[..., torch.Tensor],
        weights: Sequence[float],
        scheme: LabelScheme | None = None,
    ) -> None:
        super().__init__()
        if not weights or any(w < 0 for w in weights):
            msg = f"weights must be a non-empty sequence of values >= 0, got {list(weights)}"
            raise ValueError(msg)
        self.base = base
        self.weights = tuple(float(w) for w in weights)
        #: None: plain labels without ignore, the base loss takes ``(logits, labels)`` as before
        #: regions and ignore labels existed; else it takes ``(logits, target, mask)``.
        self.scheme = scheme

    def forward(self, outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        """Scalar float32 loss (see the class docstring for the layouts)."""
        if isinstance(outputs, torch.Tensor):
            pairs: list[tuple[float, torch.Tensor]] = [(1.0, outputs)]
        else:
            if len(outputs) != len(self.weights):
                msg = (
                    f"the loss was made for {len(self.weights)} outputs, got {len(outputs)}; "
                    "pass n_outputs=len(network outputs) to make_loss"
                )
                raise ValueError(msg)
            pairs = list(zip(self.weights, outputs, strict=True))
        _check_target(pairs[0][1], target)
        with torch.autocast(device_type=target.device.type, enabled=False):
            total = torch.zeros((), dtype=torch.float32, device=target.device)
            for weight, logits in pairs:
                if weight == 0:  # keep the head in the graph (zero gradient), skip the loss itself
                    total = total + 0.0 * logits.float().sum()
                    continue
                labels = _resize_labels(target, logits.shape[2:])
                if self.scheme is None:
                    total = total + weight * self.base(logits.float(), labels)
                else:
                    goal, mask = self.scheme.training_target(labels)
                    total = total + weight * self.base(logits.float(), goal, mask)
        return total


class MaskedDiceLoss(nn.Module):
    """Soft Dice with an optional mask of annotated voxels: softmax over labels (background left
    out, as nnU-Net) or sigmoid per region (every region counts).

    ``1 - (2 * tp + smooth) / (predicted + reference + smooth)`` per channel (and per sample
    unless ``batch_dice``), averaged; only voxels where the mask is 1 enter the sums, so an
    unannotated voxel neither rewards nor penalises any prediction (nnU-Net's ignore label).
    Equal to MONAI's ``DiceLoss`` when nothing is masked.
    """

    def __init__(self, *, batch_dice: bool, regions: bool) -> None:
        super().__init__()
        self.batch_dice = batch_dice
        self.regions = regions

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``logits`` ``(B, C, *s)``; ``target`` ``(B, C, *s)`` 0/1 regions or ``(B, 1, *s)``
        labels; ``mask`` ``(B, 1, *s)`` or None."""
        probs, onehot = _probabilities_and_onehot(logits, target, regions=self.regions)
        if not self.regions:
            probs, onehot = probs[:, 1:], onehot[:, 1:]
        if mask is not None:
            probs, onehot = probs * mask, onehot * mask
        axes = [0, *range(2, logits.ndim)] if self.batch_dice else list(range(2, logits.ndim))
        tp = (probs * onehot).sum(axes)
        denominator = probs.sum(axes) + onehot.sum(axes)
        return (1.0 - (2.0 * tp + SMOOTH) / (denominator + SMOOTH)).mean()


class MaskedPointwiseLoss(nn.Module):
    """Cross-entropy (labels, softmax) or binary cross-entropy (regions, sigmoid), optionally
    focal (``gamma > 0``), averaged over the annotated voxels only.

    With ``gamma = 0`` and no mask this is ``F.cross_entropy`` (labels) or
    ``F.binary_cross_entropy_with_logits`` (regions, averaged over regions and voxels).
    """

    def __init__(self, *, regions: bool, gamma: float = 0.0) -> None:
        super().__init__()
        self.regions = regions
        self.gamma = gamma

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """See :class:`MaskedDiceLoss` for the layouts."""
        if self.regions:
            per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
            if self.gamma:
                p_true = torch.exp(-per)
                per = (1.0 - p_true) ** self.gamma * per
        else:
            log_p = F.log_softmax(logits, dim=1)
            labels = target[:, 0].long()
            per = -log_p.gather(1, labels[:, None])
            if self.gamma:
                per = (1.0 - torch.exp(-per)) ** self.gamma * per
        if mask is None:
            return per.mean()
        weight = mask.expand_as(per)
        return (per * weight).sum() / weight.sum().clamp_min(1.0)


class SchemeLoss(nn.Module):
    """Dice plus a pointwise term, for any label scheme (regions, ignore): the base loss
    :class:`DeepSupervisionLoss` calls with ``(logits, target, mask)``."""

    def __init__(self, *, batch_dice: bool, regions: bool, gamma: float = 0.0) -> None:
        super().__init__()
        self.dice = MaskedDiceLoss(batch_dice=batch_dice, regions=regions)
        self.pointwise = MaskedPointwiseLoss(regions=regions, gamma=gamma)

    def forward(self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Scalar loss (see :class:`MaskedDiceLoss` for the layouts)."""
        return self.dice(logits, target, mask) + self.pointwise(logits, target, mask)


def _probabilities_and_onehot(
    logits: torch.Tensor, target: torch.Tensor, *, regions: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if regions:
        return torch.sigmoid(logits), target.float()
    onehot = F.one_hot(target[:, 0].long(), logits.shape[1]).movedim(-1, 1).float()
    return torch.softmax(logits, dim=1), onehot


#: Base losses by name: ``(batch_dice=..., scheme=...) -> loss``. With ``scheme`` None (plain
#: labels, no ignore label) the loss takes ``(logits (B, C, *s), labels (B, 1, *s))``; with a
#: scheme, ``(logits, target, mask)`` as :meth:`autoseg.labels.LabelScheme.training_target` makes
#: them. A loss registered without a ``scheme`` parameter serves plain labels only.
#: :func:`make_loss` wraps the chosen one for deep supervision.
LOSSES: Registry[Callable[..., Callable[..., torch.Tensor]]] = Registry("loss", flag="--loss")


@LOSSES.register("dice_ce")
def dice_ce(*, batch_dice: bool, scheme: LabelScheme | None = None) -> nn.Module:
    """nnU-Net's loss: soft Dice plus cross-entropy, weight 1 each, smooth 1e-5. Labels: Dice over
    the foreground classes, softmax cross-entropy over all; regions: Dice and binary
    cross-entropy per region (sigmoid). An ignore label's voxels are left out of both terms."""
    if scheme is None:
        return DiceCELoss(**_soft_dice_args(batch_dice))
    return SchemeLoss(batch_dice=batch_dice, regions=scheme.regions)


@LOSSES.register("dice_focal")
def dice_focal(*, batch_dice: bool, scheme: LabelScheme | None = None) -> nn.Module:
    """The same Dice plus a focal loss with gamma 2 (:class:`DiceFocalLoss` for plain labels;
    a sigmoid focal term per region for regions)."""
    if scheme is None:
        return DiceFocalLoss(batch_dice=batch_dice)
    return SchemeLoss(batch_dice=batch_dice, regions=scheme.regions, gamma=2.0)


def make_loss(
    kind: str, *, n_outputs: int, batch_dice: bool, scheme: LabelScheme | None = None
) -> DeepSupervisionLoss:
    """The training loss for a network with ``n_outputs`` outputs (1 without deep supervision).

    Args:
        kind: a name in :data:`LOSSES`: ``"dice_ce"`` (nnU-Net's, :func:`dice_ce`),
            ``"dice_focal"`` (:func:`dice_focal`) or one registered by the user.
        n_outputs: outputs the network returns in training (``n_stages - 1`` for a
            :class:`~autoseg.networks.unet.UNet` with deep supervision, else 1).
        batch_dice: the configuration's ``batch_dice``.
        scheme: the plan's label scheme; with regions or an ignore label the target becomes
            per-region masks and an ignore mask (:class:`SchemeLoss`). None, or plain labels
            without ignore: the loss of a label map, as before.

    Returns:
        A :class:`DeepSupervisionLoss` with :func:`deep_supervision_weights` weights.

    Raises:
        AutosegError: unknown ``kind``.
        ValueError: ``n_outputs`` below 1.

    Examples:
        >>> loss = make_loss("dice_ce", n_outputs=3, batch_dice=False)
        >>> logits = [torch.zeros(2, 3, 8, 8), torch.zeros(2, 3, 4, 4), torch.zeros(2, 3, 2, 2)]
        >>> target = torch.zeros(2, 1, 8, 8, dtype=torch.long)
        >>> loss(logits, target).shape
        torch.Size([])
    """
    weights = deep_supervision_weights(n_outputs)
    factory = LOSSES.get(kind)
    if scheme is not None and not scheme.regions and scheme.ignore is None:
        scheme = None  # plain labels: the losses as they were, bit for bit
    if scheme is None:
        return DeepSupervisionLoss(factory(batch_dice=batch_dice), weights)
    if "scheme" not in inspect.signature(factory).parameters:
        what = "regions" if scheme.regions else "an ignore label"
        msg = (
            f"loss {kind!r} takes no label scheme, so it cannot train labels with {what}; "
            "choose --loss dice_ce or dice_focal, or give the loss a `scheme` parameter"
        )
        raise AutosegError(msg)
    return DeepSupervisionLoss(factory(batch_dice=batch_dice, scheme=scheme), weights, scheme)


def _check_target(logits: torch.Tensor, target: torch.Tensor) -> None:
    expected = (logits.shape[0], 1, *logits.shape[2:])
    if tuple(target.shape) != expected:
        msg = (
            f"target must be (B, 1, *spatial) label indices at the finest output's size {expected}, "
            f"got {tuple(target.shape)}; add the channel axis with target[:, None]"
        )
        raise ValueError(msg)


def _resize_labels(target: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``target`` as int64, resampled to ``size`` with nearest-neighbour if it differs."""
    if tuple(target.shape[2:]) != tuple(size):
        target = F.interpolate(target.float(), size=tuple(size), mode="nearest-exact")
    return target.long()
