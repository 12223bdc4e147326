"""Cut one training patch out of a preprocessed case.

A patch is cut at the *initial* (enlarged) size of :func:`~autoseg.data.geometry.initial_patch_size`
so that the spatial transform can rotate and zoom before cropping the centre to the network's
patch. Everything random comes from the ``numpy.random.Generator`` passed in, so a patch can be
reproduced from the generator's state.

Where the patch leaves the image, data is padded with 0 and the segmentation with 0
(background). Data is normalised, so 0 is the mean intensity (z-score) rather than "no
tissue"; nnU-Net pads the same way and marks the padded segmentation -1 only to turn it back into
background later, which is what 0 does directly.

Placement rule (per axis, sizes ``S`` image, ``P`` initial patch, ``F`` final patch): the initial
patch may hang over each border by ``max(P - F, P - S) / 2``. For an image larger than the
patch this lets the *final* patch reach every border exactly but never leave the image; an
image smaller than the patch is centred in it. Random patches start uniformly within that range.
A foreground patch is placed so that the chosen voxel falls at a random position in the middle
half of the final patch (not always the centre, so the network does not learn "foreground is in
the middle", but far enough inside to survive rotation and scaling), then shifted into the range;
the voxel stays inside the final patch after that shift.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import EllipsisType

import numpy as np

from autoseg.data.geometry import initial_patch_size, spatial_params
from autoseg.planning.kinds import kind_of
from autoseg.planning.plan import Configuration
from autoseg.preprocessing.case import PreprocessedCase

__all__ = ["choose_location", "crop_padded", "initial_patch_size", "place_patch", "sample_patch"]


def sample_patch(
    case: PreprocessedCase,
    config: Configuration,
    *,
    force_fg: bool,
    rng: np.random.Generator,
    patch_size: Sequence[int] | None = None,
    previous: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Cut one (enlarged) training patch and its segmentation from ``case``.

    Args:
        case: a case from :class:`~autoseg.preprocessing.PreprocessedStore` with a segmentation:
            ``data`` ``(C, Z, Y, X)`` float32, ``seg`` ``(Z, Y, X)`` class indices, ``locations``
            ``(N, 4)`` rows ``(class, z, y, x)``.
        config: the configuration; ``kind`` decides 3D / 2D / 2.5D and ``patch_size`` is the
            final patch.
        force_fg: place the patch on a stored foreground voxel of a random present class. A case
            without foreground gets a random patch instead.
        rng: the only source of randomness.
        patch_size: the size to cut; defaults to the configuration's initial (enlarged) patch.
            Pass ``config.patch_size`` to cut without margin (validation).
        previous: for a cascade stage, the previous stage's map ``(Z, Y, X)`` on the case's
            grid (:mod:`autoseg.data.previous_stage`): cut where the segmentation is and
            returned as its second channel, so that augmentation moves both alike.

    Returns:
        ``(data, seg)``. 3D: ``(C, *patch)`` and ``(1, *patch)``. 2D: one slice across axis 0,
        ``(C, H, W)`` and ``(1, H, W)``. 2.5D: ``K = in_slices`` adjacent slices centred on the
        chosen one (the end slices repeated past the volume's ends), stacked channel-major as
        ``(C * K, H, W)`` (channel ``c``, slice ``k`` at index ``c * K + k``), and the
        segmentation of the centre slice only, ``(1, H, W)``. Data float32, seg the store's dtype.
        With ``previous``, seg has 2 channels: the segmentation, then ``previous``.

    Raises:
        ValueError: the case has no segmentation, or ``patch_size`` has the wrong length.
    """
    if case.seg is None:
        msg = f"case {case.properties.case_id!r} has no segmentation to train on"
        raise ValueError(msg)
    size = tuple(spatial_params(config).initial_patch if patch_size is None else patch_size)
    final = tuple(config.patch_size)
    kind = kind_of(config.kind)
    n_spatial = kind.spatial_dims
    if len(size) != n_spatial or len(final) != n_spatial:
        msg = (
            f"a {config.kind} patch needs {n_spatial} sizes, got patch_size={size} "
            f"and config.patch_size={final}"
        )
        raise ValueError(msg)
    location = choose_location(case.locations, rng) if force_fg else None
    if n_spatial == 3:
        point = None if location is None else location[1:]
        start = place_patch(case.seg.shape, size, final, rng, point=point)
        data = crop_padded(case.data, start, size)
        seg = crop_padded(case.seg[None], start, size)
        if previous is not None:
            seg = np.concatenate([seg, crop_padded(previous[None], start, size).astype(seg.dtype)])
        return data.astype(np.float32, copy=False), seg
    n_slices = case.seg.shape[0]
    z = int(rng.integers(n_slices)) if location is None else int(location[1])
    point = None if location is None else location[2:]
    start = place_patch(case.seg.shape[1:], size, final, rng, point=point)
    k = config.in_slices if kind.stacks_slices else 1
    slices = np.clip(np.arange(z - k // 2, z - k // 2 + k), 0, n_slices - 1)
    data = crop_padded(case.data[:, slices], start, size)  # (C, K, H, W)
    data = data.reshape(data.shape[0] * k, *size)
    seg = crop_padded(case.seg[z][None], start, size)
    if previous is not None:
        seg = np.concatenate([seg, crop_padded(previous[z][None], start, size).astype(seg.dtype)])
    return data.astype(np.float32, copy=False), seg


def choose_location(locations: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A random stored foreground voxel: first a random present class, then one of its voxels.

    Choosing the class first gives small structures as many patches as large ones.

    Args:
        locations: ``(N, 4)`` rows ``(class, z, y, x)``.
        rng: the source of randomness.

    Returns:
        One row ``(class, z, y, x)``, or None when there are no locations.
    """
    if len(locations) == 0:
        return None
    classes = np.unique(locations[:, 0])
    cls = classes[rng.integers(len(classes))]
    rows = np.flatnonzero(locations[:, 0] == cls)
    return np.asarray(locations[rows[rng.integers(len(rows))]])


def place_patch(
    shape: Sequence[int],
    size: Sequence[int],
    final: Sequence[int],
    rng: np.random.Generator,
    *,
    point: Sequence[int] | np.ndarray | None = None,
) -> np.ndarray:
    """Start corner of a patch of ``size`` in an image of ``shape`` (see the module docstring).

    Args:
        shape: image shape (spatial).
        size: patch to cut (the initial patch).
        final: the final patch, centred in ``size``.
        rng: the source of randomness.
        point: a voxel the final patch must contain, or None for a uniformly random position.

    Returns:
        ``(ndim,)`` int64 start indices; negative or past-the-end parts are padding.

    Examples:
        >>> rng = np.random.default_rng(0)
        >>> place_patch((10,), (20,), (16,), rng).tolist()  # smaller image: centred
        [-5]
        >>> start = place_patch((100,), (60,), (40,), rng, point=(2,))
        >>> bool(start[0] + 10 <= 2 < start[0] + 50)  # the voxel lies in the final patch
        True
    """
    shape_a, size_a, final_a = (np.asarray(v, dtype=np.int64) for v in (shape, size, final))
    pad = np.maximum(size_a - final_a, size_a - shape_a)
    lo = -(pad // 2)
    hi = shape_a + pad - pad // 2 - size_a
    if point is None:
        return rng.integers(lo, hi + 1)
    margin = (size_a - final_a) // 2
    quarter = final_a // 4
    offset = rng.integers(margin + quarter, margin + final_a - quarter)
    return np.clip(np.asarray(point, dtype=np.int64) - offset, lo, hi)


def crop_padded(array: np.ndarray, start: Sequence[int] | np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Copy ``array[..., start:start + size]`` over the last axes, zero where it leaves the array.

    Only the part inside the array is read, so this is cheap on memory-mapped arrays.

    Args:
        array: ``(..., *spatial)``; the leading axes are kept whole.
        start: start index per spatial axis (may be negative).
        size: patch size per spatial axis.

    Returns:
        A new array ``(..., *size)`` of ``array``'s dtype.

    Examples:
        >>> crop_padded(np.arange(1, 5)[None], (-1,), (3,)).tolist()
        [[0, 1, 2]]
    """
    n = len(size)
    lead = array.shape[: array.ndim - n]
    out = np.zeros((*lead, *size), dtype=array.dtype)
    src: list[slice] = []
    dst: list[slice] = []
    for s, p, dim in zip(start, size, array.shape[-n:], strict=True):
        a, b = max(int(s), 0), min(int(s) + int(p), dim)
        if a >= b:
            return out
        src.append(slice(a, b))
        dst.append(slice(a - int(s), b - int(s)))
    src_index: tuple[EllipsisType | slice, ...] = (..., *src)
    dst_index: tuple[EllipsisType | slice, ...] = (..., *dst)
    out[dst_index] = array[src_index]
    return out
