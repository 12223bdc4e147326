"""Hand-worked cases for the pure planning rules (``autoseg.planning.rules``).

Every expected value below is worked out in the comment next to it from the rule as nnU-Net v2
states it (``../shared/reference/nnunet_v2_facts.md`` section 3), not copied from a run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from autoseg.planning import rules
from autoseg.planning.rules import Topology


class TestTargetSpacing:
    # 11 cases so that numpy's linear 10th percentile lands on a sample: position 0.1 * (11 - 1)
    # = 1, the second-smallest value. Sorted thick spacings: 3, 4, 4, 5, 5, 5, 5, 5, 6, 6, 6 ->
    # median (position 5) 5.0, 10th percentile 4.0.
    THICK = (3.0, 4.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 6.0, 6.0, 6.0)

    @staticmethod
    def _stack(thick: tuple[float, ...], in_plane: tuple[float, float], thick_axis: int) -> np.ndarray:
        rows = []
        for t in thick:
            row = list(in_plane)
            row.insert(thick_axis, t)
            rows.append(row)
        return np.array(rows)

    def test_isotropic_takes_the_median(self):
        # Medians per axis: [1, 1, 1.2] -> 1.0; [1, 1.1, 1.2] -> 1.1; [0.9, 1, 1] -> 1.0.
        sp = np.array([[1.0, 1.0, 0.9], [1.0, 1.1, 1.0], [1.2, 1.2, 1.0]])
        shapes = np.array([[40, 50, 40]] * 3)
        assert rules.target_spacing(sp, shapes) == (1.0, 1.1, 1.0)

    @pytest.mark.parametrize("thick_axis", [0, 1, 2], ids=["axis0", "axis1", "axis2"])
    def test_anisotropic_and_short_axis_takes_10th_percentile(self, thick_axis):
        # Median thick spacing 5.0 > 3 * 1.0 (coarse); median size 30 * 3 = 90 < 256 (short):
        # the thick axis takes the 10th percentile, 4.0; the in-plane axes keep their median 1.0.
        sp = self._stack(self.THICK, (1.0, 1.0), thick_axis)
        shapes = self._stack((30,) * 11, (256, 256), thick_axis)
        expected = [1.0, 1.0]
        expected.insert(thick_axis, 4.0)
        assert rules.target_spacing(sp, shapes) == tuple(expected)

    def test_anisotropic_but_not_short_keeps_the_median(self):
        # Coarse as above, but 100 slices: 100 * 3 = 300 is not < 256, so the median 5.0 stays.
        sp = self._stack(self.THICK, (1.0, 1.0), 0)
        shapes = self._stack((100,) * 11, (256, 256), 0)
        assert rules.target_spacing(sp, shapes) == (5.0, 1.0, 1.0)

    def test_ratio_exactly_at_threshold_is_not_anisotropic(self):
        # Median thick spacing [2, 3, 3] -> 3.0, and 3.0 > 3 * 1.0 is false (strict), so the
        # median is kept although the 10th percentile (2.2) would differ.
        sp = np.array([[2.0, 1.0, 1.0], [3.0, 1.0, 1.0], [3.0, 1.0, 1.0]])
        shapes = np.array([[20, 256, 256]] * 3)
        assert rules.target_spacing(sp, shapes) == (3.0, 1.0, 1.0)

    def test_percentile_is_floored_just_above_the_largest_other_spacing(self):
        # Thick spacings [0.5, 0.5, 4, 4, 4]: median 4 > 3 * max(0.8, 1.0) = 3 (coarse), 20 * 3 < 256
        # (short). 10th percentile: position 0.4 between 0.5 and 0.5 -> 0.5, finer than the in-plane
        # axes, so it is floored at the largest other spacing + 1e-5 = 1.00001.
        sp = np.array([[0.5, 0.8, 1.0], [0.5, 0.8, 1.0], [4.0, 0.8, 1.0], [4.0, 0.8, 1.0], [4.0, 0.8, 1.0]])
        shapes = np.array([[20, 256, 256]] * 5)
        assert rules.target_spacing(sp, shapes) == (1.00001, 0.8, 1.0)

    def test_custom_threshold(self):
        # Median [2, 1, 1]; with threshold 1.5, 2 > 1.5 (coarse) and 20 * 1.5 = 30 < 256 (short):
        # 10th percentile of [1.5, 2, 2.5] = 1.5 + 0.2 * 0.5 = 1.6.
        sp = np.array([[1.5, 1.0, 1.0], [2.0, 1.0, 1.0], [2.5, 1.0, 1.0]])
        shapes = np.array([[20, 256, 256]] * 3)
        assert rules.target_spacing(sp, shapes) == (2.0, 1.0, 1.0)
        assert rules.target_spacing(sp, shapes, anisotropy_threshold=1.5) == (1.6, 1.0, 1.0)


class TestTransposeOrder:
    @pytest.mark.parametrize(
        ("spacing", "forward", "backward"),
        [
            ((3.0, 1.0, 1.0), (0, 1, 2), (0, 1, 2)),
            # axis 1 first: forward (1, 0, 2); inverse: new axis 0 is old 1 -> backward (1, 0, 2)
            ((1.0, 3.0, 0.9), (1, 0, 2), (1, 0, 2)),
            # axis 2 first: forward (2, 0, 1); old axis 0 sits at 1, 1 at 2, 2 at 0 -> (1, 2, 0)
            ((0.8, 0.8, 3.0), (2, 0, 1), (1, 2, 0)),
            # a tie keeps the array order (argmax takes the first)
            ((1.0, 1.0, 1.0), (0, 1, 2), (0, 1, 2)),
        ],
        ids=["axis0-coarsest", "axis1-coarsest", "axis2-coarsest", "isotropic"],
    )
    def test_coarsest_axis_goes_first(self, spacing, forward, backward):
        assert rules.transpose_order(spacing) == (forward, backward)

    @pytest.mark.parametrize(
        "spacing", [(3.0, 1.0, 1.0), (1.0, 3.0, 1.0), (1.0, 1.0, 3.0)], ids=["axis0", "axis1", "axis2"]
    )
    def test_backward_undoes_forward(self, spacing):
        forward, backward = rules.transpose_order(spacing)
        a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
        assert a.transpose(forward).shape[0] == a.shape[int(np.argmax(spacing))]
        np.testing.assert_array_equal(a.transpose(forward).transpose(backward), a)


class TestNormalizationScheme:
    @pytest.mark.parametrize(
        ("name", "relative_size", "expected"),
        [
            ("CT", 1.0, ("ct", False)),
            ("ct", 0.5, ("ct", False)),  # CT never uses the nonzero mask, however much was cropped
            (" Ct ", 1.0, ("ct", False)),  # case and surrounding blanks do not matter
            ("zscore", 0.9, ("zscore", False)),
            ("T2", 0.5, ("zscore", True)),  # cropping removed half: statistics inside the mask
            ("MRI", 0.74, ("zscore", True)),
            ("MRI", 0.75, ("zscore", False)),  # the mask rule is strict: < 0.75
            ("noNorm", 0.5, ("none", False)),
            ("none", 1.0, ("none", False)),
        ],
        ids=["CT", "ct-cropped", "ct-blanks", "zscore", "T2-mask", "MRI-0.74", "MRI-0.75", "noNorm", "none"],
    )
    def test_scheme_and_mask(self, name, relative_size, expected):
        assert rules.normalization_scheme(name, relative_size) == expected


class TestInitialPatchSize:
    @pytest.mark.parametrize(
        ("spacing", "median", "edge", "expected"),
        [
            # isotropic: 256 voxels a side, clipped to nothing
            ((1.0, 1.0, 1.0), (500, 500, 500), 256, (256, 256, 256)),
            # clipped to a small median image
            ((1.0, 1.0, 1.0), (36, 50, 35), 256, (36, 50, 35)),
            # 4 mm slices: scale = (256^3 / 0.25)^(1/3) = 256 * 4^(1/3) = 406.37; the slice axis
            # gets 406.37 / 4 = 101.59 -> 102, the in-plane axes 406.37 -> 406 (a cube in mm)
            ((4.0, 1.0, 1.0), (500, 500, 500), 256, (102, 406, 406)),
            ((4.0, 1.0, 1.0), (20, 300, 500), 256, (20, 300, 406)),
            # 2D: scale = (2048^2 / 2)^(1/2) = 1448.15 -> (2896.3, 1448.15) -> (2896, 1448)
            ((0.5, 1.0), (4000, 4000), 2048, (2896, 1448)),
            # a median below one voxel still gives one voxel
            ((1.0, 1.0, 1.0), (0.4, 50, 50), 256, (1, 50, 50)),
        ],
        ids=["isotropic", "clipped", "thick-slices", "thick-clipped", "2d", "at-least-1"],
    )
    def test_patch(self, spacing, median, edge, expected):
        assert rules.initial_patch_size(spacing, median, edge_voxels=edge) == expected


class TestTopology:
    def test_isotropic_hippocampus_like(self):
        # 36, 50, 35 at 1 mm: all axes >= 8 and equally fine -> halve all three: 18, 25, 17.5;
        # again: 9, 12.5, 8.75; again: 4.5, 6.25, 4.375; now none is >= 8 -> 3 poolings, 4 stages.
        # Divisor 2^3 = 8: 36 -> 40, 50 -> 56, 35 -> 40 (nnU-Net's hippocampus plan has the same).
        t = rules.topology((1.0, 1.0, 1.0), (36, 50, 35))
        assert t.patch_size == (40, 56, 40)
        assert t.n_stages == 4
        assert t.strides == ((1, 1, 1), (2, 2, 2), (2, 2, 2), (2, 2, 2))
        assert t.kernel_sizes == ((3, 3, 3),) * 4
        assert t.divisor == (8, 8, 8)

    def test_thick_slices_use_in_plane_kernels_until_spacing_catches_up(self):
        # spacing (4, 1, 1), patch (16, 128, 128):
        # stage 0: 4 / 1 >= 2 -> kernel (1, 3, 3)
        # pool 1: axis 0 waits (4 / 1 >= 2); in-plane halve -> sp (4, 2, 2), size (16, 64, 64);
        #         kernel: 4 / 2 = 2 is not < 2 -> (1, 3, 3)
        # pool 2: axis 0 still waits (4 / 2 = 2) -> sp (4, 4, 4), size (16, 32, 32); kernel (3, 3, 3)
        # pool 3: all -> sp (8, 8, 8), size (8, 16, 16)
        # pool 4: all -> size (4, 8, 8)
        # pool 5: axes 1, 2 (two axes, 8 is enough) -> size (4, 4, 4); then nothing is >= 8.
        # Divisor: axis 0 pooled twice -> 4; in-plane 5 times -> 32; 16 and 128 already divide.
        t = rules.topology((4.0, 1.0, 1.0), (16, 128, 128))
        assert t.kernel_sizes == ((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3))
        assert t.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2), (1, 2, 2))
        assert t.divisor == (4, 32, 32)
        assert t.patch_size == (16, 128, 128)

    def test_thick_axis_pools_once_the_fine_axes_cannot(self):
        # spacing (4, 1, 1), patch (64, 8, 8): pool 1 halves the in-plane axes -> sizes (64, 4, 4),
        # sp (4, 2, 2). The in-plane axes are now too small to pool, so the finest spacing that
        # counts is that of the axes still >= 8: axis 0's own. It pools alone while >= 12:
        # 64 -> 32 -> 16 -> 8, then 8 < 12 stops. Kernels: axis 0 never comes within 2x of the
        # finest spacing (2), so (1, 3, 3) up to the bottleneck, which is (3, 3, 3).
        # (nnU-Net v2's get_pool_and_conv_props does the same; taking the finest over every axis
        # would stop after pool 1 and leave 64 slices never downsampled.)
        t = rules.topology((4.0, 1.0, 1.0), (64, 8, 8))
        assert t.strides == ((1, 1, 1), (1, 2, 2), (2, 1, 1), (2, 1, 1), (2, 1, 1))
        assert t.kernel_sizes == ((1, 3, 3),) * 4 + ((3, 3, 3),)
        assert t.patch_size == (64, 8, 8)

    @pytest.mark.parametrize(
        ("patch", "strides", "padded"),
        [
            # only axis 0 is >= 8, alone it needs 12: 10 < 12 -> no pooling at all
            ((10, 4, 4), ((1, 1, 1),), (10, 4, 4)),
            ((11, 4, 4), ((1, 1, 1),), (11, 4, 4)),
            # 12 >= 12 -> one pooling to 6, then nothing; divisor (2, 1, 1)
            ((12, 4, 4), ((1, 1, 1), (2, 1, 1)), (12, 4, 4)),
            # two axes need only 8 each
            ((8, 8, 4), ((1, 1, 1), (2, 2, 1)), (8, 8, 4)),
            # 13 pools once to 6.5 -> divisor 2 pads 13 to 14
            ((13, 4, 4), ((1, 1, 1), (2, 1, 1)), (14, 4, 4)),
        ],
        ids=["lone-10", "lone-11", "lone-12", "pair-8", "lone-13-padded"],
    )
    def test_a_lone_axis_needs_12(self, patch, strides, padded):
        t = rules.topology((1.0, 1.0, 1.0), patch)
        assert t.strides == strides
        assert t.patch_size == padded

    def test_bottleneck_kernel_is_3_even_on_a_thick_axis(self):
        # spacing (10, 1, 1), patch (8, 16, 16): pool 1 in-plane -> sp (10, 2, 2), size (8, 8, 8);
        # pool 2 in-plane -> sp (10, 4, 4), size (8, 4, 4); axis 0 (8) is alone now and < 12.
        # Kernels by spacing: (1,3,3), (1,3,3), (1,3,3) -- the last is the bottleneck -> (3,3,3).
        t = rules.topology((10.0, 1.0, 1.0), (8, 16, 16))
        assert t.strides == ((1, 1, 1), (1, 2, 2), (1, 2, 2))
        assert t.kernel_sizes == ((1, 3, 3), (1, 3, 3), (3, 3, 3))

    def test_2d(self):
        # 56, 40 -> 28, 20 -> 14, 10 -> 7, 5: 3 poolings, divisor 8, 56 and 40 already divide
        t = rules.topology((1.0, 1.0), (56, 40))
        assert t.patch_size == (56, 40)
        assert t.strides == ((1, 1), (2, 2), (2, 2), (2, 2))
        assert t.kernel_sizes == ((3, 3),) * 4

    def test_max_stages(self):
        # 512 at 1 mm could pool 7 times (512 -> 4); the default cap of 7 stages allows 6.
        assert rules.topology((1.0, 1.0, 1.0), (512, 512, 512)).n_stages == 7
        # 3 stages: 2 poolings, divisor 4: 36 -> 36, 50 -> 52, 35 -> 36
        t = rules.topology((1.0, 1.0, 1.0), (36, 50, 35), max_stages=3)
        assert t.n_stages == 3
        assert t.patch_size == (36, 52, 36)

    @pytest.mark.parametrize(
        ("spacing", "patch"),
        [
            ((1.0, 1.0, 1.0), (36, 50, 35)),
            ((4.0, 1.0, 1.0), (20, 300, 406)),
            ((5.0, 0.6, 0.6), (24, 320, 320)),
            ((3.0, 0.8, 0.8), (37, 190, 141)),
            ((1.0, 1.0), (57, 33)),
        ],
        ids=["iso", "thick", "mr-5mm", "odd-sizes", "2d"],
    )
    def test_invariants(self, spacing, patch):
        t = rules.topology(spacing, patch)
        assert t.strides[0] == (1,) * len(spacing)
        assert len(t.kernel_sizes) == len(t.strides)
        assert t.kernel_sizes[-1] == (3,) * len(spacing)
        assert all(s in (1, 2) for stride in t.strides for s in stride)
        assert t.divisor == tuple(math.prod(s[a] for s in t.strides) for a in range(len(spacing)))
        for p, d, orig in zip(t.patch_size, t.divisor, patch, strict=True):
            assert p % d == 0
            assert orig <= p < orig + d  # padded up by less than one step
            assert p // d >= 4 or d == 1  # bottleneck edge >= 4 wherever the axis was pooled


class TestFeaturesPerStage:
    @pytest.mark.parametrize(
        ("n", "kwargs", "expected"),
        [
            (1, {}, (32,)),
            (6, {}, (32, 64, 128, 256, 320, 320)),  # 3D cap 320
            (8, {"cap": 512}, (32, 64, 128, 256, 512, 512, 512, 512)),  # 2D cap 512
            (4, {"base": 16, "cap": 100}, (16, 32, 64, 100)),
        ],
        ids=["one", "3d-cap-320", "2d-cap-512", "custom"],
    )
    def test_caps(self, n, kwargs, expected):
        assert rules.features_per_stage(n, **kwargs) == expected


class TestFeatureMapElements:
    def test_tiny_3d(self):
        # patch (4, 4, 2), strides (1,1,1), (2,2,1): stage sizes 4*4*2 = 32 and 2*2*2 = 8.
        # encoder: 2 convs x 2 features x 32 + 2 convs x 4 features x 8 = 128 + 64 = 192
        # decoder (stage 0 only): (upsampling + 2 convs) x 2 features x 32 = 192,
        #                         + head of 3 classes x 32 = 96 -> 288.    total 480
        t = Topology((4, 4, 2), ((3, 3, 3), (3, 3, 3)), ((1, 1, 1), (2, 2, 1)))
        assert rules.feature_map_elements(t, (2, 4), n_classes=3) == 480

    def test_tiny_2d_three_stages_one_conv(self):
        # patch (8, 4), strides (1,1), (2,2), (2,1): sizes 32, 4*2 = 8, 2*2 = 4; one conv a stage.
        # encoder: 1*32 + 2*8 + 3*4 = 60
        # decoder: stage 0: (1 + 1) * 1 * 32 + 2 * 32 = 128; stage 1: 2 * 2 * 8 + 2 * 8 = 48
        # total 60 + 128 + 48 = 236
        t = Topology((8, 4), ((3, 3),) * 3, ((1, 1), (2, 2), (2, 1)))
        assert rules.feature_map_elements(t, (1, 2, 3), n_classes=2, n_conv=1) == 236

    def test_hippocampus_3d_fullres(self):
        # patch 40x56x40, 4 stages, features 32..256, 3 classes: sizes 89600, 11200, 1400, 175.
        # encoder: 2 * (32*89600 + 64*11200 + 128*1400 + 256*175) = 2 * 3808000 = 7616000
        # decoder: 3 * (32*89600 + 64*11200 + 128*1400) + 3 * (89600 + 11200 + 1400)
        #        = 3 * 3763200 + 3 * 102200 = 11596200.     total 19212200
        t = rules.topology((1.0, 1.0, 1.0), (36, 50, 35))
        feats = rules.features_per_stage(t.n_stages)
        assert rules.feature_map_elements(t, feats, n_classes=3) == 19_212_200


class TestBatchSize:
    @pytest.mark.parametrize(
        ("estimate", "budget", "patch_voxels", "dataset_voxels", "expected"),
        [
            # memory: 1.12e9 / 100e6 = 11.2 -> 11; coverage 0.05 * 1e9 / 1000 = 50000
            (100e6, 1.12e9, 1000, 1e9, 11),
            # coverage (hippocampus_sample 2d): memory 1.02e9 / 653940 = 1560;
            # coverage 0.05 * 36*50*36 * 32 / (56*40) = 103680 / 2240 = 46.3 -> 46
            (653_940, 1.02e9, 56 * 40, 36 * 50 * 36 * 32, 46),
            # floor (hippocampus_sample 3d): coverage 103680 / (40*56*40) = 1.16 -> 1 -> 2
            (19_212_200, 1.12e9, 40 * 56 * 40, 36 * 50 * 36 * 32, 2),
            # floor: memory 1.12e9 / 1e9 = 1.12 -> 1 -> 2
            (1e9, 1.12e9, 1000, 1e12, 2),
        ],
        ids=["memory-limited", "coverage-limited", "floor-by-coverage", "floor-by-memory"],
    )
    def test_batch(self, estimate, budget, patch_voxels, dataset_voxels, expected):
        got = rules.batch_size(
            estimate, budget=budget, patch_voxels=patch_voxels, dataset_voxels=dataset_voxels
        )
        assert got == expected

    def test_minimum_and_fraction_are_parameters(self):
        # coverage 0.05 * 10000 / 1000 = 0.5 -> 0; the floor decides
        kw = {"budget": 1e9, "patch_voxels": 1000, "dataset_voxels": 10_000}
        assert rules.batch_size(1e6, **kw, minimum=1) == 1
        # the whole dataset per batch: 1.0 * 10000 / 1000 = 10
        assert rules.batch_size(1e6, **kw, max_fraction=1.0) == 10


class TestSlicesFor2p5d:
    @pytest.mark.parametrize(
        ("spacing", "context", "expected"),
        [
            (5.0, 15.0, 3),  # 15/5 = 3 slices
            (4.0, 15.0, 3),  # 3.75 -> (3.75 - 1) / 2 = 1.4 -> 1 -> 3
            (3.0, 15.0, 5),  # 5 slices
            (2.0, 15.0, 7),  # 7.5 -> 3.25 -> 3 -> 7
            (1.0, 15.0, 7),  # 15 -> capped at 7
            (10.0, 15.0, 3),  # 1.5 -> 0.25 -> 0 -> 1 -> at least 3
            (3.0, 21.0, 7),  # 7 slices
            (3.0, 9.0, 3),  # 3 slices
        ],
        ids=["5mm", "4mm", "3mm", "2mm", "1mm-cap", "10mm-floor", "21mm", "9mm"],
    )
    def test_k(self, spacing, context, expected):
        assert rules.slices_for_2p5d(spacing, context_mm=context) == expected

    def test_always_odd_between_3_and_7(self):
        for s in np.linspace(0.3, 12.0, 200):
            k = rules.slices_for_2p5d(float(s))
            assert k % 2 == 1
            assert 3 <= k <= 7


class TestOffers2p5d:
    @pytest.mark.parametrize(
        ("spacing", "expected"),
        [
            ((3.6, 0.6, 0.6), True),  # 6x
            ((1.0, 1.0, 1.0), False),
            ((3.0, 1.0, 1.0), True),  # exactly 3x counts (>=)
            ((2.9, 1.0, 1.0), False),
            ((3.0, 2.0, 1.0), True),  # against the finest in-plane spacing
        ],
        ids=["thick", "isotropic", "at-threshold", "below", "finest-in-plane"],
    )
    def test_offered(self, spacing, expected):
        assert rules.offers_2p5d(spacing) is expected

    def test_threshold_parameter(self):
        assert rules.offers_2p5d((2.0, 1.0, 1.0), threshold=2.0)
        assert not rules.offers_2p5d((2.0, 1.0, 1.0))
