"""Lesion-wise detection metrics (pure functions on arrays): connected components of a predicted
and a reference mask, one-to-one matching, per-case counts, their totals, and the FROC curve.

For nodule and metastasis tasks (LUNA16, say) a voxel Dice hides what matters: how many lesions
were found, and at the cost of how many false alarms. The rules:

* **Lesion**: a connected component of one label's (or region's) mask, with full connectivity:
  26 neighbours in 3D (faces, edges, corners; 8 in 2D), as post-processing's components, so a
  thin oblique lesion stays one lesion. Two lesions of one label that touch are one component.
* **Match**: a predicted and a reference lesion may match when their IoU (voxels in both over
  voxels in either) is strictly greater than ``iou_threshold`` (default 0.1, :data:`DEFAULT_IOU`).
  Matching is one-to-one: a reference lesion split into two predicted parts matches one of
  them, and the other is a false positive; one predicted lesion covering two reference lesions
  matches one of them, and the other is missed.
* **Ignore**: with an ignore label, only annotated voxels count (as for every other metric). The
  predicted components are found on the whole prediction (an unannotated stripe does not cut a
  lesion in two), then their unannotated voxels are dropped; a component left with no voxel lies
  wholly in unannotated voxels and is neither a hit nor a false positive.
* **Score** (for the FROC): the largest probability of the lesion's label or region over the
  predicted component's (annotated) voxels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from autoseg._components import label_components

#: Default IoU a predicted and a reference lesion must exceed to match.
DEFAULT_IOU: Final = 0.1
#: False positives per case at which the FROC sensitivity is read (LUNA16's seven points).
FROC_FP_RATES: Final = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Lesion:
    """One connected component of a reference or predicted mask.

    Attributes:
        id: its number, 1… in raster order among the lesions of its map.
        voxels: its voxel count (annotated voxels only, for a predicted lesion).
        volume_mm3: ``voxels`` times the voxel volume.
        centroid: its centre of mass in voxel indices, array order (``(z, y, x)``).
        partner: the id of the lesion it matches in the other map, or None.
        iou: IoU with the partner; unmatched, the largest IoU with any lesion of the other map
            (0.0 when it overlaps none), which says how near it came.
        score: a predicted lesion's score (see the module docstring), or None.
    """

    id: int
    voxels: int
    volume_mm3: float
    centroid: tuple[float, ...]
    partner: int | None = None
    iou: float = 0.0
    score: float | None = None

    @property
    def matched(self) -> bool:
        """Whether it matches a lesion of the other map."""
        return self.partner is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``matched`` included)."""
        return {
            "id": self.id,
            "voxels": self.voxels,
            "volume_mm3": self.volume_mm3,
            "centroid_voxel": [round(c, 2) for c in self.centroid],
            "matched": self.matched,
            "partner": self.partner,
            "iou": self.iou,
            "score": self.score,
        }


@dataclass(frozen=True)
class CaseLesions:
    """The lesions of one label (or region) in one case, matched.

    Attributes:
        reference: the reference lesions.
        predicted: the predicted lesions.
    """

    reference: tuple[Lesion, ...] = ()
    predicted: tuple[Lesion, ...] = ()

    @property
    def matched(self) -> int:
        """Matched pairs: the reference lesions found (also the predicted lesions that hit)."""
        return sum(les.matched for les in self.reference)

    def counts(self) -> dict[str, float]:
        """``n_reference``, ``n_predicted``, ``matched``, ``false_positives``,
        ``false_negatives``, ``sensitivity``, ``precision``, ``f1`` (NaN where a denominator is 0).

        Examples:
            >>> a = Lesion(1, 1, 1.0, (0.0,), partner=1, iou=1.0)
            >>> CaseLesions((a, Lesion(2, 1, 1.0, (2.0,))), (a,)).counts()["sensitivity"]
            0.5
        """
        return detection_counts(len(self.reference), len(self.predicted), self.matched)


def detection_counts(n_reference: int, n_predicted: int, matched: int) -> dict[str, float]:
    """The detection counts and ratios of ``matched`` one-to-one pairs.

    Sensitivity is matched / reference lesions, precision matched / predicted lesions, and F1
    their harmonic mean, ``2 matched / (reference + predicted)``; each is NaN when its
    denominator is 0 (no reference lesion: sensitivity undefined, not 1).

    Examples:
        >>> detection_counts(3, 3, 2)["f1"]
        0.6666666666666666
    """
    return {
        "n_reference": n_reference,
        "n_predicted": n_predicted,
        "matched": matched,
        "false_positives": n_predicted - matched,
        "false_negatives": n_reference - matched,
        "sensitivity": _ratio(matched, n_reference),
        "precision": _ratio(matched, n_predicted),
        "f1": _ratio(2 * matched, n_reference + n_predicted),
    }


def match_pairs(iou: np.ndarray, *, threshold: float = DEFAULT_IOU) -> list[tuple[int, int]]:
    """One-to-one matching of reference lesions (rows) to predicted lesions (columns).

    Only pairs with IoU strictly above ``threshold`` may match. Among the matchings of those
    pairs it takes one with the most pairs, and among those the largest summed IoU: the
    Hungarian algorithm (:func:`scipy.optimize.linear_sum_assignment`) on weights
    ``big + IoU``, ``big`` exceeding any possible IoU sum. Greedy matching by descending IoU
    would be order-dependent in a worse way: a lesion whose only candidate was taken by a
    neighbour that had another candidate would count as missed, and the neighbour's other
    candidate as a false positive, although both lesions can be paired.

    Args:
        iou: ``(n_reference, n_predicted)`` IoU of every pair.
        threshold: the IoU a pair must exceed, in [0, 1].

    Returns:
        ``(reference index, predicted index)`` pairs, sorted by reference index.

    Examples:
        >>> match_pairs(np.array([[0.9, 0.2], [0.15, 0.0]]))  # greedy would keep (0, 0) only
        [(0, 1), (1, 0)]
    """
    _check_threshold(threshold)
    ok = iou > threshold
    rows, cols = np.flatnonzero(ok.any(axis=1)), np.flatnonzero(ok.any(axis=0))
    if rows.size == 0:
        return []
    from scipy.optimize import linear_sum_assignment

    sub, allowed = iou[np.ix_(rows, cols)], ok[np.ix_(rows, cols)]
    big = float(min(sub.shape) + 1)  # one more pair outweighs any difference in IoU sums
    weight = np.where(allowed, big + sub, 0.0)
    r, c = linear_sum_assignment(weight, maximize=True)
    return sorted((int(rows[i]), int(cols[j])) for i, j in zip(r, c, strict=True) if allowed[i, j])


def find_lesions(
    pred: np.ndarray,
    ref: np.ndarray,
    *,
    spacing: Sequence[float],
    iou_threshold: float = DEFAULT_IOU,
    annotated: np.ndarray | None = None,
    probability: np.ndarray | None = None,
) -> CaseLesions:
    """The lesions of one label or region in one case, matched (see the module docstring).

    Args:
        pred: ``(Z, Y, X)`` (or ``(Y, X)``) boolean mask of the prediction.
        ref: boolean mask of the reference, same shape.
        spacing: voxel size in mm, array order; volumes are voxels times its product.
        iou_threshold: a pair matches when its IoU is above this, in [0, 1].
        annotated: where the reference is annotated (False on its ignore label), or None.
        probability: the label's (or region's) probability, same shape, or None: with it every
            predicted lesion gets its largest probability as ``score``.

    Returns:
        The matched lesions.

    Raises:
        ValueError: shapes differ, ``spacing`` does not give one positive value per axis, or
            the threshold is outside [0, 1].

    Examples:
        >>> ref = np.zeros((1, 3, 9), bool); ref[0, 0, 0:2] = ref[0, 0, 4:6] = ref[0, 2, 8] = True
        >>> pred = np.zeros_like(ref); pred[0, 0, 1:3] = pred[0, 0, 4:6] = pred[0, 2, 2] = True
        >>> found = find_lesions(pred, ref, spacing=(1.0, 1.0, 1.0))
        >>> found.counts()["matched"], found.counts()["false_positives"]
        (2, 1)
    """
    _check_threshold(iou_threshold)
    for name, arr in (("ref", ref), ("annotated", annotated), ("probability", probability)):
        if arr is not None and arr.shape != pred.shape:
            msg = f"{name} has shape {arr.shape} but pred has {pred.shape}"
            raise ValueError(msg)
    if len(spacing) != pred.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        msg = f"spacing must hold {pred.ndim} positive values (mm, array order), got {tuple(spacing)}"
        raise ValueError(msg)
    voxel_mm3 = math.prod(float(s) for s in spacing)
    p_lab, _ = label_components(pred)
    if annotated is not None:
        p_lab = _renumber(np.where(annotated, p_lab, 0))
    r_lab, _ = label_components(ref if annotated is None else ref & annotated)
    n_p, n_r = int(p_lab.max(initial=0)), int(r_lab.max(initial=0))
    p_size = np.bincount(p_lab.ravel(), minlength=n_p + 1)
    r_size = np.bincount(r_lab.ravel(), minlength=n_r + 1)
    iou = _iou_matrix(r_lab, p_lab, r_size, p_size)
    pairs = match_pairs(iou, threshold=iou_threshold)
    r_partner = dict(pairs)
    p_partner = {p: r for r, p in pairs}
    scores: list[float | None] = [None] * n_p
    if probability is not None:
        scores = list(_max_per_component(probability, p_lab, n_p))
    p_centroid, r_centroid = _centroids(p_lab, n_p, p_size), _centroids(r_lab, n_r, r_size)
    reference = tuple(
        _lesion(i, r_size, r_centroid, voxel_mm3, r_partner.get(i), iou[i, :]) for i in range(n_r)
    )
    predicted = tuple(
        _lesion(j, p_size, p_centroid, voxel_mm3, p_partner.get(j), iou[:, j], scores[j]) for j in range(n_p)
    )
    return CaseLesions(reference, predicted)


def total_counts(cases: Sequence[CaseLesions]) -> dict[str, float]:
    """The counts of several cases pooled (lesions summed over cases, then the ratios), with
    ``fp_per_case`` (false positives / cases) and ``n_cases``.

    Pooling weighs every lesion alike; a mean of per-case sensitivities would weigh a case with
    one lesion like a case with twenty, and would skip cases without reference lesions.

    Examples:
        >>> hit, false_alarm = Lesion(1, 1, 1.0, (0.0,), partner=1), Lesion(2, 1, 1.0, (3.0,))
        >>> total_counts([CaseLesions((hit,), (hit, false_alarm)), CaseLesions()])["fp_per_case"]
        0.5
    """
    n_ref = sum(len(c.reference) for c in cases)
    n_pred = sum(len(c.predicted) for c in cases)
    out = detection_counts(n_ref, n_pred, sum(c.matched for c in cases))
    return out | {"n_cases": len(cases), "fp_per_case": _ratio(out["false_positives"], len(cases))}


@dataclass(frozen=True)
class Froc:
    """A free-response ROC curve over several cases.

    Attributes:
        thresholds: the score thresholds, descending: the operating point ``i`` keeps the
            predicted lesions scoring at least ``thresholds[i]`` (the first, infinite, none).
        fp_per_case: false positives per case at each operating point (non-decreasing).
        sensitivity: matched reference lesions / reference lesions at each point
            (non-decreasing; NaN without reference lesions).
        fp_rates: the rates the curve is read at.
        sensitivity_at: the sensitivity at each rate: that of the last operating point whose
            false positives per case do not exceed it (0 before the first).
        cpm: the mean of ``sensitivity_at`` (LUNA16's competition performance metric).
    """

    thresholds: tuple[float, ...]
    fp_per_case: tuple[float, ...]
    sensitivity: tuple[float, ...]
    fp_rates: tuple[float, ...]
    sensitivity_at: tuple[float, ...]
    cpm: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the seven points, the CPM and the curve (the first threshold, infinite,
        as None: JSON has no infinity)."""
        return {
            "fp_rates": list(self.fp_rates),
            "sensitivity": list(self.sensitivity_at),
            "cpm": self.cpm,
            "curve": {
                "threshold": [None if math.isinf(t) else t for t in self.thresholds],
                "fp_per_case": list(self.fp_per_case),
                "sensitivity": list(self.sensitivity),
            },
        }


def froc(cases: Sequence[CaseLesions], *, fp_rates: Sequence[float] = FROC_FP_RATES) -> Froc:
    """The FROC curve of scored predicted lesions over ``cases``.

    Each predicted lesion is a candidate with its score, a hit when it matched a reference
    lesion (matched once, on the whole prediction: raising the threshold only drops
    candidates). At each distinct score ``s``, from the highest down, the operating point keeps
    the candidates scoring at least ``s``: sensitivity is their hits over all reference lesions
    and the false positives per case their misses over the number of cases. The sensitivity at a
    rate is that of the best operating point within it (a step function, never interpolated:
    every value is a threshold one can use; LUNA16's script interpolates between operating
    points, so its figures can be a little higher). A lesion the label map never predicted is
    never found, so the curve ends at the label map's lesion sensitivity.

    Args:
        cases: the matched lesions of each case; every predicted lesion needs a ``score``.
        fp_rates: false positives per case to read the sensitivity at (positive).

    Returns:
        The curve; all-NaN sensitivities when no case has a reference lesion.

    Raises:
        ValueError: a predicted lesion has no score, ``cases`` is empty, or a rate is not positive.

    Examples:
        >>> hit, miss = Lesion(1, 1, 1.0, (0.0,), partner=1, score=0.9), Lesion(2, 1, 1.0, (5.0,), score=0.95)
        >>> ref = (Lesion(1, 1, 1.0, (0.0,), partner=1), Lesion(2, 1, 1.0, (9.0,)))
        >>> f = froc([CaseLesions(ref, (hit, miss))], fp_rates=(0.5, 1.0))
        >>> f.fp_per_case, f.sensitivity, f.sensitivity_at
        ((0.0, 1.0, 1.0), (0.0, 0.0, 0.5), (0.0, 0.5))
    """
    if not cases:
        msg = "froc needs at least one case"
        raise ValueError(msg)
    if not all(math.isfinite(r) and r > 0 for r in fp_rates):
        msg = f"fp_rates must be positive, got {tuple(fp_rates)}"
        raise ValueError(msg)
    scored = [les for c in cases for les in c.predicted]
    if any(les.score is None for les in scored):
        msg = "every predicted lesion needs a score for an FROC curve"
        raise ValueError(msg)
    scores = np.array([les.score for les in scored], dtype=np.float64)
    hits = np.array([les.matched for les in scored], dtype=bool)
    n_ref = sum(len(c.reference) for c in cases)
    order = np.argsort(-scores, kind="stable")
    scores, hits = scores[order], hits[order]
    last = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))  # last index of each score
    last = last[last < scores.size]  # no candidate at all: only the empty operating point
    tp, fp = np.cumsum(hits)[last], np.cumsum(~hits)[last]
    fps = np.concatenate([[0.0], fp / len(cases)])
    sens = np.concatenate([[0.0], tp / n_ref]) if n_ref else np.full(len(last) + 1, math.nan)
    at = tuple(float(sens[np.searchsorted(fps, r, side="right") - 1]) for r in fp_rates)
    return Froc(
        thresholds=(math.inf, *(float(s) for s in scores[last])),
        fp_per_case=tuple(float(x) for x in fps),
        sensitivity=tuple(float(x) for x in sens),
        fp_rates=tuple(float(r) for r in fp_rates),
        sensitivity_at=at,
        cpm=float(np.mean(at)) if n_ref else math.nan,
    )


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _check_threshold(threshold: float) -> None:
    if not (math.isfinite(threshold) and 0 <= threshold <= 1):
        msg = f"iou_threshold must be in [0, 1], got {threshold}"
        raise ValueError(msg)


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Components numbered 1… again, in raster order of their first voxel, after some vanished."""
    flat = labels.ravel()
    present, first = np.unique(flat, return_index=True)
    present, first = present[present > 0], first[present > 0]
    lut = np.zeros(int(flat.max(initial=0)) + 1, dtype=np.int64)
    lut[present[np.argsort(first, kind="stable")]] = np.arange(1, present.size + 1)
    return lut[labels]


def _iou_matrix(r_lab: np.ndarray, p_lab: np.ndarray, r_size: np.ndarray, p_size: np.ndarray) -> np.ndarray:
    """``(n_r, n_p)`` IoU of every reference and predicted component, from the overlapping voxels only."""
    n_r, n_p = r_size.size - 1, p_size.size - 1
    iou = np.zeros((n_r, n_p))
    both = (r_lab > 0) & (p_lab > 0)
    if not both.any():
        return iou
    codes, inter = np.unique(r_lab[both].astype(np.int64) * (n_p + 1) + p_lab[both], return_counts=True)
    r, p = codes // (n_p + 1), codes % (n_p + 1)
    iou[r - 1, p - 1] = inter / (r_size[r] + p_size[p] - inter)
    return iou


def _max_per_component(values: np.ndarray, labels: np.ndarray, n: int) -> list[float]:
    """The largest value over each component 1…n (index 0 of the result is component 1)."""
    inside = labels > 0
    out = np.full(n + 1, -np.inf)
    np.maximum.at(out, labels[inside], values[inside].astype(np.float64))
    return [float(v) for v in out[1:]]


def _centroids(labels: np.ndarray, n: int, sizes: np.ndarray) -> np.ndarray:
    """``(n + 1, ndim)`` centre of mass of each component in voxel indices (row 0 unused)."""
    coords = np.nonzero(labels)
    which = labels[coords]
    out = np.zeros((n + 1, labels.ndim))
    for axis, c in enumerate(coords):
        out[:, axis] = np.bincount(which, weights=c, minlength=n + 1) / np.maximum(sizes, 1)
    return out


def _lesion(
    index: int,
    sizes: np.ndarray,
    centroids: np.ndarray,
    voxel_mm3: float,
    partner: int | None,
    ious: np.ndarray,
    score: float | None = None,
) -> Lesion:
    """Lesion ``index`` (0-based; its id is ``index + 1``) with its partner (0-based) and IoUs."""
    voxels = int(sizes[index + 1])
    best = float(ious[partner]) if partner is not None else float(ious.max(initial=0.0))
    return Lesion(
        id=index + 1,
        voxels=voxels,
        volume_mm3=voxels * voxel_mm3,
        centroid=tuple(float(c) for c in centroids[index + 1]),
        partner=None if partner is None else partner + 1,
        iou=best,
        score=score,
    )
