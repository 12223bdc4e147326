"""``autoseg evaluate --lesions``: the lesion part of scoring a case and of the summary.

The rules (components, matching, score, FROC) are in :mod:`autoseg.evaluation.lesions`; this
module reads the probabilities and writes the results. With ``--lesions`` the summary JSON gets a
``"lesions"`` key (settings, per label the pooled counts and the FROC, per case every lesion), and
``<stem>_lesions.csv`` holds one row per lesion.

Probabilities are the ``CASE.npz`` files ``predict --save-probabilities`` writes beside
``CASE.nii.gz`` (:class:`~autoseg.inference.probabilities.ProbabilityMap`). They are stored on
the same grid as the label map (the source scan's), so they are used as they are, reoriented like
their label map when that is stored flipped or permuted on the reference grid; a file of another
shape, or of another label scheme, is refused naming it. The FROC needs a score for every
predicted lesion: either every prediction has its ``CASE.npz`` (then the FROC is computed and
``<stem>_froc.png`` drawn) or none has; a partial set is refused.
"""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg._atomic import write_atomic
from autoseg.errors import ModelError
from autoseg.evaluation.lesions import FROC_FP_RATES, CaseLesions, Lesion, find_lesions, froc, total_counts
from autoseg.inference.probabilities import ProbabilityMap
from autoseg.io.align import Reorientation
from autoseg.labels import LabelScheme, LabelSchemeError, entry_mask

#: What ``--lesions`` states in the summary's settings.
RULES = {
    "connectivity": "full: 26 neighbours in 3D (8 in 2D)",
    "match": "IoU > iou_threshold, one-to-one: most pairs, then the largest summed IoU (Hungarian)",
    "score": "largest probability of the label or region inside the predicted lesion",
    "froc": "sensitivity of the best operating point with at most that many false positives per "
    "case (no interpolation); cpm is their mean",
}
_FIX = "predict again with --save-probabilities, or move the .npz files away to evaluate without an FROC"
_CSV_COLUMNS = (
    "case",
    "label",
    "kind",
    "id",
    "voxels",
    "volume_mm3",
    "centroid_z",
    "centroid_y",
    "centroid_x",
    "matched",
    "partner",
    "iou",
    "score",
)


@dataclass(frozen=True)
class LesionJob:
    """What a case's scoring needs for its lesions.

    Attributes:
        iou_threshold: the IoU a match must exceed.
        probabilities: the case's ``CASE.npz``, or None (no scores).
    """

    iou_threshold: float
    probabilities: Path | None = None


def probability_files(pairs: Sequence[tuple[str, Path, Path]]) -> tuple[dict[str, Path] | None, list[str]]:
    """The ``CASE.npz`` beside each ``(case, prediction, reference)``'s prediction.

    Returns:
        ``({case: file}, [])`` when every case has one, ``(None, [])`` when none has, and
        ``(None, [problem])`` naming the cases without one otherwise.
    """
    files = {case: pred.parent / f"{case}.npz" for case, pred, _ in pairs}
    missing = [case for case, f in files.items() if not f.is_file()]
    if len(missing) == len(files):
        return None, []
    if missing:
        folder = pairs[0][1].parent
        return None, [
            f"{folder} holds CASE.npz probabilities for {len(files) - len(missing)} case(s) but not for "
            f"{len(missing)}: {', '.join(missing)}; an FROC needs all of them: {_FIX}"
        ]
    return files, []


def case_lesions(
    pred: np.ndarray,
    ref: np.ndarray,
    entries: Sequence[tuple[str, tuple[int, ...]]],
    job: LesionJob,
    *,
    spacing: Sequence[float],
    annotated: np.ndarray | None,
    scheme: LabelScheme | None,
    stored_shape: Sequence[int],
    reorientation: Reorientation | None,
) -> dict[str, CaseLesions]:
    """The matched lesions of each entry of one case.

    Args:
        pred: predicted label map on the reference grid.
        ref: reference label map.
        entries: ``(key, values)`` of each label (one value) or region.
        job: the threshold and the probability file.
        spacing: voxel size in mm, array order.
        annotated: where the reference is annotated, or None.
        scheme: the labels the probabilities must be of (``--dataset-json``); None: plain
            labels, as the file says.
        stored_shape: the prediction's shape as stored (the probabilities' grid).
        reorientation: what put the prediction onto the reference grid, or None.

    Raises:
        ModelError: the probability file is unreadable, of another label scheme or shape, or
            lacks the channel of a label the prediction holds; the message names it.
    """
    probs = None
    if job.probabilities is not None:
        path = job.probabilities
        used = scheme if scheme is not None else _file_scheme(path)
        probs = ProbabilityMap.load(path, scheme=used, shape=tuple(stored_shape), fix=_FIX)
    out = {}
    for key, values in entries:
        p, r = entry_mask(pred, values), entry_mask(ref, values)
        probability = None
        if probs is not None and p.any():
            if values not in probs.channel_values:
                msg = (
                    f"{job.probabilities}: has no probability channel for {key!r} (values "
                    f"{list(values)}), which its prediction holds; {_FIX}"
                )
                raise ModelError(msg)
            probability = probs.probabilities[probs.channel_values.index(values)]
            if reorientation is not None:
                probability = reorientation.apply(probability)
        out[key] = find_lesions(
            p,
            r,
            spacing=spacing,
            iou_threshold=job.iou_threshold,
            annotated=annotated,
            probability=probability,
        )
    return out


def summarize(
    per_case: Sequence[tuple[str, dict[str, CaseLesions]]],
    keys: Sequence[str],
    *,
    iou_threshold: float,
    with_froc: bool,
) -> dict[str, Any]:
    """The ``"lesions"`` value of the summary JSON.

    Args:
        per_case: each case's name and its lesions by key (a missing key: no lesion in either map).
        keys: the labels or regions, in order.
        iou_threshold: the matching threshold (recorded in the settings).
        with_froc: the lesions have scores: add each label's FROC (else ``"froc": None``).

    Returns:
        ``{"settings": {...}, "per_label": {key: {counts, fp_per_case, froc}}, "per_case":
        [{"case": name, "labels": {key: {counts, "reference": [...], "predicted": [...]}}}]}``,
        NaN where undefined.
    """
    per_label = {}
    for key in keys:
        cases = [lesions.get(key, CaseLesions()) for _, lesions in per_case]
        per_label[key] = total_counts(cases) | {"froc": froc(cases).to_dict() if with_froc else None}
    cases_out = []
    for case, lesions in per_case:
        labels = {}
        for key in keys:
            found = lesions.get(key, CaseLesions())
            labels[key] = found.counts() | {
                "reference": [les.to_dict() for les in found.reference],
                "predicted": [les.to_dict() for les in found.predicted],
            }
        cases_out.append({"case": case, "labels": labels})
    settings = {"iou_threshold": iou_threshold, **RULES, "froc_fp_rates": list(FROC_FP_RATES)}
    return {"settings": settings, "per_label": per_label, "per_case": cases_out}


def write_csv(
    path: Path, per_case: Sequence[tuple[str, dict[str, CaseLesions]]], keys: Sequence[str]
) -> Path:
    """One row per lesion of the labels ``keys`` (columns :data:`_CSV_COLUMNS`), written
    atomically; empty cells for what is undefined (the partner of an unmatched lesion, the
    score without probabilities, ``centroid_z`` in 2D)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    for case, lesions in per_case:
        for key in keys:
            found = lesions.get(key, CaseLesions())
            for kind, group in (("reference", found.reference), ("predicted", found.predicted)):
                writer.writerows([case, key, kind, *_row(les)] for les in group)
    return write_atomic(path, lambda tmp: tmp.write_text(buf.getvalue(), encoding="utf-8"))


def _row(les: Lesion) -> list[object]:
    centroid = [""] * (3 - len(les.centroid)) + [f"{c:.2f}" for c in les.centroid]
    return [
        les.id,
        les.voxels,
        repr(les.volume_mm3),
        *centroid,
        int(les.matched),
        "" if les.partner is None else les.partner,
        repr(les.iou),
        "" if les.score is None else repr(les.score),
    ]


def _file_scheme(path: Path) -> LabelScheme:
    """The plain labels a ``CASE.npz`` says its channels are (for evaluate without
    ``--dataset-json``): names and values as stored; regions need the dataset's scheme."""

    def refuse(why: str) -> ModelError:
        return ModelError(f"{path}: {why}")

    try:  # the small arrays only: an npz member is read when asked for
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            meta = {k: f[k] for k in f.files if k != "probabilities"}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise refuse(f"cannot be read as probabilities ({e}); {_FIX}") from e
    activation = meta.get("activation")
    if activation is not None and activation.ndim == 0 and str(activation) == "sigmoid":
        raise refuse("holds sigmoid probabilities of regions; pass --dataset-json to score their lesions")
    values = meta.get("label_values")
    if values is None or values.ndim != 1 or values.dtype.kind not in "iu":
        raise refuse("does not say which label each channel is (no label_values); pass --dataset-json")
    names = meta.get("channel_names")
    if names is None or names.shape != values.shape or names.dtype.kind != "U":
        names = np.array(["background" if v == 0 else str(v) for v in values.tolist()])
    try:
        return LabelScheme.from_declared({str(n): int(v) for n, v in zip(names, values, strict=True)})
    except LabelSchemeError as e:
        raise refuse(f"its channels are not plain labels ({e}); pass --dataset-json") from e
