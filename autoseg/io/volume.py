"""What every image reader returns: an array and the geometry that places it in space.

Arrays are ``(Z, Y, X)``; :class:`Geometry` keeps spacing in the same order and origin/direction
in SimpleITK's physical ``(x, y, z)`` order. File readers (:mod:`autoseg.io.image`) and the DICOM
series reader (:mod:`autoseg.io.dicom`) both build :class:`Image` objects through
:func:`image_from_sitk`, and import this module rather than each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import SimpleITK as sitk

from autoseg.errors import ImageReadError

if TYPE_CHECKING:
    from pydicom import Dataset

#: Default tolerances of :meth:`Geometry.same_grid`: spacing relative, origin (mm) and direction
#: cosines absolute.
SPACING_RTOL, GRID_ATOL = 1e-3, 1e-3


@dataclass(frozen=True)
class Geometry:
    """Where an image's voxels lie in physical space.

    Attributes:
        spacing: voxel size in mm, ``(z, y, x)`` like the array axes.
        origin: physical position of voxel (0, 0, 0), SimpleITK ``(x, y, z)`` order.
        direction: 3x3 direction cosines, row-major, SimpleITK order (9 floats).
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]

    def same_grid(self, other: Geometry, *, rtol: float = SPACING_RTOL, atol: float = GRID_ATOL) -> bool:
        """Whether two geometries place voxels at the same physical points.

        Spacing may differ by ``rtol`` (relative) plus ``atol`` mm, origin by ``atol`` mm and the
        direction cosines by ``atol``; the defaults are what datasets are checked with.
        """
        return (
            np.allclose(self.spacing, other.spacing, rtol=rtol, atol=atol)
            and np.allclose(self.origin, other.origin, rtol=0, atol=atol)
            and np.allclose(self.direction, other.direction, rtol=0, atol=atol)
        )

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready form."""
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
        }

    @classmethod
    def from_dict(cls, d: dict[str, list[float]]) -> Geometry:
        """Inverse of :meth:`to_dict`."""
        return cls(tuple(d["spacing"]), tuple(d["origin"]), tuple(d["direction"]))

    @classmethod
    def from_sitk(cls, img: sitk.Image) -> Geometry:
        """Geometry of a SimpleITK image, spacing turned to array order."""
        return cls(
            spacing=tuple(float(s) for s in reversed(img.GetSpacing())),
            origin=tuple(float(o) for o in img.GetOrigin()),
            direction=tuple(float(d) for d in img.GetDirection()),
        )

    def apply_to(self, img: sitk.Image) -> None:
        """Stamp this geometry on a SimpleITK image of the same dimension."""
        img.SetSpacing(tuple(reversed(self.spacing)))
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)


@dataclass(frozen=True)
class Image:
    """A voxel array and its geometry.

    Attributes:
        array: ``(Z, Y, X)`` array in the file's own dtype.
        geometry: spacing, origin and direction.
        path: where it was read from (for messages).
        sources: for a DICOM series, the header (no pixel data) of each slice file in the
            order of ``array``'s first axis (one multi-frame file: its header alone, its frames
            in that order); empty for other files. What a DICOM-SEG of the image references.
    """

    array: np.ndarray
    geometry: Geometry
    path: Path | None = None
    sources: tuple[Dataset, ...] = ()

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm, ``(z, y, x)``."""
        return self.geometry.spacing


def image_from_sitk(
    source: Path, read: Callable[[], sitk.Image], *, unreadable: str, multi_component: str
) -> Image:
    """Run a SimpleITK read; its errors and multi-component volumes become one-line
    :class:`ImageReadError` messages naming ``source`` (``{error}`` and ``{n}`` are filled in)."""
    try:
        img = read()
    except RuntimeError as e:
        error = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
        msg = f"{source}: " + unreadable.format(error=error)
        raise ImageReadError(msg) from e
    if img.GetNumberOfComponentsPerPixel() != 1:
        msg = f"{source}: " + multi_component.format(n=img.GetNumberOfComponentsPerPixel())
        raise ImageReadError(msg)
    return Image(sitk.GetArrayFromImage(img), Geometry.from_sitk(img), source)
