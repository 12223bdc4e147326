"""A preprocessed case's properties: the way back from the network's grid to the source scan.

Preprocessing writes them (``<store>/CASE.json``) and the fold validation reads them to put its
predictions on the source grid; prediction keeps them in memory. A typed, versioned contract,
loaded strictly: a properties file that does not match is an error naming it, never a wrong crop
or transpose applied silently. A change of this format changes the store key (see
:func:`autoseg.preprocessing.store.plan_part`), so stores of another version are never read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg._contract import load, parse, to_json
from autoseg.errors import PreprocessedDataError
from autoseg.io.image import Geometry

PROPERTIES_VERSION = 1


def _fix(folder: Path | None) -> str:
    where = f"delete {folder} and " if folder is not None else ""
    return f"{where}preprocess again (`autoseg preprocess`, or `autoseg train` does it)"


@dataclass(frozen=True)
class CaseProperties:
    """What mapping a prediction of a preprocessed case back to its source scan needs.

    Axis orders are the transposed one (``plan.transpose_forward``) unless said otherwise.

    Attributes:
        case_id: the case's id.
        spacing_transposed: the source spacing in mm.
        shape_before_crop: the source shape, before the crop to the nonzero box.
        bbox: that box, ``((z0, z1), (y0, y1), (x0, x1))``, ends exclusive.
        shape_after_crop: the shape of the box.
        target_spacing: the spacing resampled to.
        shape_after_resample: the shape of the stored arrays (the network's grid).
        z_axis: the axis resampled on its own (anisotropic data), or None.
        classes_present: foreground class indices with sampled voxels (empty without a label).
        geometry: the source scan's geometry, for writing predictions; None when the case was
            preprocessed from arrays only (prediction keeps its own).
        schema_version: the format's version.
    """

    case_id: str
    spacing_transposed: tuple[float, ...]
    shape_before_crop: tuple[int, ...]
    bbox: tuple[tuple[int, int], ...]
    shape_after_crop: tuple[int, ...]
    target_spacing: tuple[float, ...]
    shape_after_resample: tuple[int, ...]
    z_axis: int | None
    classes_present: tuple[int, ...]
    geometry: Geometry | None
    schema_version: int = PROPERTIES_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the content of ``CASE.json``)."""
        return to_json(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, folder: Path | None = None) -> CaseProperties:
        """Strict inverse of :meth:`to_dict`.

        Args:
            d: the decoded JSON.
            folder: the store folder, named in the fix of an error.

        Raises:
            PreprocessedDataError: wrong or missing version, missing or unknown keys, or
                wrongly typed values.
        """
        return parse(
            cls,
            d,
            name="case properties",
            version=PROPERTIES_VERSION,
            error=PreprocessedDataError,
            fix=_fix(folder),
        )

    @classmethod
    def load(cls, path: Path) -> CaseProperties:
        """Read and check ``CASE.json``; every error names the file."""
        path = Path(path)
        return load(
            path,
            lambda d: cls.from_dict(d, folder=path.parent),
            error=PreprocessedDataError,
            fix=_fix(path.parent),
            missing=f"missing (the case was not preprocessed completely); {_fix(path.parent)}",
        )
