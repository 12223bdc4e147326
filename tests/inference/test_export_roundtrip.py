"""The way back from the network's grid to the source grid, checked without a network: a label
map pushed through preprocessing and turned into one-hot logits must come back onto the source
grid (same shape, spacing, origin, direction) and match the original label map."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from autoseg.evaluation.metrics import dice_per_label
from autoseg.inference.source_grid import (
    argmax_resampled,
    logits_to_labels,
    probabilities_on_source_grid,
    resize_channels,
)
from autoseg.io.image import read_image
from autoseg.io.samples import DATA_DIR, sample_dataset_dir
from autoseg.planning.plan import Plan
from autoseg.preprocessing.case import preprocess_arrays

PLANS = DATA_DIR.parent / "plans"


def _case(name: str = "hippocampus_004") -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    img = read_image(sample_dataset_dir() / "imagesTr" / f"{name}.nii.gz")
    lab = read_image(sample_dataset_dir() / "labelsTr" / f"{name}.nii.gz")
    return img.array[None].astype(np.float32), np.rint(lab.array).astype(np.uint8), img.spacing


def _one_hot_logits(seg: np.ndarray, n: int) -> torch.Tensor:
    return (
        torch.nn.functional.one_hot(torch.from_numpy(seg.astype(np.int64)), n).permute(3, 0, 1, 2).float()
        * 10
    )


def _plan_variant(**config_changes: object) -> tuple[Plan, object]:
    plan = Plan.load(PLANS / "hippocampus_sample" / "plans.json")
    cfg = dataclasses.replace(plan.configuration("3d_fullres"), **config_changes)
    return plan, cfg


@pytest.mark.parametrize(
    ("spacing", "min_dice"),
    [((1.0, 1.0, 1.0), 1.0), ((1.5, 1.5, 1.5), 0.85), ((0.7, 0.8, 0.9), 0.95), ((4.0, 1.0, 1.0), 0.6)],
    ids=["same", "coarser", "finer", "thick_z"],
)
def test_labels_come_back_on_the_source_grid(spacing: tuple[float, ...], min_dice: float) -> None:
    data, seg, sp = _case()
    plan, cfg = _plan_variant(spacing=spacing)
    pre = preprocess_arrays(data, seg, sp, plan, cfg, case_id="x")
    back = logits_to_labels(_one_hot_logits(pre.seg, plan.num_classes), pre.properties, plan)
    assert back.shape == seg.shape
    dice = dice_per_label(back, seg, [1, 2])
    assert min(dice.values()) >= min_dice, dice
    if min_dice == 1.0:
        np.testing.assert_array_equal(back, seg)


def test_transposed_plan_comes_back_in_source_axis_order() -> None:
    data, seg, sp = _case()
    plan, cfg = _plan_variant()
    plan = dataclasses.replace(plan, transpose_forward=(2, 0, 1), transpose_backward=(1, 2, 0))
    pre = preprocess_arrays(data, seg, sp, plan, cfg, case_id="x")
    assert pre.data.shape[1:] == (seg.shape[2], seg.shape[0], seg.shape[1])
    back = logits_to_labels(_one_hot_logits(pre.seg, plan.num_classes), pre.properties, plan)
    np.testing.assert_array_equal(back, seg)


def test_crop_is_undone_with_background_outside() -> None:
    data, seg, sp = _case()
    padded = np.zeros((1, *(s + 10 for s in data.shape[1:])), np.float32)
    padded[:, 5:-5, 5:-5, 5:-5] = data + 1  # nonzero inside, zero border: cropping removes it
    seg_p = np.zeros(padded.shape[1:], np.uint8)
    seg_p[5:-5, 5:-5, 5:-5] = seg
    plan, cfg = _plan_variant()
    pre = preprocess_arrays(padded, seg_p, sp, plan, cfg, case_id="x")
    assert pre.properties.bbox == tuple((5, s - 5) for s in padded.shape[1:])
    back = logits_to_labels(_one_hot_logits(pre.seg, plan.num_classes), pre.properties, plan)
    np.testing.assert_array_equal(back, seg_p)
    prob = probabilities_on_source_grid(_one_hot_logits(pre.seg, 3), pre.properties, plan)
    assert prob.shape == (3, *seg_p.shape)
    assert float(prob[0, 0, 0, 0]) == 1.0


@pytest.mark.parametrize("z_axis", [None, 0, 1, 2])
@pytest.mark.parametrize("shape", [(9, 10, 12), (23, 5, 17), (6, 7, 8), (1, 20, 3), (6, 3, 8)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_plane_by_plane_argmax_equals_dense_argmax(
    z_axis: int | None, shape: tuple[int, ...], seed: int
) -> None:
    """Blending in-plane-resized input planes gives the argmax of the dense resize (up- and
    downsampling, nearest along a z axis, an axis kept or of size 1)."""
    g = torch.Generator().manual_seed(sum(shape) + seed)
    logits = torch.randn(11, 6, 7, 8, generator=g)
    dense = resize_channels(logits, shape, z_axis=z_axis).argmax(0)
    walked = argmax_resampled(logits, shape, z_axis=z_axis)
    assert walked.dtype == torch.uint8
    assert torch.equal(walked, dense.to(walked.dtype))


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (1.5, 1.2, 0.9)], ids=["same_grid", "resized"])
def test_probabilities_are_float32_softmax_and_leave_the_logits(spacing: tuple[float, ...]) -> None:
    """In-place softmax of the resized logits: equal to torch's, the caller's logits untouched
    (also when no resize happens and the resized tensor could be the input itself), and its
    argmax is the label map of :func:`logits_to_labels` wherever the top two are not tied."""
    data, seg, sp = _case()
    plan, cfg = _plan_variant(spacing=spacing)
    pre = preprocess_arrays(data, seg, sp, plan, cfg, case_id="x")
    logits = torch.randn(3, *pre.seg.shape, generator=torch.Generator().manual_seed(0)) * 3
    before = logits.clone()
    prob = probabilities_on_source_grid(logits, pre.properties, plan)
    assert torch.equal(logits, before)
    assert prob.dtype == np.float32
    expected = torch.softmax(resize_channels(logits, pre.properties.shape_after_crop, z_axis=None), 0)
    bbox = tuple(slice(lo, hi) for lo, hi in pre.properties.bbox)
    np.testing.assert_allclose(prob[(slice(None), *bbox)], expected.numpy(), atol=1e-6)
    labels = logits_to_labels(logits, pre.properties, plan)
    top2 = np.sort(prob, axis=0)[-2:]
    clear = top2[1] - top2[0] > 1e-5
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(np.asarray(plan.label_values)[prob.argmax(0)][clear], labels[clear])
