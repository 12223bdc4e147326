"""Overlap metrics on label maps (pure numpy)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion(pred: np.ndarray, ref: np.ndarray, label: int) -> tuple[int, int, int]:
    """(TP, FP, FN) voxel counts of one label."""
    p, r = pred == label, ref == label
    tp = int(np.count_nonzero(p & r))
    return tp, int(np.count_nonzero(p)) - tp, int(np.count_nonzero(r)) - tp


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
