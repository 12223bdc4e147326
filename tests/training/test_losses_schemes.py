"""Losses for regions (sigmoid Dice + BCE per region) and for an ignore label (unannotated voxels
take no part in either term), as nnU-Net v2 trains them; plain labels keep MONAI's losses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from autoseg.errors import AutosegError
from autoseg.labels import LabelScheme
from autoseg.training.losses import (
    LOSSES,
    MaskedDiceLoss,
    MaskedPointwiseLoss,
    SchemeLoss,
    make_loss,
)

REGIONS = LabelScheme.from_declared({"background": 0, "hippocampus": [1, 2], "anterior": 1}, [2, 1])
IGNORE = LabelScheme.from_declared({"background": 0, "anterior": 1, "posterior": 2, "ignore": 3})
REGIONS_IGNORE = LabelScheme.from_declared(
    {"background": 0, "hippocampus": [1, 2], "anterior": 1, "ignore": 3}, [2, 1]
)


def _index_map(seed: int, shape: tuple[int, ...], n_values: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_values, (2, 1, *shape), generator=g)


@pytest.mark.parametrize("batch_dice", [False, True])
def test_masked_dice_without_a_mask_is_monais_dice(batch_dice: bool) -> None:
    logits = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    labels = _index_map(1, (6, 5), 3)
    ours = MaskedDiceLoss(batch_dice=batch_dice, regions=False)(logits, labels, None)
    monai = DiceLoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        batch=batch_dice,
        smooth_nr=1e-5,
        smooth_dr=1e-5,
    )(logits, labels)
    torch.testing.assert_close(ours, monai)
    target, _ = REGIONS.training_target(labels)
    ours = MaskedDiceLoss(batch_dice=batch_dice, regions=True)(logits[:, :2], target, None)
    monai = DiceLoss(sigmoid=True, batch=batch_dice, smooth_nr=1e-5, smooth_dr=1e-5)(logits[:, :2], target)
    torch.testing.assert_close(ours, monai)


def test_pointwise_without_a_mask_is_cross_entropy() -> None:
    logits = torch.randn(2, 3, 6, 5, generator=torch.Generator().manual_seed(2))
    labels = _index_map(3, (6, 5), 3)
    torch.testing.assert_close(
        MaskedPointwiseLoss(regions=False)(logits, labels, None), F.cross_entropy(logits, labels[:, 0])
    )
    target, _ = REGIONS.training_target(labels)
    torch.testing.assert_close(
        MaskedPointwiseLoss(regions=True)(logits[:, :2], target, None),
        F.binary_cross_entropy_with_logits(logits[:, :2], target),
    )


@pytest.mark.parametrize("scheme", [IGNORE, REGIONS_IGNORE], ids=["labels", "regions"])
@pytest.mark.parametrize("kind", ["dice_ce", "dice_focal"])
def test_ignored_voxels_get_no_gradient_and_do_not_change_the_loss(scheme: LabelScheme, kind: str) -> None:
    labels = _index_map(4, (8, 8), len(scheme.stored_values))
    assert (labels == scheme.ignore_index).any()
    loss = make_loss(kind, n_outputs=1, batch_dice=False, scheme=scheme)
    logits = torch.randn(
        2, scheme.n_outputs, 8, 8, generator=torch.Generator().manual_seed(5), requires_grad=True
    )
    value = loss(logits, labels)
    value.backward()
    assert logits.grad is not None
    ignored = (labels == scheme.ignore_index).expand_as(logits)
    assert logits.grad[ignored].abs().max() == 0
    assert logits.grad[~ignored].abs().max() > 0
    other = logits.detach().clone()
    other[ignored] = 50.0  # anything at unannotated voxels
    torch.testing.assert_close(loss(other, labels), value.detach())


def test_regions_loss_trains_overlapping_targets() -> None:
    """A few optimiser steps on one batch drive both region outputs to their masks, including
    the voxels where the regions overlap (label 1: hippocampus and anterior)."""
    labels = _index_map(6, (6, 6), 3)
    target, _ = REGIONS.training_target(labels)
    logits = torch.zeros(2, 2, 6, 6, requires_grad=True)
    loss = make_loss("dice_ce", n_outputs=1, batch_dice=True, scheme=REGIONS)
    opt = torch.optim.SGD([logits], lr=50.0)
    for _ in range(50):
        opt.zero_grad()
        loss(logits, labels).backward()
        opt.step()
    assert torch.equal(logits.detach() > 0, target.bool())


def test_deep_supervision_turns_each_heads_labels_into_targets() -> None:
    labels = _index_map(7, (8, 8), len(REGIONS_IGNORE.stored_values))
    loss = make_loss("dice_ce", n_outputs=3, batch_dice=False, scheme=REGIONS_IGNORE)
    outs = [torch.randn(2, 2, s, s, requires_grad=True) for s in (8, 4, 2)]
    value = loss(outs, labels)
    value.backward()
    assert outs[1].grad is not None
    assert outs[1].grad.abs().sum() > 0  # the half-resolution head is supervised
    base = SchemeLoss(batch_dice=False, regions=True)
    half = F.interpolate(labels.float(), size=(4, 4), mode="nearest-exact").long()
    expected = (2 / 3) * base(outs[0], *REGIONS_IGNORE.training_target(labels)) + (1 / 3) * base(
        outs[1], *REGIONS_IGNORE.training_target(half)
    )
    torch.testing.assert_close(value, expected)


def test_plain_labels_keep_the_loss_they_had() -> None:
    plain = LabelScheme.from_declared({"background": 0, "a": 1, "b": 2})
    labels = _index_map(8, (6, 6), 3)
    logits = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(9))
    with_scheme = make_loss("dice_ce", n_outputs=1, batch_dice=False, scheme=plain)
    without = make_loss("dice_ce", n_outputs=1, batch_dice=False)
    assert with_scheme.scheme is None
    assert torch.equal(with_scheme(logits, labels), without(logits, labels))


def test_a_loss_without_a_scheme_parameter_refuses_regions() -> None:
    @LOSSES.register("test_plain_only")
    def plain_only(*, batch_dice: bool) -> torch.nn.Module:
        return torch.nn.MSELoss()

    try:
        make_loss("test_plain_only", n_outputs=1, batch_dice=False)  # plain labels: fine
        with pytest.raises(AutosegError, match="cannot train labels with regions"):
            make_loss("test_plain_only", n_outputs=1, batch_dice=False, scheme=REGIONS)
        with pytest.raises(AutosegError, match="cannot train labels with an ignore label"):
            make_loss("test_plain_only", n_outputs=1, batch_dice=False, scheme=IGNORE)
    finally:
        LOSSES._items.pop("test_plain_only")
