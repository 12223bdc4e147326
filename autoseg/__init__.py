"""autoseg: a self-configuring segmentation pipeline for 3D medical images.

The stages follow the data path: :mod:`autoseg.io` (files, DICOM, dataset layouts, checks),
:mod:`autoseg.fingerprint`, :mod:`autoseg.planning`, then preprocessing, training, inference and
evaluation. The command line (:mod:`autoseg.cli`) is a thin layer over :mod:`autoseg.pipeline`.
"""

from __future__ import annotations

__version__ = "0.1.0"
