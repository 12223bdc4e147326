"""Patch sampling: shapes per kind, foreground forcing, zero padding, and the enlarged patch."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
from batchgenerators.augmentations.utils import (
    rotate_coords_2d,
    rotate_coords_3d,
)

from autoseg.data.geometry import initial_patch_size, spatial_params
from autoseg.data.sampling import crop_padded, place_patch, sample_patch
from autoseg.preprocessing.case import PreprocessedCase
from autoseg.preprocessing.properties import CaseProperties

KINDS = ["3d_fullres", "2d", "2.5d"]


def _props(case_id: str, shape: tuple[int, ...]) -> CaseProperties:
    """Properties of an uncropped, unresampled case of ``shape`` (sampling reads only the id)."""
    shape = tuple(int(s) for s in shape)
    one = (1.0,) * len(shape)
    return CaseProperties(
        case_id, one, shape, tuple((0, s) for s in shape), shape, one, shape, None, (), None
    )


def _case(data: np.ndarray, seg: np.ndarray, locations: list[list[int]]) -> PreprocessedCase:
    loc = np.asarray(locations, dtype=np.int32).reshape(-1, 4)
    return PreprocessedCase(
        data.astype(np.float32), seg.astype(np.uint8), loc, _props("synthetic", seg.shape)
    )


def _centre(arr: np.ndarray, final: tuple[int, ...]) -> np.ndarray:
    """The centre ``final`` crop of the last axes (what the spatial transform keeps unrotated)."""
    n = len(final)
    starts = [(s - f) // 2 for s, f in zip(arr.shape[-n:], final, strict=True)]
    return arr[(..., *(slice(a, a + f) for a, f in zip(starts, final, strict=True)))]


class TestInitialPatchSize:
    def test_no_augmentation_keeps_patch(self):
        assert initial_patch_size((40, 56, 40), 0, (0.7, 1.0)) == (40, 56, 40)

    @pytest.mark.parametrize(
        ("patch", "rotation", "in_plane"),
        [
            ((40, 56, 40), 30, False),
            ((20, 64, 48), 30, False),
            ((56, 40), 180, False),
            ((64, 32), 15, False),
            ((8, 64, 48), 180, True),
        ],
        ids=["3d", "3d-flat", "2d", "2d-elongated", "dummy-2d"],
    )
    def test_no_empty_corners(self, patch, rotation, in_plane):
        """Every point batchgenerators samples lies inside the enlarged patch."""
        scale = (0.7, 1.4)
        init = np.array(initial_patch_size(patch, rotation, scale, in_plane_only=in_plane))
        assert (init >= patch).all()
        mesh_shape = patch[1:] if in_plane else patch
        corners = np.stack(np.meshgrid(*[(-(p - 1) / 2, (p - 1) / 2) for p in mesh_shape], indexing="ij"))
        a = np.radians(rotation)
        rng = np.random.default_rng(0)
        angle_sets = [*itertools.product((-a, 0, a), repeat=3), *rng.uniform(-a, a, (300, 3))]
        for ax, ay, az in angle_sets:
            if len(mesh_shape) == 3:
                pts = rotate_coords_3d(corners.copy(), ax, ay, az)
            else:
                pts = rotate_coords_2d(corners.copy(), ax)
            pts = pts.reshape(len(mesh_shape), -1) * scale[1]
            room = init[1:] if in_plane else init
            ctr = (room / 2 - 0.5)[:, None]
            assert (pts + ctr >= 0).all()
            assert (pts + ctr <= room[:, None] - 1).all()
        if in_plane:
            assert init[0] == patch[0]

    def test_wrong_dimensionality(self):
        with pytest.raises(ValueError, match="2 or 3 values"):
            initial_patch_size((4,), 30, (1, 1))

    def test_rules_per_configuration(self, prepared):
        config = prepared.config("3d_fullres")
        assert spatial_params(config).rotation_deg == 30
        flat = dataclasses.replace(config, patch_size=(8, 64, 48))
        assert spatial_params(flat).dummy_2d
        assert spatial_params(flat).rotation_deg == 180
        assert spatial_params(flat).initial_patch[0] == 8
        elongated = dataclasses.replace(prepared.config("2d"), patch_size=(96, 32))
        assert spatial_params(elongated).rotation_deg == 15


class TestShapes:
    @pytest.mark.parametrize("name", KINDS)
    def test_enlarged_and_final(self, prepared, name):
        config = prepared.config(name)
        case = prepared.store(name).load(prepared.case_ids[0])
        rng = np.random.default_rng(0)
        n_channels = case.data.shape[0] * config.in_slices
        initial = spatial_params(config).initial_patch
        for size in (initial, tuple(config.patch_size)):
            for force in (False, True):
                data, seg = sample_patch(case, config, force_fg=force, rng=rng, patch_size=size)
                assert data.shape == (n_channels, *size)
                assert seg.shape == (1, *size)
                assert data.dtype == np.float32
        data, _ = sample_patch(case, config, force_fg=False, rng=rng)
        assert data.shape[1:] == initial

    def test_25d_stacks_neighbours_and_centre_seg(self, prepared):
        config = dataclasses.replace(prepared.config("2.5d"), patch_size=(6, 6), in_slices=3)
        z, y, x = 5, 6, 6
        data = np.broadcast_to(np.arange(1, z + 1, dtype=np.float32)[:, None, None], (z, y, x))
        data = np.stack([data, 10 * data])  # two channels; channel 1 = 10 x channel 0
        seg = np.broadcast_to((np.arange(z) % 3)[:, None, None], (z, y, x))
        rng = np.random.default_rng(0)
        for centre in range(z):
            case = _case(data, seg, [[max(1, centre % 3), centre, 2, 3]])
            if centre % 3 == 0:  # slice without foreground: give it a location of class 1
                case.seg[centre, 2, 3] = 1
            patch, patch_seg = sample_patch(case, config, force_fg=True, rng=rng, patch_size=(6, 6))
            want = np.clip([centre - 1, centre, centre + 1], 0, z - 1) + 1.0
            assert patch.shape == (6, 6, 6)
            for k in range(3):  # channel-major: c * K + k
                assert np.unique(patch[k]).tolist() == [want[k]]
                assert np.unique(patch[3 + k]).tolist() == [10 * want[k]]
            np.testing.assert_array_equal(patch_seg[0], case.seg[centre])


class TestForeground:
    @pytest.mark.parametrize("name", KINDS)
    def test_forced_patches_always_contain_foreground(self, prepared, name):
        config = prepared.config(name)
        final = tuple(config.patch_size)
        rng = np.random.default_rng(1)
        hits = []
        for cid in prepared.case_ids:
            case = prepared.store(name).load(cid)
            for _ in range(40):
                _, seg = sample_patch(case, config, force_fg=True, rng=rng)
                hits.append(bool(_centre(seg, final).any()))
        assert np.mean(hits) == 1.0

    def test_case_without_foreground_falls_back_to_random(self, prepared):
        config = dataclasses.replace(prepared.config("3d_fullres"), patch_size=(4, 4, 4))
        case = _case(np.ones((1, 10, 10, 10)), np.zeros((10, 10, 10)), [])
        data, seg = sample_patch(
            case, config, force_fg=True, rng=np.random.default_rng(0), patch_size=(4, 4, 4)
        )
        assert data.shape == (1, 4, 4, 4)
        assert not seg.any()

    def test_voxel_at_border_stays_in_final_patch(self):
        rng = np.random.default_rng(0)
        for point in (0, 1, 50, 98, 99):
            for _ in range(50):
                start = place_patch((100,), (60,), (40,), rng, point=(point,))[0]
                assert start + 10 <= point < start + 50
                assert -10 <= start <= 50  # the final patch never leaves the image


class TestPadding:
    def test_outside_is_zero_and_small_image_centred(self, prepared):
        config = dataclasses.replace(prepared.config("3d_fullres"), patch_size=(8, 8, 8))
        case = _case(np.full((1, 4, 4, 4), 5.0), np.ones((4, 4, 4)), [[1, 0, 0, 0]])
        for force in (False, True):
            data, seg = sample_patch(
                case, config, force_fg=force, rng=np.random.default_rng(0), patch_size=(8, 8, 8)
            )
            inside = (slice(None), slice(2, 6), slice(2, 6), slice(2, 6))
            assert (data[inside] == 5).all()
            assert (seg[inside] == 1).all()
            assert data.sum() == 5 * 64
            assert seg.sum() == 64

    @pytest.mark.parametrize("name", KINDS)
    def test_real_case_padding(self, prepared, name):
        """Data of ones marks the image: ones inside one box no larger than it, zeros around."""
        config = prepared.config(name)
        real = prepared.store(name).load(prepared.case_ids[0])
        case = PreprocessedCase(
            np.ones(real.data.shape, np.float32), np.asarray(real.seg), real.locations, real.properties
        )
        n_spatial = len(config.patch_size)
        rng = np.random.default_rng(0)
        for force in (False, True) * 5:
            data, seg = sample_patch(case, config, force_fg=force, rng=rng)
            inside = data[0] > 0
            box = np.argwhere(inside)
            lo, hi = box.min(0), box.max(0) + 1
            assert inside.sum() == np.prod(hi - lo)  # one solid box
            assert (hi - lo <= np.array(real.seg.shape[-n_spatial:])).all()
            assert (~inside).any()  # the enlarged patch is larger than these small images
            assert (data[:, ~inside] == 0).all()
            assert (seg[0][~inside] == 0).all()

    def test_crop_padded_reads_the_right_window(self):
        arr = np.arange(5 * 6).reshape(1, 5, 6)
        out = crop_padded(arr, (-1, 4), (3, 4))
        want = np.zeros((1, 3, 4), dtype=arr.dtype)
        want[0, 1:, :2] = arr[0, :2, 4:]
        np.testing.assert_array_equal(out, want)
        assert not crop_padded(arr, (10, 10), (2, 2)).any()

    def test_random_positions_reach_both_borders(self):
        rng = np.random.default_rng(0)
        starts = {int(place_patch((100,), (60,), (40,), rng)[0]) for _ in range(2000)}
        assert min(starts) == -10  # final patch flush with the low border
        assert max(starts) == 50  # final patch flush with the high border


def test_needs_a_segmentation(prepared):
    case = PreprocessedCase(
        np.zeros((1, 4, 4, 4), np.float32), None, np.zeros((0, 4), np.int32), _props("c", (4, 4, 4))
    )
    with pytest.raises(ValueError, match="no segmentation"):
        sample_patch(case, prepared.config("3d_fullres"), force_fg=False, rng=np.random.default_rng(0))
