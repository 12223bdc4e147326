"""Pictures a person can check at a glance: one slice per case, the scan in grey with the
reference (green) and predicted (red) outlines."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from autoseg._atomic import write_atomic
from autoseg.evaluation.metrics import as_labels
from autoseg.io.align import read_onto
from autoseg.io.image import Image, read_image, strip_ending


def _best_slice(ref: np.ndarray, pred: np.ndarray) -> int:
    """The axial (axis 0) slice with the most reference foreground, else most predicted."""
    counts = (ref > 0).sum(axis=(1, 2))
    if counts.max() == 0:
        counts = (pred > 0).sum(axis=(1, 2))
    return int(np.argmax(counts))


def save_overlay(image: Image, ref: np.ndarray, pred: np.ndarray, path: Path, *, title: str = "") -> Path:
    """Write a PNG of the most informative slice with both outlines (per label, thin contours)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    z = _best_slice(ref, pred)
    sl = image.array[z].astype(np.float32)
    lo, hi = np.percentile(sl, [0.5, 99.5])
    sy, sx = image.spacing[1], image.spacing[2]
    fig = Figure(figsize=(4.5, 4.5 * sl.shape[0] * sy / max(sl.shape[1] * sx, 1e-6) + 0.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi, aspect=sy / sx, interpolation="nearest")
    for lab in sorted(set(np.unique(ref[z])) | set(np.unique(pred[z])) - {0}):
        if lab == 0:
            continue
        for arr, color in ((ref[z], "lime"), (pred[z], "red")):
            mask = (arr == lab).astype(float)
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=color, linewidths=1.0)
    ax.set_title(f"{title}  slice {z}  (green: reference, red: prediction)", fontsize=8)
    ax.set_axis_off()
    fig.tight_layout()
    return write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=110))


def save_overlays(images_dir: Path, ref_dir: Path, pred_dir: Path, out_dir: Path) -> list[Path]:
    """One overlay PNG per predicted case that has a scan (``CASE.nii.gz`` or ``CASE_0000``)
    and a reference in the given folders.

    Prediction and reference are drawn on the scan's grid (stored flipped or with permuted axes,
    they are reoriented exactly first).

    Raises:
        DatasetError: a prediction or reference does not lie on its scan's grid.
    """
    written = []
    for pred_path in sorted(pred_dir.glob("*.nii.gz")):
        cid = strip_ending(pred_path.name)
        pattern = glob.escape(cid)  # a case named "a[1]" must not pick the scan of "a1"
        scans = sorted(images_dir.glob(f"{pattern}.*")) or sorted(images_dir.glob(f"{pattern}_0000.*"))
        refs = sorted(ref_dir.glob(f"{pattern}.*"))
        if not scans or not refs:
            continue
        scan = read_image(scans[0])
        pred, ref = (
            as_labels(read_onto(p, scan.geometry, scan.array.shape, grid_of=str(scans[0])), source=p)
            for p in (pred_path, refs[0])
        )
        written.append(save_overlay(scan, ref, pred, out_dir / f"{cid}.png", title=cid))
    return written
