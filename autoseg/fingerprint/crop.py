"""Crop to the nonzero region: the box every later stage works in."""

from __future__ import annotations

import numpy as np


def nonzero_bbox(data: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Bounding box of voxels that are nonzero in any channel.

    Args:
        data: ``(C, Z, Y, X)`` channels.

    Returns:
        ``((z0, z1), (y0, y1), (x0, x1))``, ends exclusive; the whole image when all is zero.

    Examples:
        >>> a = np.zeros((1, 4, 5, 6)); a[0, 1:3, 2, 3:5] = 1
        >>> nonzero_bbox(a)
        ((1, 3), (2, 3), (3, 5))
    """
    mask = np.any(data != 0, axis=0)
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        hit = np.flatnonzero(mask.any(axis=others))
        if hit.size == 0:
            return tuple((0, s) for s in mask.shape)
        box.append((int(hit[0]), int(hit[-1]) + 1))
    return tuple(box)


def bbox_slices(bbox: tuple[tuple[int, int], ...]) -> tuple[slice, ...]:
    """``((z0, z1), …)`` -> ``(slice(z0, z1), …)``."""
    return tuple(slice(lo, hi) for lo, hi in bbox)
