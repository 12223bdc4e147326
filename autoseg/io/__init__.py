"""Reading and writing images, DICOM series and dataset layouts.

Axis convention everywhere in autoseg: arrays are ``(Z, Y, X)`` (SimpleITK's numpy order, slowest
axis first) and spacings are in millimetres in the same order. Origin and direction are kept in
SimpleITK's (x, y, z) physical order so that a written label map overlays its source exactly.
"""

from __future__ import annotations

from autoseg.io.image import Geometry, Image, read_image, write_image

__all__ = ["Geometry", "Image", "read_image", "write_image"]
