"""How sure a prediction is: per-voxel uncertainty maps and a per-case score for triage.

Two maps per case, both in nats, on the source grid beside the label map:

* **predictive entropy** ``H[p]`` of the ensemble's final probabilities ``p`` (the ones the label
  map is taken from): high wherever the prediction is unsure, whatever the reason;
* **mutual information** ``H[p] - E_m H[p_m]`` between the prediction and the ensemble member
  ``m`` (every fold, and every mirror when TTA is on): the part of the entropy that comes from
  the members *disagreeing*. Mutual information rather than variance because it is in the same
  unit as the entropy (the two compare, and their difference is the members' own, aleatoric,
  uncertainty), it has one value per voxel whatever the number of classes, and it works alike
  for softmax labels and sigmoid regions. ``E_m H[p_m]`` is accumulated during the sliding
  window as one extra blended channel, so memory grows by one channel, not one map per member.
  Folds are averaged as logits (as nnU-Net), so ``p`` is not exactly the mean of the members'
  probabilities and the difference can dip a hair below zero: it is clipped at 0.

Entropy of softmax labels is over the classes (at most ``log K``); of sigmoid regions, the sum
of each region's binary entropy (the entropy of independent regions; at most ``R log 2``). Both
come from logits in a numerically stable form.

The per-case row (:class:`CaseUncertainty`) gives the mean of each map inside the predicted
foreground, and the volume of *uncertain* voxels: entropy above half its maximum (for two
classes, a voxel whose winner has less than about 89 % probability). ``uncertainty.csv`` lists
the cases least certain first, so a reviewer opens those first. The order is by the mean mutual
information in the foreground, then the mean entropy (which alone decides with a single member,
whose mutual information is 0): on 40 hippocampus validation cases the mutual information
tracked Dice (Spearman -0.41, p 0.009) and the entropy barely did (-0.15, p 0.35); see
``benchmarks/results/uncertainty_hippocampus.md``.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from autoseg._atomic import write_atomic

__all__ = [
    "UNCERTAIN_SHARE",
    "CaseUncertainty",
    "UncertaintyMaps",
    "entropy_from_logits",
    "entropy_from_probabilities",
    "max_entropy",
    "mutual_information",
    "summarize",
    "write_uncertainty_csv",
]

Activation = Literal["softmax", "sigmoid"]

#: A voxel is uncertain when its predictive entropy exceeds this share of the maximum entropy.
UNCERTAIN_SHARE = 0.5


def entropy_from_logits(logits: torch.Tensor, activation: Activation) -> torch.Tensor:
    """Entropy (nats) of the probabilities of ``(K, *spatial)`` logits: ``(*spatial)``.

    Softmax: ``logsumexp(z) - sum_k softmax(z)_k z_k``. Sigmoid (independent regions): the sum
    over regions of ``softplus(z) - sigmoid(z) z``, each region's binary entropy.

    Examples:
        >>> z = torch.zeros(2, 1)  # two classes, equally likely: log 2
        >>> round(float(entropy_from_logits(z, "softmax")[0]), 4)
        0.6931
        >>> round(float(entropy_from_logits(torch.zeros(3, 1), "sigmoid")[0]), 4)  # 3 log 2
        2.0794
    """
    return _entropy(logits.float(), activation, dim=0)


def _entropy(z: torch.Tensor, activation: Activation, *, dim: int) -> torch.Tensor:
    if activation == "softmax":
        return torch.logsumexp(z, dim=dim) - (torch.softmax(z, dim=dim) * z).sum(dim=dim)
    return (F.softplus(z) - torch.sigmoid(z) * z).sum(dim=dim)


def batch_entropy(logits: torch.Tensor, activation: Activation) -> torch.Tensor:
    """:func:`entropy_from_logits` of ``(B, K, *spatial)`` logits: ``(B, 1, *spatial)``."""
    return _entropy(logits.float(), activation, dim=1)[:, None]


def entropy_from_probabilities(probabilities: np.ndarray, activation: Activation) -> np.ndarray:
    """Entropy (nats) of ``(K, *spatial)`` probabilities (an ensemble's average): ``(*spatial)``
    float32; ``0 log 0`` counts as 0.

    Examples:
        >>> float(entropy_from_probabilities(np.array([[1.0], [0.0]]), "softmax")[0])
        0.0
        >>> round(float(entropy_from_probabilities(np.array([[0.5]]), "sigmoid")[0]), 4)
        0.6931
    """
    p = np.asarray(probabilities, dtype=np.float32)

    def plogp(x: np.ndarray) -> np.ndarray:
        return np.where(x > 0, x * np.log(np.maximum(x, np.float32(1e-30))), np.float32(0))

    terms = plogp(p) if activation == "softmax" else plogp(p) + plogp(1 - p)
    return np.asarray(np.maximum(-terms.sum(axis=0), 0), dtype=np.float32)  # no -0.0


def max_entropy(n_outputs: int, activation: Activation) -> float:
    """The largest entropy the outputs can have: ``log K`` for ``K`` softmax classes, ``R log 2``
    for ``R`` sigmoid regions.

    Examples:
        >>> round(max_entropy(3, "softmax"), 4), round(max_entropy(3, "sigmoid"), 4)
        (1.0986, 2.0794)
    """
    return math.log(n_outputs) if activation == "softmax" else n_outputs * math.log(2)


def mutual_information(predictive: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """``predictive - expected`` clipped at 0 (see the module docstring), float32."""
    return np.maximum(np.asarray(predictive, np.float32) - np.asarray(expected, np.float32), 0.0)


@dataclass(frozen=True)
class UncertaintyMaps:
    """A case's two maps, float32 on one grid (nats).

    Attributes:
        entropy: predictive entropy of the final probabilities.
        mutual_information: its part due to the members disagreeing.
    """

    entropy: np.ndarray
    mutual_information: np.ndarray


@dataclass(frozen=True)
class CaseUncertainty:
    """One row of ``uncertainty.csv``.

    Attributes:
        case: the case id.
        foreground_ml: predicted foreground volume (any nonzero label), millilitres.
        mean_entropy_foreground: mean predictive entropy inside the predicted foreground (nats;
            NaN without foreground).
        mean_mutual_information_foreground: the same for the mutual information.
        uncertain_ml: volume of voxels whose predictive entropy exceeds
            :data:`UNCERTAIN_SHARE` of the maximum, anywhere in the scan, millilitres.
    """

    case: str
    foreground_ml: float
    mean_entropy_foreground: float
    mean_mutual_information_foreground: float
    uncertain_ml: float


def summarize(
    case: str,
    entropy: np.ndarray,
    mutual_info: np.ndarray,
    labels: np.ndarray,
    spacing_mm: tuple[float, ...],
    *,
    max_entropy_nats: float,
) -> CaseUncertainty:
    """The per-case row from the maps and the label map, all on one grid.

    Examples:
        >>> h = np.array([[0.1, 0.9], [0.2, 0.0]], np.float32)
        >>> row = summarize("c", h, h / 2, np.array([[1, 1], [0, 0]]), (10.0, 10.0), max_entropy_nats=1.0)
        >>> row.foreground_ml, round(row.mean_entropy_foreground, 3), row.uncertain_ml
        (0.2, 0.5, 0.1)
    """
    if not (entropy.shape == mutual_info.shape == labels.shape):
        msg = f"case {case}: maps {entropy.shape}, {mutual_info.shape} and labels {labels.shape} differ"
        raise ValueError(msg)
    voxel_ml = float(np.prod(spacing_mm)) / 1000.0
    fg = labels != 0
    n_fg = int(fg.sum())
    mean_h = float(entropy[fg].mean(dtype=np.float64)) if n_fg else math.nan
    mean_mi = float(mutual_info[fg].mean(dtype=np.float64)) if n_fg else math.nan
    uncertain = int((entropy > UNCERTAIN_SHARE * max_entropy_nats).sum())
    return CaseUncertainty(case, n_fg * voxel_ml, mean_h, mean_mi, uncertain * voxel_ml)


def write_uncertainty_csv(rows: list[CaseUncertainty], path: Path) -> None:
    """Write (or extend) ``uncertainty.csv`` atomically: rows of earlier runs for other cases are
    kept, a case's new row replaces its old one; least certain first (highest mean foreground
    mutual information, then entropy; cases without foreground last), NaN as an empty cell."""
    kept: dict[str, CaseUncertainty] = {}
    if path.is_file():
        with open(path, newline="") as f:
            for rec in csv.DictReader(f):
                try:
                    kept[rec["case"]] = CaseUncertainty(
                        rec["case"], *(float(rec[f.name] or "nan") for f in fields(CaseUncertainty)[1:])
                    )
                except (KeyError, ValueError):  # another file's layout: rewrite it from this run
                    kept = {}
                    break
    kept.update({r.case: r for r in rows})

    def least_certain_first(r: CaseUncertainty) -> tuple[bool, float, float, str]:
        mi, h = r.mean_mutual_information_foreground, r.mean_entropy_foreground
        if math.isnan(h):
            return (True, 0.0, 0.0, r.case)
        return (False, -(0.0 if math.isnan(mi) else mi), -h, r.case)

    ordered = sorted(kept.values(), key=least_certain_first)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([f.name for f in fields(CaseUncertainty)])
    for r in ordered:
        writer.writerow([r.case, *("" if math.isnan(v) else f"{v:.6g}" for v in astuple(r)[1:])])

    def write(tmp: Path) -> None:
        tmp.write_text(buf.getvalue())

    write_atomic(path, write)
