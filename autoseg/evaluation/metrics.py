"""Metrics of a predicted label map against a reference (pure functions on arrays).

Overlap (Dice, IoU, sensitivity, specificity, precision) and volumes are voxel counts; the
surface metrics (HD95, normalised surface Dice) come from MONAI's
:func:`monai.metrics.compute_hausdorff_distance` and :func:`monai.metrics.compute_surface_dice`
on the edge voxels (6-connected boundary) of each label, in mm with the voxel spacing honoured.

Edge cases, per label (``NaN`` means undefined; it is left out of every mean and written as
``null`` in JSON):

===================  =====================  ==================================================
metric               label in neither map   label in one map only
===================  =====================  ==================================================
dice, iou            NaN                    0
nsd                  NaN                    0
hd95_mm              NaN                    the image diagonal in mm (a finite worst case)
sensitivity          NaN                    0 if only the reference has it, else NaN
precision            NaN                    0 if only the prediction has it, else NaN
specificity          1 (NaN if the reference is this label everywhere: no negatives)
volume_*_ml          0                      pred - ref, in mL (1 mL = 1000 mm³)
volume_diff_rel      NaN                    -1 if only the reference has it, else NaN
===================  =====================  ==================================================

In general a ratio whose denominator is zero is NaN, and ``volume_diff_rel`` is
``(pred - ref) / ref`` (NaN when the reference volume is zero).

With a :class:`~autoseg.labels.LabelScheme` (:func:`dice_per_entry`, :func:`entry_metrics`) each
label or region is scored (a region's mask: the voxels holding any of its values), and only the
annotated voxels count: where the reference holds the ignore label, neither map is looked at
(nnU-Net's rule), so a prediction there is neither right nor wrong. The surface metrics see the
prediction restricted to the annotated voxels.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from autoseg.errors import DatasetError
from autoseg.labels import LabelScheme, entry_mask

K = TypeVar("K", int, str)

#: Keys of the per-label dict :func:`case_metrics` returns, in a fixed order (CSV columns).
METRICS: tuple[str, ...] = (
    "dice",
    "iou",
    "sensitivity",
    "specificity",
    "precision",
    "volume_pred_ml",
    "volume_ref_ml",
    "volume_diff_ml",
    "volume_diff_rel",
    "hd95_mm",
    "nsd",
)

#: Percentile of the symmetric surface distance reported as ``hd95_mm``.
HD_PERCENTILE = 95.0


def confusion(pred: np.ndarray, ref: np.ndarray, label: int) -> tuple[int, int, int]:
    """(TP, FP, FN) voxel counts of one label."""
    p, r = pred == label, ref == label
    tp = int(np.count_nonzero(p & r))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp


def dice_per_entry(pred: np.ndarray, ref: np.ndarray, scheme: LabelScheme) -> dict[str, float]:
    """Dice of each label or region of ``scheme``, keyed by :attr:`LabelScheme.entry_keys`,
    over the annotated voxels only (the reference's ignore label is left out); NaN where the
    entry is absent from both maps.

    Examples:
        >>> s = LabelScheme.from_declared({"background": 0, "all": [1, 2], "b": 2, "ignore": 3}, [1, 2])
        >>> p = np.array([0, 1, 2, 2, 1]); r = np.array([0, 1, 1, 2, 3])
        >>> dice_per_entry(p, r, s)
        {'all': 1.0, 'b': 0.6666666666666666}
    """
    annotated = scheme.annotated(ref)
    out = {}
    for key, entry in zip(scheme.entry_keys, scheme.entries, strict=True):
        p, r = entry_mask(pred, entry.values), entry_mask(ref, entry.values)
        if annotated is not None:
            p &= annotated
        tp = int(np.count_nonzero(p & r))
        fp, fn = int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp
        out[key] = float("nan") if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return out


def dice_per_label(pred: np.ndarray, ref: np.ndarray, labels: Sequence[int]) -> dict[int, float]:
    """Dice of each label; NaN where the label is absent from both maps (left out of means).

    Examples:
        >>> p = np.array([0, 1, 1, 2]); r = np.array([0, 1, 2, 2])
        >>> dice_per_label(p, r, [1, 2, 3])
        {1: 0.6666666666666666, 2: 0.6666666666666666, 3: nan}
    """
    out = {}
    for lab in labels:
        tp, fp, fn = confusion(pred, ref, lab)
        out[int(lab)] = float("nan") if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)
    return out


def image_diagonal_mm(shape: Sequence[int], spacing: Sequence[float]) -> float:
    """Length in mm of the diagonal of the image's extent: ``sqrt(sum((n_i * s_i)²))``.

    No two voxels of the image are further apart, so it bounds every surface distance; it is
    the HD95 reported when a label is in only one of the two maps.

    Examples:
        >>> image_diagonal_mm((3, 4, 12), (1.0, 1.0, 1.0))
        13.0
    """
    return math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, spacing, strict=True)))


def absent_label_metrics(n_voxels: int) -> dict[str, float]:
    """Metrics of a label found in neither map of ``n_voxels`` voxels (see the module table).

    Examples:
        >>> m = absent_label_metrics(8)
        >>> m["dice"], m["specificity"], m["volume_diff_ml"]
        (nan, 1.0, 0.0)
    """
    return _overlap(0, 0, 0, n_voxels, voxel_ml=1.0) | {"hd95_mm": math.nan, "nsd": math.nan}


def surface_metrics(
    pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float], tolerance_mm: float = 1.0
) -> tuple[float, float]:
    """HD95 and normalised surface Dice of two boolean masks.

    Both come from the distances between the masks' edge voxels (voxels with a 6-neighbour
    outside the mask), in mm: HD95 is the larger of the two directed 95th percentiles and NSD
    the fraction of edge voxels of both masks within ``tolerance_mm`` of the other mask's edge.
    The masks are cropped to the bounding box of their union (plus one voxel) first, which gives
    the same numbers on a fraction of the voxels.

    Args:
        pred: ``(Z, Y, X)`` (or ``(Y, X)``) boolean mask.
        ref: boolean mask of the same shape.
        spacing: voxel size in mm, one per axis, in array order.
        tolerance_mm: boundary distance counted as correct by NSD (inclusive), >= 0.

    Returns:
        ``(hd95_mm, nsd)``: ``(NaN, NaN)`` if both masks are empty, ``(image diagonal, 0.0)`` if
        one is.

    Examples:
        >>> ref = np.zeros((1, 1, 8), bool); ref[0, 0, 2] = True
        >>> pred = np.roll(ref, 3, axis=2)
        >>> surface_metrics(pred, ref, spacing=(1.0, 1.0, 0.5), tolerance_mm=1.0)
        (1.5, 0.0)
    """
    has_p, has_r = bool(pred.any()), bool(ref.any())
    if not (has_p or has_r):
        return math.nan, math.nan
    if not (has_p and has_r):
        return image_diagonal_mm(pred.shape, spacing), 0.0
    import torch  # with MONAI, only where surfaces are measured: overlap metrics need neither

    box = _union_box(pred | ref, margin=1)
    p = torch.from_numpy(np.ascontiguousarray(pred[box]))[None, None]
    r = torch.from_numpy(np.ascontiguousarray(ref[box]))[None, None]
    sp = [float(s) for s in spacing]
    with warnings.catch_warnings():
        # MONAI 1.5+ passes a deprecated argument to itself on every call (a FutureWarning).
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
        from monai.metrics import compute_hausdorff_distance, compute_surface_dice

        hd = compute_hausdorff_distance(p, r, include_background=True, percentile=HD_PERCENTILE, spacing=sp)
        nsd = compute_surface_dice(p, r, [float(tolerance_mm)], include_background=True, spacing=sp)
    return float(hd[0, 0]), float(nsd[0, 0])


def case_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int],
    *,
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
) -> dict[int, dict[str, float]]:
    """Every metric of :data:`METRICS` for each label of one case.

    Args:
        pred: ``(Z, Y, X)`` integer label map (2D ``(Y, X)`` also works).
        ref: reference label map of the same shape.
        labels: label values to score (usually the foreground labels, not 0).
        spacing: voxel size in mm, in array order (``(z, y, x)``); volumes and distances use it.
        tolerance_mm: NSD tolerance in mm (>= 0).

    Returns:
        ``{label: {metric: value}}`` with the keys of :data:`METRICS`; the module docstring lists
        what a label missing from one or both maps gives.

    Raises:
        ValueError: the maps differ in shape or are not 2D/3D, ``spacing`` does not have one
            positive value per axis, or ``tolerance_mm`` is negative or not finite.

    Examples:
        >>> ref = np.zeros((1, 4, 4), np.uint8); ref[0, :2, :2] = 1
        >>> pred = np.zeros_like(ref); pred[0, :2, :1] = 1
        >>> m = case_metrics(pred, ref, [1], spacing=(1.0, 1.0, 1.0))[1]
        >>> m["dice"], m["iou"], m["sensitivity"], m["precision"], m["hd95_mm"], m["nsd"]
        (0.6666666666666666, 0.5, 0.5, 1.0, 1.0, 1.0)
    """
    _check_inputs(pred, ref, spacing, tolerance_mm)
    voxel_ml = math.prod(float(s) for s in spacing) / 1000.0
    return {
        int(lab): _mask_metrics(pred == lab, ref == lab, pred.size, voxel_ml, spacing, tolerance_mm)
        for lab in labels
    }


def entry_metrics(
    pred: np.ndarray,
    ref: np.ndarray,
    scheme: LabelScheme,
    *,
    spacing: Sequence[float],
    tolerance_mm: float = 1.0,
) -> dict[str, dict[str, float]]:
    """Every metric of :data:`METRICS` for each label or region of ``scheme`` on one case,
    over the annotated voxels only (see the module docstring).

    Args:
        pred: ``(Z, Y, X)`` integer label map (2D ``(Y, X)`` also works).
        ref: reference label map of the same shape, possibly holding the ignore label.
        scheme: what to score; keys are its :attr:`~autoseg.labels.LabelScheme.entry_keys`.
        spacing: voxel size in mm, in array order.
        tolerance_mm: NSD tolerance in mm (>= 0).

    Returns:
        ``{key: {metric: value}}``; specificity counts the annotated voxels only.

    Raises:
        ValueError: as :func:`case_metrics`.
    """
    _check_inputs(pred, ref, spacing, tolerance_mm)
    voxel_ml = math.prod(float(s) for s in spacing) / 1000.0
    annotated = scheme.annotated(ref)
    n_voxels = ref.size if annotated is None else int(np.count_nonzero(annotated))
    out = {}
    for key, entry in zip(scheme.entry_keys, scheme.entries, strict=True):
        p, r = entry_mask(pred, entry.values), entry_mask(ref, entry.values)
        if annotated is not None:
            p &= annotated
        out[key] = _mask_metrics(p, r, n_voxels, voxel_ml, spacing, tolerance_mm)
    return out


def _mask_metrics(
    p: np.ndarray,
    r: np.ndarray,
    n_voxels: int,
    voxel_ml: float,
    spacing: Sequence[float],
    tolerance_mm: float,
) -> dict[str, float]:
    """Every metric of two boolean masks, ``n_voxels`` voxels in all (for specificity)."""
    n_p, n_r = int(np.count_nonzero(p)), int(np.count_nonzero(r))
    tp = int(np.count_nonzero(p & r)) if n_p and n_r else 0
    metrics = _overlap(tp, n_p - tp, n_r - tp, n_voxels, voxel_ml=voxel_ml)
    hd95, nsd = surface_metrics(p, r, spacing=spacing, tolerance_mm=tolerance_mm)
    return metrics | {"hd95_mm": hd95, "nsd": nsd}


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _overlap(tp: int, fp: int, fn: int, n_voxels: int, *, voxel_ml: float) -> dict[str, float]:
    """Overlap metrics and volumes from the confusion counts; NaN where a denominator is 0."""
    tn = n_voxels - tp - fp - fn
    vol_p, vol_r = (tp + fp) * voxel_ml, (tp + fn) * voxel_ml
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn),
        "iou": _ratio(tp, tp + fp + fn),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "precision": _ratio(tp, tp + fp),
        "volume_pred_ml": vol_p,
        "volume_ref_ml": vol_r,
        "volume_diff_ml": vol_p - vol_r,
        "volume_diff_rel": _ratio(vol_p - vol_r, vol_r),
    }


def _union_box(mask: np.ndarray, *, margin: int) -> tuple[slice, ...]:
    """Bounding box of a non-empty mask, grown by ``margin`` voxels and clipped to the array."""
    box = []
    for axis, n in enumerate(mask.shape):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + 1 + margin, n)))
    return tuple(box)


def _check_inputs(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], tolerance_mm: float) -> None:
    if pred.shape != ref.shape:
        msg = f"prediction and reference must have the same shape, got {pred.shape} and {ref.shape}"
        raise ValueError(msg)
    if pred.ndim not in (2, 3):
        msg = f"label maps must be 2D or 3D, got {pred.ndim} dimensions (shape {pred.shape})"
        raise ValueError(msg)
    if len(spacing) != pred.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        msg = f"spacing must hold {pred.ndim} positive values (mm, array order), got {tuple(spacing)}"
        raise ValueError(msg)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        msg = f"tolerance_mm must be a finite value >= 0, got {tolerance_mm}"
        raise ValueError(msg)


def nanmean(values: Sequence[float]) -> float:
    """Mean of the values that are not NaN (NaN marks "label absent in both maps"); NaN if none.

    Examples:
        >>> nanmean([0.5, float("nan"), 1.0])
        0.75
    """
    kept = [float(x) for x in values if not math.isnan(x)]
    return float(np.mean(kept)) if kept else math.nan


def nan_to_none(obj: Any) -> Any:
    """``obj`` with every NaN float (in nested dicts and lists) turned into None: JSON has no NaN.

    Examples:
        >>> nan_to_none({"a": [1.0, float("nan")]})
        {'a': [1.0, None]}
    """
    if isinstance(obj, float):
        return None if math.isnan(obj) else obj
    if isinstance(obj, dict):
        return {k: nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [nan_to_none(v) for v in obj]
    return obj


def as_labels(arr: np.ndarray, *, source: object = "label map") -> np.ndarray:
    """The integer label map of a label image: integer arrays as they are, float ones holding
    integers converted (label files are sometimes stored as float32).

    Raises:
        DatasetError: float values that are not integers (0.5, NaN): a probability map or a
            resampled label given as a label map; the message names ``source``.

    Examples:
        >>> as_labels(np.array([0.0, 1.0, 2.0], np.float32))
        array([0, 1, 2], dtype=int32)
    """
    if arr.dtype.kind == "b":
        return arr.astype(np.uint8)
    if arr.dtype.kind in "iu":
        return arr
    rounded = np.rint(arr)
    bad = rounded != arr  # NaN too
    if bad.any():
        examples = ", ".join(f"{v:g}" for v in np.unique(arr[bad])[:3])
        msg = (
            f"{source}: holds non-integer values (e.g. {examples}); a label map holds integer "
            "labels (round it, or give the label file rather than probabilities)"
        )
        raise DatasetError(msg)
    return rounded.astype(np.int32)


def mean_per_label(per_case: Sequence[Mapping[K, float]], labels: Sequence[K]) -> dict[str, Any]:
    """The summary every score table shares: the mean over cases of each label (NaN-aware: a case
    where the label is absent from both maps is left out) and the mean of those means.

    Args:
        per_case: per case, a value (Dice, say) per label (or per entry key).
        labels: the labels (or entry keys) to summarise, in order.

    Returns:
        ``{"mean": {"<label>": value}, "foreground_mean": value}``, NaN where undefined (see
        :func:`nan_to_none` for JSON).

    Examples:
        >>> mean_per_label([{1: 0.5, 2: float("nan")}, {1: 1.0, 2: 0.4}], [1, 2])
        {'mean': {'1': 0.75, '2': 0.4}, 'foreground_mean': 0.575}
    """
    mean = {str(lab): nanmean([c[lab] for c in per_case]) for lab in labels}
    return {"mean": mean, "foreground_mean": nanmean(list(mean.values()))}
