"""Bring an image onto another image's voxel grid when both describe the same physical grid but
store its axes in another order or direction (a label map saved y-flipped, a prediction written
in RAS for a scan stored in LPS): exactly, by permuting and flipping the array, never by
interpolation. Anything else (shifted, rotated, another spacing or extent) is not the same grid,
and :func:`find_reorientation` says so instead of guessing.

Geometry conventions are those of :class:`~autoseg.io.image.Geometry`: arrays ``(Z, Y, X)``,
origin and direction in SimpleITK's ``(x, y, z)`` order, so array axis ``a`` is SimpleITK axis
``2 - a``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg.errors import DatasetError
from autoseg.io.image import Geometry, read_image

_AXIS_NAMES = ("z", "y", "x")


@dataclass(frozen=True)
class Reorientation:
    """How an array's axes map onto a reference grid's array axes.

    Attributes:
        source_axes: for each reference array axis, the source array axis that runs along it.
        flipped: for each reference array axis, whether the source runs the opposite way.
    """

    source_axes: tuple[int, int, int]
    flipped: tuple[bool, bool, bool]

    @property
    def is_identity(self) -> bool:
        """Whether the array is already stored like the reference."""
        return self.source_axes == (0, 1, 2) and not any(self.flipped)

    def describe(self) -> str:
        """Words for a message: ``"flipped along y"``, ``"axes permuted (the reference's
        z, y, x are its x, y, z)"``, or both."""
        parts = []
        if self.source_axes != (0, 1, 2):
            parts.append(
                "axes permuted (the reference's z, y, x are its "
                + ", ".join(_AXIS_NAMES[a] for a in self.source_axes)
                + ")"
            )
        if any(self.flipped):
            parts.append(
                "flipped along " + ", ".join(n for n, f in zip(_AXIS_NAMES, self.flipped, strict=True) if f)
            )
        return " and ".join(parts) or "as the reference"

    def apply(self, array: np.ndarray) -> np.ndarray:
        """The array as the reference stores it (a contiguous copy unless nothing changes)."""
        if self.is_identity:
            return array
        out = np.transpose(array, self.source_axes)
        out = np.flip(out, axis=tuple(a for a in range(3) if self.flipped[a]))
        return np.ascontiguousarray(out)


def find_reorientation(
    geometry: Geometry, shape: Sequence[int], reference: Geometry, reference_shape: Sequence[int]
) -> Reorientation | None:
    """The axis permutation and flips that put an image exactly onto a reference grid.

    Args:
        geometry: the image's geometry (3D).
        shape: its array shape ``(Z, Y, X)``.
        reference: the grid to land on.
        reference_shape: that grid's array shape.

    Returns:
        The reorientation (the identity when the grids already agree), or None when the image
        does not lie on the reference grid: directions not a signed permutation of each other,
        or after reorienting, another shape, spacing or origin.

    Examples:
        >>> ref = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> flipped_y = Geometry((2.0, 1.0, 1.0), (0.0, 9.0, 0.0), (1, 0, 0, 0, -1, 0, 0, 0, 1))
        >>> find_reorientation(flipped_y, (4, 10, 8), ref, (4, 10, 8)).describe()
        'flipped along y'
        >>> shifted = Geometry((2.0, 1.0, 1.0), (0.5, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        >>> find_reorientation(shifted, (4, 10, 8), ref, (4, 10, 8)) is None
        True
    """
    if len(shape) != 3 or len(reference_shape) != 3:
        return None
    d_img = np.reshape(np.asarray(geometry.direction, float), (3, 3))
    d_ref = np.reshape(np.asarray(reference.direction, float), (3, 3))
    try:
        rel = np.linalg.solve(d_ref, d_img)  # column c: image axis c in reference axes
    except np.linalg.LinAlgError:
        return None
    rows = np.abs(rel).argmax(axis=0)  # SimpleITK axes: image axis c runs along reference rows[c]
    if sorted(rows.tolist()) != [0, 1, 2] or np.abs(rel[rows, range(3)]).min() < 0.99:
        return None
    source_axes = [0, 0, 0]
    flipped = [False, False, False]
    for c, r in enumerate(rows):
        source_axes[2 - r] = 2 - c  # array axes are SimpleITK axes reversed
        flipped[2 - r] = bool(rel[r, c] < 0)
    found = Reorientation(tuple(source_axes), tuple(flipped))  # type: ignore[arg-type]
    new_shape = tuple(shape[a] for a in found.source_axes)
    if new_shape != tuple(reference_shape):
        return None
    return found if reoriented_geometry(geometry, shape, found).same_grid(reference) else None


def reoriented_geometry(geometry: Geometry, shape: Sequence[int], how: Reorientation) -> Geometry:
    """The geometry of ``how.apply(array)``: the same physical voxels, indexed anew."""
    d = np.reshape(np.asarray(geometry.direction, float), (3, 3))
    sp_sitk = np.asarray(geometry.spacing[::-1], float)
    first = np.zeros(3)  # SimpleITK index of the voxel that becomes index 0
    direction = np.zeros((3, 3))
    spacing = [0.0, 0.0, 0.0]
    for a_new, a_old in enumerate(how.source_axes):
        c = 2 - a_old
        sign = -1.0 if how.flipped[a_new] else 1.0
        if how.flipped[a_new]:
            first[c] = shape[a_old] - 1
        direction[:, 2 - a_new] = sign * d[:, c]
        spacing[a_new] = geometry.spacing[a_old]
    origin = np.asarray(geometry.origin, float) + d @ (sp_sitk * first)
    return Geometry(
        tuple(spacing), tuple(float(o) for o in origin), tuple(float(v) for v in direction.ravel())
    )


def read_onto(path: Path, geometry: Geometry, shape: Sequence[int], *, grid_of: str) -> np.ndarray:
    """Read an image file (a reference label map, say) onto another image's voxel grid.

    Args:
        path: the file to read.
        geometry: the grid to land on (e.g. that of a prediction on the scan's grid).
        shape: that grid's array shape.
        grid_of: what the grid belongs to, for the message (a file name).

    Returns:
        The file's array, reoriented exactly when stored flipped or permuted.

    Raises:
        ImageReadError: the file cannot be read.
        DatasetError: the file does not lie on that grid.
    """
    img = read_image(path)
    how = find_reorientation(img.geometry, img.array.shape, geometry, shape)
    if how is None:
        msg = (
            f"{path}: does not lie on the grid of {grid_of} (shape {tuple(img.array.shape)} vs "
            f"{tuple(shape)}, or origin/direction/spacing differ by more than a flip or axis "
            "permutation); resample it onto that grid"
        )
        raise DatasetError(msg)
    return how.apply(img.array)
