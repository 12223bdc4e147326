"""Resampling to and from a configuration's spacing.

Images use cubic splines, label maps a per-label linear interpolation (a label's region is
where its interpolated indicator wins), as nnU-Net does. When one axis is much coarser than the
others (thick slices), that axis is resampled on its own with nearest-neighbour: smooth
interpolation across 5 mm slices invents anatomy between them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage


def needs_separate_z(
    spacing: Sequence[float], target: Sequence[float], *, anisotropy: float = 3.0
) -> int | None:
    """The axis to resample on its own, or None.

    Separate handling applies when the source or the target spacing is anisotropic beyond
    ``anisotropy`` (coarsest / finest); the axis is the coarsest one of that spacing.

    Examples:
        >>> needs_separate_z((5.0, 0.7, 0.7), (3.0, 0.7, 0.7))
        0
        >>> needs_separate_z((1.0, 1.0, 1.0), (1.5, 1.5, 1.5)) is None
        True
    """
    for given in (spacing, target):
        sp = np.asarray(given, dtype=np.float64)
        if sp.max() / sp.min() > anisotropy:
            return int(np.argmax(sp))
    return None


def _zoom(a: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """Resize one 3D array to ``shape`` with voxel-centre alignment (like skimage ``resize``)."""
    if tuple(a.shape) == tuple(shape):
        return a
    factors = [n / o for n, o in zip(shape, a.shape, strict=True)]
    out = ndimage.zoom(a, factors, order=order, mode="nearest", grid_mode=True, prefilter=order > 1)
    if out.shape != tuple(shape):  # rounding of shape inside zoom; never more than one voxel
        pad = [(0, max(0, s - o)) for s, o in zip(shape, out.shape, strict=True)]
        out = np.pad(out, pad, mode="edge")[tuple(slice(0, s) for s in shape)]
    return out


def resize(
    a: np.ndarray, shape: Sequence[int], *, order: int, z_axis: int | None = None, z_order: int = 0
) -> np.ndarray:
    """Resize a 3D float array; with ``z_axis``, in-plane at ``order`` then that axis at ``z_order``.

    Args:
        a: ``(Z, Y, X)`` array.
        shape: output shape.
        order: spline order in-plane (or everywhere when ``z_axis`` is None).
        z_axis: axis to resample separately, see :func:`needs_separate_z`.
        z_order: spline order along ``z_axis``.
    """
    a = np.asarray(a, dtype=np.float32)
    if z_axis is None:
        return _zoom(a, shape, order)
    inplane = list(shape)
    inplane[z_axis] = a.shape[z_axis]
    return _zoom(_zoom(a, inplane, order), shape, z_order)


def resize_data(
    data: np.ndarray, shape: Sequence[int], *, order: int = 3, z_axis: int | None = None, z_order: int = 0
) -> np.ndarray:
    """Resize every channel of ``(C, Z, Y, X)`` data to ``shape``; float32 out."""
    if tuple(data.shape[1:]) == tuple(shape):
        return data.astype(np.float32, copy=False)
    return np.stack([resize(c, shape, order=order, z_axis=z_axis, z_order=z_order) for c in data])


def resize_labels(
    seg: np.ndarray, shape: Sequence[int], *, order: int = 1, z_axis: int | None = None, z_order: int = 0
) -> np.ndarray:
    """Resize a label map: each label's indicator is interpolated, the strongest label wins.

    With ``order=0`` this is plain nearest neighbour. Labels absent from ``seg`` are skipped,
    so many-class maps cost only what they hold.
    """
    if tuple(seg.shape) == tuple(shape):
        return seg
    if order == 0 and z_axis is None:
        return _zoom(seg, shape, 0).astype(seg.dtype)
    values = np.unique(seg)
    best = np.full(tuple(shape), -1.0, dtype=np.float32)
    out = np.zeros(tuple(shape), dtype=seg.dtype)
    for v in values:
        r = resize((seg == v).astype(np.float32), shape, order=order, z_axis=z_axis, z_order=z_order)
        win = r > best
        out[win] = v
        best[win] = r[win]
    return out
