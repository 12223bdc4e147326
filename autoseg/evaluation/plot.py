"""Box plots of per-case scores, one box per label, the cases drawn as points on top; FROC curves
of lesion detection.

Drawn on a bare :class:`matplotlib.figure.Figure` (Agg, no pyplot), so it needs no display and
leaves matplotlib's global state alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from autoseg._atomic import write_atomic

_TITLES = {"dice": "Dice", "nsd": "NSD", "iou": "IoU", "hd95_mm": "HD95 (mm)"}


def save_boxplot(
    per_case: list[dict[str, Any]],
    path: Path,
    *,
    metrics: Sequence[str] = ("dice", "nsd"),
    tolerance_mm: float | None = None,
) -> Path:
    """Save one panel per metric: a box per label over the cases, each case a point.

    Args:
        per_case: ``[{"case": id, "metrics": {label: {metric: value}}}, ...]``, as in the
            ``per_case`` list of :func:`autoseg.evaluation.evaluate.evaluate_folders`; NaN
            values (a label absent from both maps) are left out.
        path: PNG to write (atomically: a temporary file, then a rename).
        metrics: metric names to draw, one panel each.
        tolerance_mm: the NSD tolerance, shown in the NSD panel's title when given.

    Returns:
        ``path``.
    """
    path = Path(path)
    labels = list(per_case[0]["metrics"]) if per_case else []
    fig = Figure(figsize=(max(6.5, 1.2 * len(labels) + 2.0), 3.6 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), 1, squeeze=False)[:, 0]
    rng = np.random.default_rng(0)  # jitter of the points only; fixed so reruns draw the same
    for ax, metric in zip(axes, metrics, strict=True):
        values = [[v for c in per_case if not math.isnan(v := c["metrics"][lab][metric])] for lab in labels]
        means = [float(np.mean(v)) if v else math.nan for v in values]
        ax.boxplot(values, showfliers=False, widths=0.5)
        for i, v in enumerate(values, start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=14, alpha=0.7, zorder=3)
        ax.set_xticks(
            range(1, len(labels) + 1),
            [
                f"label {lab}\nmean {m:.3f} (n={len(v)})"
                for lab, m, v in zip(labels, means, values, strict=True)
            ],
        )
        valid = [m for m in means if not math.isnan(m)]
        overall = f"{np.mean(valid):.3f}" if valid else "n/a"
        name = _TITLES.get(metric, metric)
        if metric == "nsd" and tolerance_mm is not None:
            name = f"NSD at {tolerance_mm:g} mm"
        ax.set_title(f"{name}: mean over labels {overall} ({len(per_case)} cases)")
        ax.set_ylabel(name)
        ax.grid(axis="y", alpha=0.3)
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def save_froc(per_label: dict[str, dict[str, Any]], path: Path) -> Path:
    """Save the FROC curve of each label: sensitivity against false positives per case (log
    scale), LUNA16's seven rates marked, the CPM in the legend.

    Args:
        per_label: ``{label: {"froc": {...}}}`` as the ``"lesions"`` ``"per_label"`` of
            :func:`autoseg.evaluation.evaluate.evaluate_folders` (see
            :meth:`autoseg.evaluation.lesions.Froc.to_dict`); labels without reference
            lesions (NaN sensitivities) are listed but not drawn.
        path: PNG to write (atomically).

    Returns:
        ``path``.
    """
    path = Path(path)
    fig = Figure(figsize=(6.5, 4.5), layout="constrained")
    ax = fig.subplots()
    rates: list[float] = []
    for label, entry in per_label.items():
        f = entry["froc"]
        rates = f["fp_rates"]
        if math.isnan(f["cpm"]):
            ax.plot([], [], label=f"label {label}: no reference lesion")
            continue
        fps, sens = f["curve"]["fp_per_case"], f["curve"]["sensitivity"]
        # the step function the seven values are read from; drawn on to the last rate
        xs = [max(x, rates[0] / 2) for x in fps] + [max(rates[-1], fps[-1])]
        (line,) = ax.step(xs, [*sens, sens[-1]], where="post", label=f"label {label}: CPM {f['cpm']:.3f}")
        ax.plot(rates, f["sensitivity"], "o", color=line.get_color())
    ax.set_xscale("log", base=2)
    if rates:
        ax.set_xlim(rates[0] / 2, rates[-1] * 1.5)
        ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per case")
    ax.set_ylabel("lesion sensitivity")
    ax.set_title("FROC")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    return write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
