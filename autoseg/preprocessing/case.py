"""Preprocess one case for one configuration: transpose, crop, normalise, resample, locate classes.

The order matters: normalisation runs before resampling so that the nonzero mask (used by
z-scoring inside the body) is exact, and label values become class indices (0..n-1) here, so that
everything downstream works with dense class indices whatever values the dataset uses.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from autoseg.fingerprint.crop import bbox_slices, nonzero_bbox
from autoseg.io.image import Geometry
from autoseg.labels import LabelScheme
from autoseg.planning.kinds import kind_of
from autoseg.planning.plan import Configuration, Plan
from autoseg.preprocessing.normalize import normalize
from autoseg.preprocessing.properties import CaseProperties
from autoseg.preprocessing.resample import needs_separate_z, resize_data, resize_labels

#: Foreground voxel coordinates kept per class for oversampling: up to this many, but at least
#: 1% of the class's voxels (nnU-Net's rule).
LOCATIONS_PER_CLASS = 10_000


@dataclass
class PreprocessedCase:
    """One case ready for training or prediction.

    Attributes:
        data: ``(C, Z, Y, X)`` float32 at the configuration's spacing, transposed and cropped.
        seg: ``(Z, Y, X)`` indices into the label scheme's ``stored_values`` (uint8 / int16),
            or None without a label.
        locations: ``(N, 4)`` int32 rows ``(class, z, y, x)`` of sampled foreground voxels.
        properties: what is needed to map a prediction back to the source geometry.
    """

    data: np.ndarray
    seg: np.ndarray | None
    locations: np.ndarray
    properties: CaseProperties


def target_spacing_for(config: Configuration, case_spacing: Sequence[float]) -> tuple[float, ...]:
    """Spacing a case is resampled to; 2D kinds keep each case's own axis-0 (slice) spacing."""
    return kind_of(config.kind).target_spacing(config.spacing, case_spacing)


def new_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> tuple[int, ...]:
    """Shape after resampling from ``spacing`` to ``target``, at least 1 voxel per axis."""
    return tuple(max(1, round(s * sp / t)) for s, sp, t in zip(shape, spacing, target, strict=True))


def class_locations(index_map: np.ndarray, scheme: LabelScheme, *, seed: int) -> np.ndarray:
    """Sample foreground voxel coordinates per sampling class of ``scheme`` (each label, or each
    region; never the ignore label): ``(N, 4)`` rows ``(class, z, y, x)``."""
    rng = np.random.default_rng(seed)
    rows = []
    for c, mask in scheme.sampling_masks(index_map):
        coords = np.argwhere(mask)
        if len(coords) == 0:
            continue
        n = min(len(coords), max(LOCATIONS_PER_CLASS, math.ceil(0.01 * len(coords))))
        if n < len(coords):
            coords = coords[np.sort(rng.choice(len(coords), n, replace=False))]
        rows.append(np.column_stack([np.full(len(coords), c), coords]))
    if not rows:
        return np.zeros((0, 4), dtype=np.int32)
    return np.concatenate(rows).astype(np.int32)


def preprocess_arrays(
    data: np.ndarray,
    seg: np.ndarray | None,
    spacing: Sequence[float],
    plan: Plan,
    config: Configuration,
    *,
    case_id: str,
    geometry: Geometry | None = None,
) -> PreprocessedCase:
    """Preprocess arrays read from files.

    Args:
        data: ``(C, Z, Y, X)`` channels as read (file axis order).
        seg: ``(Z, Y, X)`` label values, or None.
        spacing: the file's spacing ``(z, y, x)`` in mm.
        plan: the plan.
        config: the configuration to preprocess for.
        case_id: for the seeded foreground sampling.
        geometry: the source geometry, stored in the properties for writing predictions.
    """
    fwd = list(plan.transpose_forward)
    data = data.transpose([0, *(a + 1 for a in fwd)])
    sp = tuple(float(spacing[a]) for a in fwd)
    shape_before_crop = data.shape[1:]
    bbox = nonzero_bbox(data)
    sl = bbox_slices(bbox)
    data = data[(slice(None), *sl)]
    mask = None
    if any(n.use_nonzero_mask for n in plan.normalization):
        mask = ndimage.binary_fill_holes(np.any(data != 0, axis=0))
    data = normalize(data, plan.normalization, nonzero_mask=mask)
    target = target_spacing_for(config, sp)
    shape = new_shape(data.shape[1:], sp, target)
    rs = config.resampling
    z_axis = needs_separate_z(sp, target, anisotropy=rs.separate_z_anisotropy)
    data = resize_data(data, shape, order=rs.data_order, z_axis=z_axis, z_order=rs.z_order)
    out_seg = None
    locations = np.zeros((0, 4), dtype=np.int32)
    if seg is not None:
        seg = seg.transpose(fwd)[sl]
        scheme = plan.label_scheme
        seg = scheme.index_lut()[seg.astype(np.int64)]
        dtype = np.uint8 if len(scheme.stored_values) < 256 else np.int16
        out_seg = resize_labels(
            seg.astype(dtype), shape, order=rs.seg_order, z_axis=z_axis, z_order=rs.z_order
        )
        locations = class_locations(out_seg, scheme, seed=zlib.crc32(case_id.encode()) ^ 1234)
    props = CaseProperties(
        case_id=case_id,
        spacing_transposed=tuple(float(s) for s in sp),
        shape_before_crop=tuple(int(s) for s in shape_before_crop),
        bbox=tuple((int(lo), int(hi)) for lo, hi in bbox),
        shape_after_crop=tuple(int(hi - lo) for lo, hi in bbox),
        target_spacing=tuple(float(t) for t in target),
        shape_after_resample=tuple(int(s) for s in shape),
        z_axis=z_axis,
        classes_present=tuple(sorted({int(c) for c in np.unique(locations[:, 0])})),
        geometry=geometry,
    )
    return PreprocessedCase(data.astype(np.float32, copy=False), out_seg, locations, props)
