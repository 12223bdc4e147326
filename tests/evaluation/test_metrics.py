"""Hand-worked cases for ``autoseg.evaluation.metrics``.

The main fixture is a 10x10x10 cube at [5:15]^3 in a (30, 20, 20) grid, and a copy shifted by
2 voxels along z ([7:17, 5:15, 5:15]). Worked out once here and used below:

- overlap 8*10*10 = 800 voxels, so TP 800, FP 200, FN 200, TN 12000 - 1200 = 10800;
  Dice 1600/2000 = 0.8, IoU 800/1200 = 2/3, sensitivity = precision = 0.8,
  specificity 10800/11000.
- Edge voxels (with a 6-neighbour outside): the cube's shell, 10^3 - 8^3 = 488 voxels. Distance
  of each edge voxel of the shifted cube to the nearest edge voxel of the other, in voxels:
    * the 8 side-wall rings at z = 7..14 (8 * 36 = 288 voxels): 0 (same voxel is an edge);
    * the wall ring at z = 15 (36 voxels): 1 along z (the ring at z = 14);
    * the whole top face at z = 16 (100 voxels): 2 along z (the face at z = 14);
    * the inside of the bottom face at z = 7 (8*8 = 64 voxels): min(in-plane distance to the
      side wall, 2 along z to the face at z = 5): 1 for its outer ring of 28, 2 for the 36 inside.
  288 + 36 + 100 + 64 = 488. By symmetry the other direction gives the same distances.
- HD95: 100/488 = 20% of the distances are the largest (2 along z), so the 95th percentile is
  2 * spacing_z: 2 mm at spacing (1, 1, 1), 4 mm at (2, 1, 1).
- NSD at spacing 1: within 0 mm 288/488, within 1 mm 288 + 36 + 28 = 352/488, within 2 mm all.
  At spacing (2, 1, 1) the z distances double (0, 2, 4, and min(1 or 2 in-plane, 4)), so within
  1 mm: 288 + 28 = 316/488.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from autoseg.evaluation.metrics import (
    METRICS,
    absent_label_metrics,
    case_metrics,
    confusion,
    dice_per_label,
    image_diagonal_mm,
    surface_metrics,
)

SHAPE = (30, 20, 20)
ISO = (1.0, 1.0, 1.0)
ANISO = (2.0, 1.0, 1.0)


def cube(shift: tuple[int, int, int] = (0, 0, 0), *, label: int = 1, size: int = 10) -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    z, y, x = (5 + s for s in shift)
    a[z : z + size, y : y + size, x : x + size] = label
    return a


def one(pred, ref, *, spacing=ISO, tolerance_mm=1.0, label=1) -> dict[str, float]:
    return case_metrics(pred, ref, [label], spacing=spacing, tolerance_mm=tolerance_mm)[label]


class TestOverlap:
    def test_cube_shifted_two_voxels(self):
        m = one(cube((2, 0, 0)), cube())
        assert m["dice"] == pytest.approx(0.8)
        assert m["iou"] == pytest.approx(2 / 3)
        assert m["sensitivity"] == pytest.approx(0.8)
        assert m["precision"] == pytest.approx(0.8)
        assert m["specificity"] == pytest.approx(10800 / 11000)

    def test_keys_in_order(self):
        assert list(one(cube(), cube())) == list(METRICS)

    def test_identical(self):
        m = one(cube(), cube())
        assert (m["dice"], m["iou"], m["sensitivity"], m["precision"]) == (1.0, 1.0, 1.0, 1.0)
        assert (m["hd95_mm"], m["nsd"], m["volume_diff_ml"]) == (0.0, 1.0, 0.0)

    def test_multiple_labels_are_scored_separately(self):
        ref = cube() + cube((10, 0, 0), label=2)  # 2 stacked on top of 1, touching
        pred = cube() + cube((12, 0, 0), label=2, size=8)  # 2 smaller and moved up
        out = case_metrics(pred, ref, [1, 2], spacing=ISO)
        assert out[1]["dice"] == 1.0
        # label 2: ref [15:25]^z, pred [17:25] x [5:13] x [5:13] -> TP 8*8*8 = 512, |pred| 512.
        assert out[2]["dice"] == pytest.approx(2 * 512 / (512 + 1000))
        assert out[2]["precision"] == 1.0

    def test_agrees_with_dice_per_label(self):
        pred, ref = cube((2, 1, 0)), cube()
        assert one(pred, ref)["dice"] == pytest.approx(dice_per_label(pred, ref, [1])[1])
        assert confusion(pred, ref, 1) == (720, 280, 280)  # overlap 8*9*10


class TestVolume:
    @pytest.mark.parametrize(
        ("spacing", "ml"), [(ISO, 1.0), (ANISO, 2.0), ((2.0, 0.5, 0.5), 0.5)], ids=["iso", "z2", "thin"]
    )
    def test_cube_volume_follows_spacing(self, spacing, ml):
        m = one(cube((2, 0, 0)), cube(), spacing=spacing)
        assert m["volume_ref_ml"] == pytest.approx(ml)
        assert m["volume_pred_ml"] == pytest.approx(ml)
        assert m["volume_diff_ml"] == 0.0

    def test_smaller_prediction(self):
        # 8^3 = 512 voxels of 2 mm^3 against 1000: -0.976 mL, relative -0.488.
        m = one(cube((1, 1, 1), size=8), cube(), spacing=ANISO)
        assert m["volume_pred_ml"] == pytest.approx(1.024)
        assert m["volume_diff_ml"] == pytest.approx(-0.976)
        assert m["volume_diff_rel"] == pytest.approx(-0.488)


class TestSurface:
    @pytest.mark.parametrize(
        ("shift", "spacing", "hd"),
        [
            ((2, 0, 0), ISO, 2.0),
            ((2, 0, 0), ANISO, 4.0),
            ((0, 0, 2), ANISO, 2.0),
            ((0, 2, 0), (1.0, 0.5, 1.0), 1.0),
        ],
        ids=["z-iso", "z-aniso", "x-aniso", "y-half"],
    )
    def test_hd95_of_a_two_voxel_shift(self, shift, spacing, hd):
        assert one(cube(shift), cube(), spacing=spacing)["hd95_mm"] == pytest.approx(hd)

    @pytest.mark.parametrize(
        ("spacing", "tol", "nsd"),
        [
            (ISO, 0.0, 288 / 488),
            (ISO, 1.0, 352 / 488),
            (ISO, 2.0, 1.0),
            (ANISO, 1.0, 316 / 488),
            (ANISO, 4.0, 1.0),
        ],
        ids=["iso-0", "iso-1", "iso-2", "aniso-1", "aniso-4"],
    )
    def test_nsd_of_a_two_voxel_shift(self, spacing, tol, nsd):
        m = one(cube((2, 0, 0)), cube(), spacing=spacing, tolerance_mm=tol)
        assert m["nsd"] == pytest.approx(nsd)

    def test_two_planes_every_distance_is_the_gap(self):
        # A one-voxel-thick plane is all edge; every voxel is exactly 3 slices from the other.
        ref = np.zeros((10, 6, 6), bool)
        ref[2] = True
        pred = np.roll(ref, 3, axis=0)
        assert surface_metrics(pred, ref, spacing=(2.5, 0.7, 0.7)) == (pytest.approx(7.5), 0.0)
        assert surface_metrics(pred, ref, spacing=(2.5, 0.7, 0.7), tolerance_mm=7.5)[1] == 1.0

    def test_nsd_falls_as_the_shift_grows(self):
        ref = cube()
        nsd = [one(cube((0, 0, s)), ref, tolerance_mm=1.0)["nsd"] for s in range(5)]
        hd = [one(cube((0, 0, s)), ref)["hd95_mm"] for s in range(5)]
        assert nsd[0] == nsd[1] == 1.0  # every distance is <= 1 voxel
        assert all(a > b for a, b in itertools.pairwise(nsd[1:]))
        assert hd == pytest.approx([0.0, 1.0, 2.0, 3.0, 4.0])

    @pytest.mark.filterwarnings("ignore:.*always_return_as_numpy")
    def test_crop_matches_monai_on_the_full_volume(self):
        from monai.metrics import compute_hausdorff_distance, compute_surface_dice

        rng = np.random.default_rng(3)
        smooth = ndimage.gaussian_filter(rng.standard_normal((16, 28, 24)), 2.0)
        ref = smooth > 0.05
        pred = ndimage.binary_dilation(ref) & (rng.random(ref.shape) > 0.1)
        pred[0, :5, :5] = True  # touching the image border
        spacing = (2.0, 0.8, 1.1)
        hd, nsd = surface_metrics(pred, ref, spacing=spacing, tolerance_mm=1.5)
        p, r = torch.from_numpy(pred)[None, None], torch.from_numpy(ref)[None, None]
        hd_full = compute_hausdorff_distance(
            p, r, include_background=True, percentile=95, spacing=list(spacing)
        )
        nsd_full = compute_surface_dice(p, r, [1.5], include_background=True, spacing=list(spacing))
        assert hd == pytest.approx(float(hd_full), rel=1e-6)
        assert nsd == pytest.approx(float(nsd_full), rel=1e-6)

    def test_two_dimensional(self):
        ref = np.zeros((12, 12), np.uint8)
        ref[2:8, 2:8] = 1
        m = case_metrics(np.roll(ref, 2, axis=1), ref, [1], spacing=(1.0, 0.5))[1]
        assert m["hd95_mm"] == pytest.approx(1.0)
        assert m["dice"] == pytest.approx(2 / 3)


class TestEmpty:
    def test_absent_from_both(self):
        m = one(cube(), cube(), label=3)
        for key in ("dice", "iou", "sensitivity", "precision", "volume_diff_rel", "hd95_mm", "nsd"):
            assert math.isnan(m[key]), key
        assert m["specificity"] == 1.0
        assert (m["volume_pred_ml"], m["volume_ref_ml"], m["volume_diff_ml"]) == (0.0, 0.0, 0.0)

    def test_absent_label_metrics_matches_case_metrics(self):
        got, want = absent_label_metrics(12000), one(cube(), cube(), label=3)
        assert list(got) == list(want)
        assert all(
            g == w or (math.isnan(g) and math.isnan(w))
            for g, w in zip(got.values(), want.values(), strict=True)
        )

    def test_missing_from_prediction(self):
        m = one(np.zeros(SHAPE, np.uint8), cube(), spacing=ANISO)
        assert (m["dice"], m["iou"], m["sensitivity"], m["nsd"]) == (0.0, 0.0, 0.0, 0.0)
        assert math.isnan(m["precision"])
        # The image diagonal: sqrt(60^2 + 20^2 + 20^2) mm.
        assert m["hd95_mm"] == pytest.approx(math.sqrt(4400))
        assert m["hd95_mm"] == image_diagonal_mm(SHAPE, ANISO)
        assert m["volume_diff_ml"] == pytest.approx(-2.0)
        assert m["volume_diff_rel"] == -1.0

    def test_only_in_prediction(self):
        m = one(cube(), np.zeros(SHAPE, np.uint8))
        assert (m["dice"], m["precision"], m["nsd"]) == (0.0, 0.0, 0.0)
        assert math.isnan(m["sensitivity"])
        assert math.isnan(m["volume_diff_rel"])
        assert m["hd95_mm"] == pytest.approx(math.sqrt(30**2 + 20**2 + 20**2))

    def test_reference_all_label_has_no_specificity(self):
        full = np.ones((4, 4, 4), np.uint8)
        assert math.isnan(one(full, full)["specificity"])


class TestValidation:
    @pytest.mark.parametrize(
        ("pred", "ref", "spacing", "tol", "match"),
        [
            (np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), ISO, 1.0, r"same shape.*\(4, 4, 5\)"),
            (np.zeros((2, 4, 4, 4)), np.zeros((2, 4, 4, 4)), ISO, 1.0, "2D or 3D, got 4"),
            (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1.0, 1.0), 1.0, r"3 positive.*\(1.0, 1.0\)"),
            (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), (1.0, 0.0, 1.0), 1.0, "positive"),
            (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), ISO, -1.0, "tolerance_mm.*got -1.0"),
            (np.zeros((4, 4, 4)), np.zeros((4, 4, 4)), ISO, math.inf, "tolerance_mm.*got inf"),
        ],
        ids=["shape", "4d", "spacing-length", "spacing-zero", "tolerance-negative", "tolerance-inf"],
    )
    def test_rejects(self, pred, ref, spacing, tol, match):
        with pytest.raises(ValueError, match=match):
            case_metrics(pred, ref, [1], spacing=spacing, tolerance_mm=tol)
