"""Decide post-processing on cross-validation predictions: nnU-Net's two tests.

Each test is kept only if it improves the Dice against the reference labels:

1. keep only the largest component of the union of all foreground labels; kept if the
   foreground-mean Dice improves and no label's mean Dice gets worse;
2. then, on top of 1's outcome, for each label on its own: keep only that label's largest
   component; kept if that label's mean Dice improves.

The decision is a :class:`~autoseg.inference.postprocess.Postprocessing`, which prediction
applies (components and connectivity are defined there).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from autoseg._parallel import map_cases, values_or_raise
from autoseg.evaluation.metrics import as_labels, dice_per_label, mean_per_label, nan_to_none
from autoseg.inference.postprocess import CONNECTIVITY, Postprocessing, keep_largest_component
from autoseg.io.align import read_onto
from autoseg.io.image import read_image

log = logging.getLogger(__name__)

Scores = dict[int, float]


def _remove_small(labels: np.ndarray, mask: np.ndarray) -> np.ndarray | None:
    """Set voxels of ``mask`` outside its largest component to 0; None if nothing changes."""
    drop = mask & ~keep_largest_component(mask)
    if not drop.any():
        return None
    out = labels.copy()
    out[drop] = 0
    return out


def _one_dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    return dice_per_label(pred, ref, [label])[label]


def _score_case(job: tuple[Path, Path, tuple[int, ...]]) -> dict[str, Scores]:
    """Dice per label of one case under every variant the two tests need (one read per file).

    Returns ``{"base": ..., "fg": ..., "label_on_base": ..., "label_on_fg": ...}``, each
    ``{label: Dice}``, where ``label_on_X[l]`` is label l's Dice after keeping its largest
    component on top of X.

    Raises:
        AutosegError: a file cannot be read, or the reference is not on the prediction's grid.
    """
    pred_path, ref_path, labels = job
    pred_img = read_image(pred_path)
    pred = as_labels(pred_img.array, source=pred_path)
    ref = as_labels(
        read_onto(ref_path, pred_img.geometry, pred.shape, grid_of=str(pred_path)), source=ref_path
    )
    base = dice_per_label(pred, ref, labels)
    fg_pred = _remove_small(pred, pred != 0) if pred.any() else None
    fg = base if fg_pred is None else dice_per_label(fg_pred, ref, labels)
    on_base, on_fg = {}, {}
    for lab in labels:
        changed = _remove_small(pred, pred == lab)
        on_base[lab] = base[lab] if changed is None else _one_dice(changed, ref, lab)
        # A label's Dice depends only on its own mask: where the foreground step left this
        # label untouched, keeping its largest component gives the same Dice as on the base.
        if fg_pred is None or np.array_equal(fg_pred == lab, pred == lab):
            on_fg[lab] = on_base[lab]
            continue
        changed_fg = _remove_small(fg_pred, fg_pred == lab)
        on_fg[lab] = fg[lab] if changed_fg is None else _one_dice(changed_fg, ref, lab)
    return {"base": base, "fg": fg, "label_on_base": on_base, "label_on_fg": on_fg}


def _better(after: float | None, before: float | None) -> bool:
    return after is not None and (before is None or after > before)


def _worse(after: float | None, before: float | None) -> bool:
    return before is not None and after is not None and after < before


def determine_postprocessing(
    pred_files: list[Path], ref_files: list[Path], labels: list[int], *, workers: int = 1
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
        labels: foreground label values to score (0 is ignored if given).
        workers: processes reading and scoring cases.

    Returns:
        The decision and a JSON-ready report::

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
    fg_labels = tuple(int(v) for v in labels if int(v) != 0)

    def means(per_case: Sequence[Scores]) -> dict[str, Any]:
        return nan_to_none(mean_per_label(per_case, fg_labels))

    jobs = [(Path(p), Path(r), fg_labels) for p, r in zip(pred_files, ref_files, strict=True)]
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
    for lab in fg_labels:
        before_l, after_l = current["mean"][str(lab)], after["mean"][str(lab)]
        kept = _better(after_l, before_l)
        per_label[str(lab)] = {"before": before_l, "after": after_l, "kept": kept}
        if kept:
            kept_labels.append(lab)
            for c, s in zip(final_per_case, scores, strict=True):
                c[lab] = s[key_on][lab]
    pp = Postprocessing(fg_kept, tuple(kept_labels))
    report: dict[str, Any] = {
        "labels": list(fg_labels),
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
