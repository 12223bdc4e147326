"""A previous stage's label map as extra input channels of a cascade stage (``3d_cascade_fullres``).

A cascade stage sees, besides the image, what its previous stage (``3d_lowres``) predicted for
the case: the previous stage's label map on the source scan's grid, brought onto this
configuration's preprocessed grid exactly as a reference label map is (transpose, crop to the
case's box, resample), then one-hot encoded, one channel per foreground label or region of the
label scheme (:meth:`~autoseg.planning.plan.Plan.previous_stage_channels`). Training and
prediction both go through :func:`previous_stage_indices`, so the network sees the same kind of
input in both: in training the previous stage's cross-validation predictions (read from files),
in prediction its ensembled prediction of the new scan (in memory).

Resampling is nearest-neighbour (``nearest-exact``: output voxel ``o`` of ``n_out`` takes input
voxel ``floor((o + 0.5) * n_in / n_out)``): a label map is a set of classes, and the previous
stage's prediction is coarse anyway; the cascade learns to refine its borders.

Arrays are ``(Z, Y, X)`` in the plan's transposed axis order unless said otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autoseg.labels import LabelScheme
from autoseg.planning.plan import Plan
from autoseg.preprocessing.properties import CaseProperties

__all__ = ["nearest_resize", "one_hot", "previous_stage_indices", "source_shape", "with_previous_stage"]


def source_shape(props: CaseProperties, plan: Plan) -> tuple[int, ...]:
    """The array shape of the case's source scan (the file's axis order, before the transpose)."""
    return tuple(int(props.shape_before_crop[b]) for b in plan.transpose_backward)


def nearest_resize(array: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Resize a label array to ``shape`` by nearest neighbour (voxel centres aligned).

    Examples:
        >>> nearest_resize(np.array([[1, 2]]), (2, 4)).tolist()
        [[1, 1, 2, 2], [1, 1, 2, 2]]
    """
    if tuple(array.shape) == tuple(shape):
        return array
    index = [
        np.minimum(((np.arange(n_out) + 0.5) * n_in / n_out).astype(np.int64), n_in - 1)
        for n_in, n_out in zip(array.shape, shape, strict=True)
    ]
    return array[np.ix_(*index)]


def previous_stage_indices(label_map: np.ndarray, props: CaseProperties, plan: Plan) -> np.ndarray:
    """A previous stage's label map on the source grid -> stored indices on the case's grid.

    Args:
        label_map: label values in the source file's axis order and shape (a prediction written
            by the previous stage, or held in memory).
        props: the case's preprocessing properties for the cascade configuration.
        plan: the plan (transpose, label scheme).

    Returns:
        ``props.shape_after_resample`` indices into the label scheme's ``stored_values`` (as the
        preprocessed segmentation holds them), uint8 or int16; a value the scheme does not
        declare becomes background.

    Raises:
        ValueError: ``label_map`` is not the shape of the case's source scan.
    """
    expected = source_shape(props, plan)
    if tuple(label_map.shape) != expected:
        msg = (
            f"case {props.case_id}: the previous stage's label map has shape {label_map.shape}, "
            f"the scan {expected}"
        )
        raise ValueError(msg)
    scheme = plan.label_scheme
    lut = scheme.index_lut()
    dtype = np.uint8 if len(scheme.stored_values) < 256 else np.int16
    values = np.rint(label_map).astype(np.int64, copy=False) if label_map.dtype.kind == "f" else label_map
    known = (values >= 0) & (values < len(lut))
    indices = np.where(known, lut[np.clip(values, 0, len(lut) - 1)], 0).astype(dtype)
    cropped = indices.transpose(plan.transpose_forward)[tuple(slice(lo, hi) for lo, hi in props.bbox)]
    return np.ascontiguousarray(nearest_resize(cropped, props.shape_after_resample))


def one_hot(indices: np.ndarray, scheme: LabelScheme, *, dtype: type[np.generic] = np.float32) -> np.ndarray:
    """Channels of stored indices: ``(n_entries, *spatial)``, channel ``i`` 1 where the voxel is
    in foreground entry ``i`` (a label, or a region: overlapping regions share voxels).

    Examples:
        >>> scheme = LabelScheme.from_declared({"background": 0, "a": 1, "b": 2})
        >>> one_hot(np.array([0, 1, 2, 2]), scheme).tolist()
        [[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]
    """
    masks = [mask for _, mask in scheme.sampling_masks(np.asarray(indices))]
    return np.stack(masks).astype(dtype, copy=False)


def with_previous_stage(data: np.ndarray, indices: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """The cascade stage's network input: ``data`` ``(C, Z, Y, X)`` followed by the one-hot
    channels of the previous stage's ``indices`` (from :func:`previous_stage_indices`), float32.

    Raises:
        ValueError: the two do not share one grid.
    """
    if tuple(indices.shape) != tuple(data.shape[1:]):
        msg = f"the previous stage's map has shape {indices.shape}, the case {data.shape[1:]}"
        raise ValueError(msg)
    return np.concatenate([np.asarray(data, dtype=np.float32), one_hot(indices, scheme)])
