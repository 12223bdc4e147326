"""Intensity normalisation per channel, as the plan says (see planning.rules.normalization_scheme)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autoseg.planning.plan import Normalization


def normalize(
    data: np.ndarray, schemes: Sequence[Normalization], *, nonzero_mask: np.ndarray | None = None
) -> np.ndarray:
    """Normalise ``(C, Z, Y, X)`` channels; returns a new float32 array.

    Args:
        data: channels in the file's intensities.
        schemes: one :class:`Normalization` per channel.
        nonzero_mask: ``(Z, Y, X)`` bool, where any channel is nonzero; needed by schemes with
            ``use_nonzero_mask`` (statistics from inside it, outside set to 0).

    Examples:
        >>> from autoseg.planning.plan import Normalization
        >>> x = np.array([[[[0.0, 1.0, 2.0, 3.0]]]])
        >>> [round(float(v), 3) for v in normalize(x, [Normalization("zscore", False)]).ravel()]
        [-1.342, -0.447, 0.447, 1.342]
        >>> ct = Normalization("ct", False, clip=(0.0, 2.0), mean=1.0, std=0.5)
        >>> normalize(x, [ct]).tolist()
        [[[[-2.0, 0.0, 2.0, 2.0]]]]
    """
    out = np.empty(data.shape, dtype=np.float32)
    for c, scheme in enumerate(schemes):
        x = data[c].astype(np.float32, copy=False)
        if scheme.scheme == "ct":
            lo, hi = scheme.clip if scheme.clip is not None else (x.min(), x.max())
            mean = scheme.mean if scheme.mean is not None else 0.0
            std = scheme.std if scheme.std is not None else 1.0
            out[c] = (np.clip(x, lo, hi) - mean) / max(std, 1e-8)
        elif scheme.scheme == "zscore":
            if scheme.use_nonzero_mask and nonzero_mask is not None:
                vals = x[nonzero_mask]
                mean, std = (float(vals.mean()), float(vals.std())) if vals.size else (0.0, 1.0)
                out[c] = np.where(nonzero_mask, (x - mean) / max(std, 1e-8), 0.0)
            else:
                out[c] = (x - float(x.mean())) / max(float(x.std()), 1e-8)
        else:
            out[c] = x
    return out
