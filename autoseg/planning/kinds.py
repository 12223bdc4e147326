"""What a configuration kind means, in one table that every stage consults.

A plan's configurations are of three kinds: ``"3d"`` (3D patches, a 3D network), ``"2d"`` (one
slice across axis 0, the coarsest axis after the transpose, a 2D network) and ``"2.5d"`` (a 2D
network fed ``in_slices`` neighbouring slices as extra channels, for thick-sliced data; nnU-Net has
no such kind). Planning, preprocessing, patch sampling, augmentation, the network and the sliding
window each need a few facts about the kind; they read them from :data:`KINDS` instead of
branching on the name, so that a new kind is one row here.

Arrays are ``(C, Z, Y, X)`` per case and ``(N, C, Z, Y, X)`` per batch of windows throughout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from autoseg.errors import PlanError
from autoseg.planning.rules import REFERENCE_2D, REFERENCE_3D

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np

ConfigKind = Literal["3d", "2d", "2.5d"]


@dataclass(frozen=True)
class Kind:
    """The facts the stages need about a configuration kind.

    Attributes:
        name: ``"3d"``, ``"2d"`` or ``"2.5d"``.
        spatial_dims: dimensions of the patch and of the network's convolutions.
        stacks_slices: the network input holds ``in_slices`` neighbouring slices per image
            channel (channel-major: channel ``c``, slice ``k`` at index ``c * K + k``).
        resamples_axis0: preprocessing resamples axis 0 to the plan's spacing; the 2D kinds keep
            each case's own slice spacing (the network never looks across slices).
        mirror_axes: dims of an ``(N, C, Z, Y, X)`` window flipped for test-time mirroring.
        reference: planning's memory reference, ``(feature-map elements, batch size)`` for 8 GB
            (nnU-Net's 560e6 at batch 2 in 3D, 85e6 at batch 12 in 2D).
        max_features: the feature cap per stage (nnU-Net: 320 in 3D, 512 in 2D).
        edge_voxels: the initial patch's volume, as an edge length (256 in 3D, 2048 in 2D).
        window_batch: windows per sliding-window step by default.
        network_batch_cpu: windows (mirrored copies included) per network call on a CPU; on a
            2-core CPU batches of 2 are fastest per 3D window (hippocampus network, bf16: 64 ms
            at 1, 63 at 2, 69 at 4, 81 at 8; fp32: 144, 126, 162, 158).
    """

    name: ConfigKind
    spatial_dims: int
    stacks_slices: bool
    resamples_axis0: bool
    mirror_axes: tuple[int, ...]
    reference: tuple[float, int]
    max_features: int
    edge_voxels: int
    window_batch: int
    network_batch_cpu: int

    def input_channels(self, image_channels: int, in_slices: int, previous_stage_channels: int = 0) -> int:
        """Network input channels: the image channels, times ``in_slices`` where slices are
        stacked, then the channels of a previous stage's prediction (a cascade stage; the plan
        decides how many: :meth:`~autoseg.planning.plan.Plan.previous_stage_channels`).

        Examples:
            >>> KINDS["2.5d"].input_channels(2, 5), KINDS["2d"].input_channels(2, 5)
            (10, 2)
            >>> KINDS["3d"].input_channels(1, 1, 2)
            3
        """
        return image_channels * (in_slices if self.stacks_slices else 1) + previous_stage_channels

    def planned_axes(self, values: Sequence[float] | np.ndarray) -> list[float]:
        """The axes of a 3-axis spacing or shape that the patch spans (2D kinds: axes 1, 2).

        Examples:
            >>> KINDS["2d"].planned_axes([3.0, 0.5, 0.5])
            [0.5, 0.5]
        """
        return list(values[3 - self.spatial_dims :])

    def window(self, patch_size: Sequence[int]) -> tuple[int, ...]:
        """The sliding window over a ``(Z, Y, X)`` case: the patch, or one slice of it in 2D kinds.

        Examples:
            >>> KINDS["2.5d"].window((64, 48))
            (1, 64, 48)
        """
        return (1,) * (3 - self.spatial_dims) + tuple(int(p) for p in patch_size)

    def window_steps(self, step: float) -> tuple[float, ...]:
        """Step per axis as a fraction of the window: ``step`` in-plane, one slice at a time across.

        Examples:
            >>> KINDS["2d"].window_steps(0.5)
            (1.0, 0.5, 0.5)
        """
        return (1.0,) * (3 - self.spatial_dims) + (step,) * self.spatial_dims

    def target_spacing(
        self, plan_spacing: Sequence[float], case_spacing: Sequence[float]
    ) -> tuple[float, ...]:
        """Spacing a case is resampled to (both in the transposed ``(Z, Y, X)`` order).

        Examples:
            >>> KINDS["2d"].target_spacing((3.0, 0.7, 0.7), (5.0, 0.9, 0.9))
            (5.0, 0.7, 0.7)
        """
        if self.resamples_axis0:
            return tuple(float(s) for s in plan_spacing)
        return (float(case_spacing[0]), *(float(s) for s in plan_spacing[1:]))


#: Every configuration kind, by name.
KINDS: dict[str, Kind] = {
    "3d": Kind("3d", 3, False, True, (2, 3, 4), REFERENCE_3D, 320, 256, 2, 2),
    "2d": Kind("2d", 2, False, False, (3, 4), REFERENCE_2D, 512, 2048, 32, 16),
    "2.5d": Kind("2.5d", 2, True, False, (3, 4), REFERENCE_2D, 512, 2048, 32, 16),
}


def kind_of(name: str) -> Kind:
    """The :class:`Kind` named by a configuration's ``kind`` field.

    Raises:
        PlanError: an unknown kind (a hand-edited plan; the plan loader refuses those first).
    """
    if name not in KINDS:
        msg = f"configuration kind must be one of {sorted(KINDS)}, got {name!r}; run `autoseg plan` again"
        raise PlanError(msg)
    return KINDS[name]
