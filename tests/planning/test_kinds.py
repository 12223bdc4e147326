"""The table of configuration kinds, and the one contract between kinds that no single stage owns:
2.5D training patches and 2.5D prediction windows stack channels and slices in the same order
(swapping that order once passed every test)."""

from __future__ import annotations

import dataclasses
import typing

import numpy as np
import pytest
import torch

from autoseg.data.sampling import sample_patch
from autoseg.errors import PlanError
from autoseg.inference.sliding_window import stack_neighbour_slices
from autoseg.planning.kinds import KINDS, ConfigKind, kind_of
from autoseg.planning.plan import Plan
from autoseg.preprocessing.case import PreprocessedCase
from tests.golden import GOLDEN_PLAN


def test_every_kind_has_one_row():
    assert set(KINDS) == set(typing.get_args(ConfigKind))
    for name, kind in KINDS.items():
        assert kind.name == name
        assert len(kind.mirror_axes) == kind.spatial_dims
        assert all(2 <= a <= 4 for a in kind.mirror_axes)
        assert len(kind.window((8,) * kind.spatial_dims)) == 3
        assert kind.resamples_axis0 == (kind.spatial_dims == 3)


def test_unknown_kind_is_a_plan_error():
    with pytest.raises(PlanError, match=r"kind must be one of \['2.5d', '2d', '3d'\], got '4d'"):
        kind_of("4d")


@pytest.mark.parametrize("z", [0, 1, 3, 6], ids=lambda z: f"slice{z}")
@pytest.mark.parametrize("in_slices", [3, 5])
def test_2p5d_training_and_prediction_stack_alike(z: int, in_slices: int) -> None:
    """Two distinguishable channels, the patch covering the whole slice: the training patch at
    slice ``z`` equals the prediction input of slice ``z`` (channel-major, edges repeated)."""
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, 7, 8, 6)).astype(np.float32)
    data[1] += 100.0  # channel 1 cannot be mistaken for channel 0
    plan = Plan.load(GOLDEN_PLAN)
    config = dataclasses.replace(
        plan.configuration("2d"), name="2.5d", kind="2.5d", in_slices=in_slices, patch_size=(8, 6)
    )
    case = PreprocessedCase(
        data=data,
        seg=np.zeros((7, 8, 6), np.uint8),
        locations=np.array([[1, z, 4, 3]], np.int32),
        properties={"case_id": "c"},
    )
    patch, _ = sample_patch(case, config, force_fg=True, rng=rng, patch_size=(8, 6))
    window = stack_neighbour_slices(torch.from_numpy(data)[None], in_slices)[0, :, z].numpy()
    np.testing.assert_array_equal(patch, window)
    half = in_slices // 2
    for c in range(2):
        for k in range(in_slices):
            source = min(max(z - half + k, 0), 6)
            np.testing.assert_array_equal(patch[c * in_slices + k], data[c, source])
