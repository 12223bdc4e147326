"""The fingerprint as typed, JSON-round-trippable dataclasses (``fingerprint.json``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

FINGERPRINT_VERSION = 1


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
    labels: dict[str, int]
    cases: tuple[CaseFingerprint, ...]
    foreground_intensity: tuple[IntensityStats, ...]
    median_relative_size_after_crop: float
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
        """JSON-ready dict."""
        return asdict(self)

    def save(self, path: Path) -> None:
        """Write as JSON atomically."""
        from autoseg.workspace import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        """Inverse of :meth:`to_dict`; rejects unknown or missing keys."""
        expected = {f.name for f in fields(cls)}
        if set(d) != expected:
            msg = f"fingerprint keys {sorted(set(d) ^ expected)} unexpected or missing"
            raise ValueError(msg)
        cases = tuple(
            CaseFingerprint(
                case_id=c["case_id"],
                spacing=tuple(c["spacing"]),
                shape=tuple(c["shape"]),
                shape_after_crop=tuple(c["shape_after_crop"]),
                bbox=tuple(tuple(b) for b in c["bbox"]),
                label_voxels=tuple(c["label_voxels"]),
            )
            for c in d["cases"]
        )
        return cls(
            dataset_name=d["dataset_name"],
            channel_names=tuple(d["channel_names"]),
            labels=dict(d["labels"]),
            cases=cases,
            foreground_intensity=tuple(IntensityStats(**s) for s in d["foreground_intensity"]),
            median_relative_size_after_crop=d["median_relative_size_after_crop"],
            schema_version=d["schema_version"],
        )

    @classmethod
    def load(cls, path: Path) -> Fingerprint:
        """Read ``fingerprint.json``."""
        return cls.from_dict(json.loads(Path(path).read_text()))
