"""Post-processing of predicted label maps: keep only the largest connected component (of all
foreground, of chosen labels or regions), as decided on the cross-validation predictions by
:mod:`autoseg.evaluation.postprocess_choice` and stored in ``postprocessing.json``.

A label is one value; a region (see :mod:`autoseg.labels`) is the voxels holding any of its
values, stored as a list (``"largest_only_labels": [[1, 2], 3]``): as nnU-Net does for regions,
the region's mask keeps its largest component and the voxels removed become background.

Components are 3D with full (26-) connectivity, as nnU-Net's (skimage's default): voxels that
touch at a corner belong together, so a thin oblique structure is not split into pieces. Removed
voxels become background (label 0). Labelling (:func:`autoseg._components.label_components`, shared
with lesion scoring) uses ``cc3d`` (connected-components-3d, installed with acvl-utils), about
2-3x faster than ``scipy.ndimage.label`` on a 512x512x200 mask; ``scipy`` is the fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from autoseg._atomic import write_json_atomic
from autoseg._components import label_components
from autoseg._contract import load, parse
from autoseg.errors import ModelError
from autoseg.labels import entry_mask

log = logging.getLogger(__name__)

#: Voxel connectivity of the components (26: faces, edges and corners).
CONNECTIVITY: Final = 26
#: Version of ``postprocessing.json`` (regions, as lists, widened version 1 without a new one:
#: every version-1 file reads as before).
POSTPROCESSING_VERSION = 1
_PP_FIX = "re-run `autoseg find-best`"

#: What a post-processing step applies to: a label value, or a region's values.
Target = int | tuple[int, ...]


def target_of(values: Sequence[int]) -> Target:
    """The target of a label or region with these values: one value as an int (what plain
    labels always stored), several as a tuple."""
    return int(values[0]) if len(values) == 1 else tuple(int(v) for v in values)


def target_mask(labels: np.ndarray, target: Target) -> np.ndarray:
    """The voxels of ``labels`` that belong to ``target``."""
    return entry_mask(labels, (target,) if isinstance(target, int) else target)


@dataclass(frozen=True)
class Postprocessing:
    """What to remove from a predicted label map.

    Attributes:
        foreground_largest_only: keep only the largest component of all foreground together.
        largest_only_labels: label values (not class indices), or regions (tuples of values),
            of which only the largest component is kept, applied after the foreground step.
    """

    foreground_largest_only: bool = False
    largest_only_labels: tuple[Target, ...] = ()

    @property
    def is_identity(self) -> bool:
        """Whether this post-processing changes nothing."""
        return not self.foreground_largest_only and not self.largest_only_labels

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, without a version (as embedded in ``inference.json``)."""
        return {
            "foreground_largest_only": bool(self.foreground_largest_only),
            "largest_only_labels": [
                int(v) if isinstance(v, int) else [int(x) for x in v] for v in self.largest_only_labels
            ],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Postprocessing:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            ModelError: missing or unknown keys, or values of the wrong type.
        """
        return parse(cls, d, name="post-processing", version=None, error=ModelError, fix=_PP_FIX)

    def save(self, path: Path) -> None:
        """Write ``postprocessing.json`` (with its ``schema_version``) atomically."""
        write_json_atomic(path, {"schema_version": POSTPROCESSING_VERSION, **self.to_dict()})

    @classmethod
    def from_file_dict(cls, d: dict[str, Any]) -> Postprocessing:
        """The content of ``postprocessing.json``, checked strictly with its version.

        Version 0 (no ``schema_version``, exactly the two fields: what find-best wrote before
        the file was versioned) is read as version 1, so trained model folders keep working.

        Raises:
            ModelError: wrong or missing version, missing or unknown keys, or wrong types.
        """
        if isinstance(d, dict) and set(d) == {"foreground_largest_only", "largest_only_labels"}:
            d = {**d, "schema_version": POSTPROCESSING_VERSION}
        return parse(
            cls, d, name="post-processing", version=POSTPROCESSING_VERSION, error=ModelError, fix=_PP_FIX
        )

    @classmethod
    def load(cls, path: Path) -> Postprocessing:
        """Read and check ``postprocessing.json``; every error names the file."""
        return load(
            path,
            cls.from_file_dict,
            error=ModelError,
            fix=_PP_FIX,
            missing=f"no post-processing decided here; {_PP_FIX}",
        )


def keep_largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest connected component of a 3D boolean mask (26-connectivity).

    Args:
        mask: ``(Z, Y, X)`` mask; nonzero is inside.

    Returns:
        ``(Z, Y, X)`` bool mask holding only the largest component (the first in raster order
        when two are equally large); all False for an empty mask.

    Raises:
        ValueError: ``mask`` is not 3D.

    Examples:
        >>> m = np.zeros((1, 3, 5), bool); m[0, :, 0] = True; m[0, 0, 2:] = True; m[0, 1, 4] = True
        >>> keep_largest_component(m).astype(int)[0]
        array([[0, 0, 1, 1, 1],
               [0, 0, 0, 0, 1],
               [0, 0, 0, 0, 0]])
    """
    if mask.ndim != 3:
        msg = f"keep_largest_component needs a 3D (Z, Y, X) mask, got {mask.ndim}D {mask.shape}"
        raise ValueError(msg)
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return np.zeros(mask.shape, dtype=bool)
    components, _ = label_components(mask)
    sizes = np.bincount(components.ravel())
    sizes[0] = 0
    if np.count_nonzero(sizes) == 1:
        return mask.copy()
    return components == int(np.argmax(sizes))


def apply_postprocessing(labels: np.ndarray, pp: Postprocessing) -> np.ndarray:
    """Apply a post-processing decision to a label map.

    Args:
        labels: ``(Z, Y, X)`` integer label map, background 0.
        pp: what to remove; a region's removed voxels become background whatever their label.

    Returns:
        A new label map of the same shape and dtype; removed voxels are 0 (background).

    Examples:
        >>> lab = np.zeros((1, 1, 7), np.uint8); lab[0, 0, :3] = 1; lab[0, 0, 4] = 1
        >>> lab[0, 0, 6] = 2
        >>> apply_postprocessing(lab, Postprocessing(False, (1,)))[0, 0]
        array([1, 1, 1, 0, 0, 0, 2], dtype=uint8)
        >>> apply_postprocessing(lab, Postprocessing(True, ()))[0, 0]
        array([1, 1, 1, 0, 0, 0, 0], dtype=uint8)
        >>> apply_postprocessing(lab, Postprocessing(False, ((1, 2),)))[0, 0]  # a region
        array([1, 1, 1, 0, 0, 0, 0], dtype=uint8)
    """
    out = np.array(labels, copy=True)
    if pp.foreground_largest_only:
        fg = out != 0
        out[fg & ~keep_largest_component(fg)] = 0
    for target in pp.largest_only_labels:
        mask = target_mask(out, target)
        out[mask & ~keep_largest_component(mask)] = 0
    return out
