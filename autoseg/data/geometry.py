"""The geometry of spatial augmentation: rotation and scale ranges, and the patch they need.

Rotating or zooming a patch reads voxels from outside it. So the loader first cuts an *enlarged*
("initial") patch around the chosen position, the spatial transform resamples it, and its centre
is cropped to the network's patch. This module decides the ranges from the configuration and
computes the smallest initial patch for which no corner of the final patch is ever read from
outside the cut (where it would be empty padding, not image).

Ranges follow nnU-Net v2 (``nnunet_v2_facts.md`` §5):

* 3D: rotation ±30° about every axis, unless the patch is much thinner along axis 0
  (``max(patch) / patch[0] > 3``): then "dummy 2D", rotation ±180° in the (Y, X) plane only,
  because rotating across a few thick slices would invent anatomy.
* 2D and 2.5D: ±180° in-plane, or ±15° when the patch aspect ratio exceeds 1.5 (a long, thin patch
  rotated by 90° would need a square initial patch mostly made of padding).
* Scale (0.7, 1.4) everywhere.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from autoseg.planning.kinds import kind_of
from autoseg.planning.plan import Configuration

ROTATION_3D_DEG = 30.0
ROTATION_2D_DEG = 180.0
ROTATION_2D_ELONGATED_DEG = 15.0
ELONGATED_2D_ASPECT = 1.5
DUMMY_2D_ANISOTROPY = 3.0
SCALE_RANGE = (0.7, 1.4)


@dataclass(frozen=True)
class SpatialParams:
    """Spatial augmentation settings of one configuration.

    Attributes:
        rotation_deg: rotations are drawn from ``±rotation_deg`` (degrees).
        dummy_2d: 3D patch augmented slice-wise in the (Y, X) plane (rotation and scale only there).
        scale_range: ``(low, high)`` factor applied to the sampling coordinates; > 1 zooms out.
        mirror_axes: spatial axes that may be flipped.
        patch_size: the final (network) patch.
        initial_patch: the enlarged patch to cut before the spatial transform.
    """

    rotation_deg: float
    dummy_2d: bool
    scale_range: tuple[float, float]
    mirror_axes: tuple[int, ...]
    patch_size: tuple[int, ...]
    initial_patch: tuple[int, ...]


def spatial_params(config: Configuration) -> SpatialParams:
    """Spatial augmentation settings for ``config`` (see the module docstring for the rules)."""
    patch = tuple(int(p) for p in config.patch_size)
    dummy_2d = False
    if kind_of(config.kind).spatial_dims == 3:
        dummy_2d = max(patch) / patch[0] > DUMMY_2D_ANISOTROPY
        rotation = ROTATION_2D_DEG if dummy_2d else ROTATION_3D_DEG
    elif max(patch) / min(patch) > ELONGATED_2D_ASPECT:
        rotation = ROTATION_2D_ELONGATED_DEG
    else:
        rotation = ROTATION_2D_DEG
    initial = initial_patch_size(patch, rotation, SCALE_RANGE, in_plane_only=dummy_2d)
    return SpatialParams(rotation, dummy_2d, SCALE_RANGE, tuple(range(len(patch))), patch, initial)


def initial_patch_size(
    patch_size: Sequence[int],
    rotation_deg: float,
    scale_range: Sequence[float],
    *,
    in_plane_only: bool = False,
) -> tuple[int, ...]:
    """The smallest patch that contains the final patch after any allowed rotation and scaling.

    The spatial transform samples the input at ``s * R @ x`` for every position ``x`` of the final
    patch (centred), with ``R`` a rotation within ``±rotation_deg`` and ``s`` from ``scale_range``
    (batchgenerators multiplies the coordinates, so ``s > 1`` reads a region ``s`` times larger).
    The region read is therefore the final box, rotated, then scaled by at most
    ``max(1, scale_range[1])``; the initial patch is its axis-aligned bounding box.

    A box of sides ``(a, b)`` rotated by ``θ`` in its plane spans ``a|cos θ| + b|sin θ|`` along
    the first axis. Over ``|θ| <= α`` this grows until ``θ = atan(b / a)``, where it reaches the
    diagonal ``sqrt(a² + b²)``; so the maximum is the diagonal if ``atan(b / a) <= α``, else the
    value at ``α``. In 3D, batchgenerators composes rotations about axes 0, 1 and 2 in that order;
    applying the 2D rule to each plane in turn, each time to the previous bounding box, bounds the
    composite (the box of a rotated box contains the rotated shape). That bound is exact for a
    single axis but generous for compositions, so it is also capped by the box's space diagonal,
    which no rotation can exceed. For a 40 x 56 x 40 patch at ±30° this gives 80 x 80 x 75 against
    a true maximum (dense search over angles) of 76 x 80 x 75.

    Args:
        patch_size: the final patch, 2 or 3 values.
        rotation_deg: maximum absolute rotation angle in degrees (0 for none).
        scale_range: ``(low, high)`` scale factors.
        in_plane_only: 3D "dummy 2D": rotate and scale in the (axis 1, axis 2) plane only, so
            axis 0 keeps its size.

    Returns:
        The initial patch size, never smaller than ``patch_size``.

    Raises:
        ValueError: ``patch_size`` does not have 2 or 3 values.

    Examples:
        >>> initial_patch_size((40, 56, 40), 0, (1, 1))
        (40, 56, 40)
        >>> initial_patch_size((30, 40), 180, (0.7, 1.0))
        (50, 50)
        >>> initial_patch_size((8, 40, 40), 180, (0.7, 1.4), in_plane_only=True)
        (8, 80, 80)
    """
    sizes = [float(p) for p in patch_size]
    if len(sizes) not in (2, 3):
        msg = f"patch_size must have 2 or 3 values, got {tuple(patch_size)}"
        raise ValueError(msg)
    alpha = math.radians(min(abs(float(rotation_deg)), 90.0))
    if len(sizes) == 2:
        planes = [(0, 1)]
    elif in_plane_only:
        planes = [(1, 2)]
    else:
        planes = [(1, 2), (0, 2), (0, 1)]
    moved = sorted({a for plane in planes for a in plane})
    box = list(sizes)
    if alpha > 0:
        for i, j in planes:
            box[i], box[j] = _rotated_extent(box[i], box[j], alpha), _rotated_extent(box[j], box[i], alpha)
        diagonal = math.hypot(*(sizes[a] for a in moved))
        box = [min(b, diagonal) if d in moved else b for d, b in enumerate(box)]
    zoom = max(1.0, float(max(scale_range)))
    box = [b * zoom if d in moved else b for d, b in enumerate(box)]
    return tuple(max(int(p), math.ceil(b - 1e-6)) for p, b in zip(patch_size, box, strict=True))


def _rotated_extent(a: float, b: float, alpha: float) -> float:
    """Largest extent along the first axis of an ``a`` x ``b`` box rotated by up to ``alpha``."""
    if math.atan2(b, a) <= alpha:
        return math.hypot(a, b)
    return a * math.cos(alpha) + b * math.sin(alpha)
