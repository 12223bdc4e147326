"""The fingerprint as typed, JSON-round-trippable dataclasses (``fingerprint.json``).

A versioned contract like the plan: loading is strict (``schema_version``, every key, no other
key, declared types), so a stale or hand-edited fingerprint is not planned from silently.
Version 2 (this one) holds regions (``labels`` values may be lists; ``regions_class_order``);
version 1 files are read as version 2 without regions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg._atomic import write_json_atomic
from autoseg._contract import load, parse, to_json
from autoseg.errors import PlanError

FINGERPRINT_VERSION = 2
_FIX = "run `autoseg plan` again"


@dataclass(frozen=True)
class IntensityStats:
    """Foreground intensity statistics of one channel (voxels where the label is > 0)."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    percentile_00_5: float
    percentile_99_5: float
    n_samples: int

    @classmethod
    def of(cls, values: np.ndarray) -> IntensityStats:
        """Statistics of a 1D sample (float64 arithmetic, so the result is order-independent)."""
        v = np.asarray(values, dtype=np.float64)
        if v.size == 0:
            return cls(0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0)
        p005, p50, p995 = np.percentile(v, [0.5, 50.0, 99.5])
        return cls(
            float(v.mean()),
            float(v.std()),
            float(p50),
            float(v.min()),
            float(v.max()),
            float(p005),
            float(p995),
            int(v.size),
        )


@dataclass(frozen=True)
class CaseFingerprint:
    """What the planner needs to know about one case.

    Attributes:
        case_id: the case's id.
        spacing: voxel size in mm, ``(z, y, x)``.
        shape: array shape ``(Z, Y, X)``.
        shape_after_crop: shape of the bounding box of nonzero voxels (any channel).
        bbox: that box, ``[[z0, z1], [y0, y1], [x0, x1]]``, end exclusive.
        label_voxels: voxel count per declared label value (background first).
    """

    case_id: str
    spacing: tuple[float, ...]
    shape: tuple[int, ...]
    shape_after_crop: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]
    label_voxels: tuple[int, ...]

    @property
    def relative_size_after_crop(self) -> float:
        """Cropped voxels / all voxels."""
        return float(np.prod(self.shape_after_crop) / np.prod(self.shape))


@dataclass(frozen=True)
class Fingerprint:
    """A dataset's fingerprint: the only input of the planner besides the dataset's metadata."""

    dataset_name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int | tuple[int, ...]]
    cases: tuple[CaseFingerprint, ...]
    foreground_intensity: tuple[IntensityStats, ...]
    median_relative_size_after_crop: float
    regions_class_order: tuple[int, ...] | None = None
    schema_version: int = FINGERPRINT_VERSION

    @property
    def spacings(self) -> np.ndarray:
        """``(N, 3)`` per-case spacings."""
        return np.array([c.spacing for c in self.cases], dtype=np.float64)

    @property
    def shapes_after_crop(self) -> np.ndarray:
        """``(N, 3)`` per-case cropped shapes."""
        return np.array([c.shape_after_crop for c in self.cases], dtype=np.int64)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return to_json(self)

    def save(self, path: Path) -> None:
        """Write as JSON atomically."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            PlanError: wrong or missing ``schema_version``, unknown or missing keys, or wrongly
                typed values.
        """
        if isinstance(d, dict) and type(d.get("schema_version")) is int and d["schema_version"] == 1:
            d = {**d, "regions_class_order": None, "schema_version": FINGERPRINT_VERSION}
        return parse(cls, d, name="fingerprint", version=FINGERPRINT_VERSION, error=PlanError, fix=_FIX)

    @classmethod
    def load(cls, path: Path) -> Fingerprint:
        """Read and check ``fingerprint.json``; every error names the file."""
        return load(
            path,
            cls.from_dict,
            error=PlanError,
            fix=_FIX,
            missing="no fingerprint here; run `autoseg plan DATASET` first",
        )
