"""Decide post-processing on cross-validation predictions: nnU-Net's two tests.

Each test is kept only if it improves the Dice against the reference labels:

1. keep only the largest component of the union of all foreground labels; kept if the
   foreground-mean Dice improves and no label's mean Dice gets worse;
2. then, on top of 1's outcome, for each label on its own: keep only that label's largest
   component; kept if that label's mean Dice improves.

The decision is a :class:`~autoseg.inference.postprocess.Postprocessing`, which prediction
applies (components and connectivity are defined there).

Given a :class:`~autoseg.labels.LabelScheme`, its entries are tested: labels, or regions (the
region's mask keeps its largest component, as nnU-Net does), and every Dice counts the annotated
voxels only (where the reference holds the ignore label, nothing is scored).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg._parallel import map_cases, values_or_raise
from autoseg.evaluation.metrics import as_labels, mean_per_label, nan_to_none
from autoseg.inference.postprocess import (
    CONNECTIVITY,
    Postprocessing,
    Target,
    keep_largest_component,
    target_mask,
    target_of,
)
from autoseg.io.align import read_onto
from autoseg.io.image import read_image
from autoseg.labels import LabelScheme

log = logging.getLogger(__name__)

#: Dice per entry key.
Scores = dict[str, float]


@dataclass(frozen=True)
class _Job:
    """One case to score: the files, the entries (key, target) and the ignore value."""

    pred: Path
    ref: Path
    entries: tuple[tuple[str, Target], ...]
    ignore: int | None


def _remove_small(labels: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Set voxels of ``mask`` outside its largest component to 0; None if nothing changes."""
    drop = mask & ~keep_largest_component(mask)
    if not drop.any():
        return None
    out = labels.copy()
    out[drop] = 0
    return out


def _dice(pred: np.ndarray, ref: np.ndarray, target: Target, annotated: np.ndarray | None) -> float:
    """Dice of one label or region over the annotated voxels; NaN when absent from both."""
    p, r = target_mask(pred, target), target_mask(ref, target)
    if annotated is not None:
        p &= annotated
    tp = int(np.count_nonzero(p & r))
    fp, fn = int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp
    return float("nan") if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def _score_case(job: _Job) -> dict[str, Scores]:
    """Dice per entry of one case under every variant the two tests need (one read per file).

    Returns ``{"base": ..., "fg": ..., "label_on_base": ..., "label_on_fg": ...}``, each
    ``{key: Dice}``, where ``label_on_X[k]`` is entry k's Dice after keeping its largest
    component on top of X.

    Raises:
        AutosegError: a file cannot be read, or the reference is not on the prediction's grid.
    """
    pred_img = read_image(job.pred)
    pred = as_labels(pred_img.array, source=job.pred)
    ref = as_labels(read_onto(job.ref, pred_img.geometry, pred.shape, grid_of=str(job.pred)), source=job.ref)
    annotated = None if job.ignore is None else ref != job.ignore

    def dice_all(p: np.ndarray) -> Scores:
        return {key: _dice(p, ref, target, annotated) for key, target in job.entries}

    base = dice_all(pred)
    fg_pred = _remove_small(pred, pred != 0) if pred.any() else None
    fg = base if fg_pred is None else dice_all(fg_pred)
    on_base, on_fg = {}, {}
    for key, target in job.entries:
        mask = target_mask(pred, target)
        changed = _remove_small(pred, mask)
        on_base[key] = base[key] if changed is None else _dice(changed, ref, target, annotated)
        # An entry's Dice depends only on its own mask: where the foreground step left this
        # entry untouched, keeping its largest component gives the same Dice as on the base.
        if fg_pred is None or np.array_equal(target_mask(fg_pred, target), mask):
            on_fg[key] = on_base[key]
            continue
        changed_fg = _remove_small(fg_pred, target_mask(fg_pred, target))
        on_fg[key] = fg[key] if changed_fg is None else _dice(changed_fg, ref, target, annotated)
    return {"base": base, "fg": fg, "label_on_base": on_base, "label_on_fg": on_fg}


def _better(after: float | None, before: float | None) -> bool:
    return after is not None and (before is None or after > before)


def _worse(after: float | None, before: float | None) -> bool:
    return before is not None and after is not None and after < before


def determine_postprocessing(
    pred_files: list[Path],
    ref_files: list[Path],
    labels: Sequence[int] | LabelScheme,
    *,
    workers: int = 1,
) -> tuple[Postprocessing, dict[str, Any]]:
    """Decide post-processing from cross-validation predictions (nnU-Net's two tests).

    Mean Dice per label is taken over cases, leaving out cases where the label is absent from
    both maps; the foreground mean is the mean of those label means
    (:func:`~autoseg.evaluation.metrics.mean_per_label`). "Improves" is strict: a step that
    changes nothing is not kept.

    Args:
        pred_files: predicted label maps, one per case.
        ref_files: the reference label maps, in the same order, each on its prediction's grid
            (stored flipped or with permuted axes is fine: reoriented exactly).
        labels: foreground label values to score (0 is ignored if given), or a label scheme:
            its labels or regions, scored over the voxels its ignore label leaves annotated.
        workers: processes reading and scoring cases.

    Returns:
        The decision and a JSON-ready report (keys of ``mean`` and ``per_label``: label values
        as text, or region names; ``labels``: each value, or a region's list of values)::

            {"labels": [...], "n_cases": N, "connectivity": 26,
             "baseline": {"mean": {label: dice}, "foreground_mean": x},
             "foreground_largest_only": {"mean": ..., "foreground_mean": x, "kept": bool},
             "per_label": {label: {"before": x, "after": x, "kept": bool}},
             "final": {"mean": ..., "foreground_mean": x}}

        (NaN Dice, a label absent everywhere, is written as null.)

    Raises:
        ValueError: the two lists differ in length, or are empty.
        ImageReadError: a prediction or reference file cannot be read.
        DatasetError: a reference does not lie on its prediction's grid.
    """
    if len(pred_files) != len(ref_files) or not pred_files:
        msg = (
            f"determine_postprocessing needs one reference per prediction and at least one "
            f"case, got {len(pred_files)} predictions and {len(ref_files)} references"
        )
        raise ValueError(msg)
    if isinstance(labels, LabelScheme):
        entries = tuple(
            (key, target_of(e.values)) for key, e in zip(labels.entry_keys, labels.entries, strict=True)
        )
        ignore = labels.ignore
    else:
        entries = tuple((str(int(v)), int(v)) for v in labels if int(v) != 0)
        ignore = None
    keys = [key for key, _ in entries]
    target = dict(entries)

    def means(per_case: Sequence[Scores]) -> dict[str, Any]:
        return nan_to_none(mean_per_label(per_case, keys))

    jobs = [_Job(Path(p), Path(r), entries, ignore) for p, r in zip(pred_files, ref_files, strict=True)]
    scores = values_or_raise(map_cases(_score_case, jobs, workers=workers, desc="Post-processing"))
    baseline = means([s["base"] for s in scores])
    fg_step = means([s["fg"] for s in scores])
    fg_kept = _better(fg_step["foreground_mean"], baseline["foreground_mean"]) and not any(
        _worse(fg_step["mean"][k], baseline["mean"][k]) for k in baseline["mean"]
    )
    fg_step["kept"] = fg_kept
    current = fg_step if fg_kept else baseline
    key_on = "label_on_fg" if fg_kept else "label_on_base"
    after = means([s[key_on] for s in scores])
    final_per_case = [dict(s["fg" if fg_kept else "base"]) for s in scores]
    per_label: dict[str, Any] = {}
    kept_labels = []
    for key in keys:
        before_l, after_l = current["mean"][key], after["mean"][key]
        kept = _better(after_l, before_l)
        per_label[key] = {"before": before_l, "after": after_l, "kept": kept}
        if kept:
            kept_labels.append(target[key])
            for c, s in zip(final_per_case, scores, strict=True):
                c[key] = s[key_on][key]
    pp = Postprocessing(fg_kept, tuple(kept_labels))
    report: dict[str, Any] = {
        "labels": [t if isinstance(t, int) else list(t) for _, t in entries],
        "n_cases": len(scores),
        "connectivity": CONNECTIVITY,
        "baseline": baseline,
        "foreground_largest_only": fg_step,
        "per_label": per_label,
        "final": means(final_per_case),
    }
    log.info(
        "post-processing: %s (foreground Dice %s -> %s)",
        pp.to_dict(),
        baseline["foreground_mean"],
        report["final"]["foreground_mean"],
    )
    return pp, report
