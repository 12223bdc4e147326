"""Extract the fingerprint: one pass over the cases that also checks every file.

Reading a case is the expensive part, so ``autoseg plan`` reads each case once: the same read
checks the files (:func:`autoseg.io.case.load_case`) and measures them. If any case has a problem,
all problems are reported together and nothing is written.
"""

from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass

import numpy as np

from autoseg._parallel import Outcome, map_cases, values_or_raise
from autoseg.fingerprint.crop import nonzero_bbox
from autoseg.fingerprint.model import CaseFingerprint, Fingerprint, IntensityStats
from autoseg.io.case import load_case
from autoseg.io.dataset import Case, Dataset

log = logging.getLogger(__name__)

#: Foreground intensity samples drawn over the whole dataset, split evenly over the cases.
SAMPLES_TOTAL = 2_000_000
SAMPLES_MIN_PER_CASE = 2_000


@dataclass
class CaseResult:
    """One case read and measured: its fingerprint, foreground samples per channel, warnings."""

    fingerprint: CaseFingerprint
    samples: list[np.ndarray]
    warnings: list[str]


def _case_seed(case_id: str) -> int:
    """A seed per case that does not depend on case order or worker: runs are repeatable."""
    return zlib.crc32(case_id.encode()) ^ 1234


def _fingerprint_case(args: tuple[Case, Dataset, int]) -> CaseResult:
    """Read, check and measure one case (raises :class:`DatasetError` for a bad one)."""
    case, dataset, n_samples = args
    loaded = load_case(case, dataset)
    data, label = loaded.data, loaded.label
    bbox = nonzero_bbox(data)
    values = dataset.label_values
    samples: list[np.ndarray] = []
    counts = [0] * len(values)
    if label is not None:
        bc = np.bincount(label.ravel())  # up to the largest value present, not declared
        counts = [int(bc[v]) if v < bc.size else 0 for v in values]
        fg = label > 0
        if (ignore := dataset.label_scheme.ignore) is not None:  # unannotated: not foreground
            fg &= label != ignore
        n_fg = int(fg.sum())
        rng = np.random.default_rng(_case_seed(case.case_id))
        idx = rng.choice(n_fg, n_samples, replace=n_fg < n_samples) if n_fg else None
        for c in range(data.shape[0]):
            chan = data[c][fg]
            samples.append(chan[idx] if idx is not None else chan)
    fp = CaseFingerprint(
        case_id=case.case_id,
        spacing=loaded.geometry.spacing,
        shape=tuple(int(s) for s in data.shape[1:]),
        shape_after_crop=tuple(hi - lo for lo, hi in bbox),
        bbox=bbox,
        label_voxels=tuple(counts),
    )
    return CaseResult(fp, samples, loaded.warnings)


def fingerprint_cases(dataset: Dataset, *, workers: int) -> list[Outcome[CaseResult]]:
    """Read and measure every case; each case's problems are its outcome's error, not raised."""
    n = max(SAMPLES_MIN_PER_CASE, SAMPLES_TOTAL // len(dataset.cases))
    jobs = [(c, dataset, n) for c in dataset.cases]
    return map_cases(_fingerprint_case, jobs, workers=workers, desc="Reading cases")


def extract_fingerprint(dataset: Dataset, *, workers: int = 1) -> Fingerprint:
    """Fingerprint a dataset, checking every case on the way.

    Per case: spacing, shape, shape after crop-to-nonzero, label voxel counts. Per channel:
    foreground (label > 0) intensity statistics from a seeded sample of an equal number of
    voxels per case, so that every case weighs the same and the result is deterministic.

    Args:
        dataset: from :func:`autoseg.io.dataset.load_dataset`.
        workers: processes to read cases with.

    Raises:
        DatasetError: listing every problem in every case.
    """
    outcomes = fingerprint_cases(dataset, workers=workers)
    for o in outcomes:
        for w in o.value.warnings if o.value is not None else ():
            log.warning(w)
    results = values_or_raise(outcomes)
    cases = tuple(r.fingerprint for r in results)
    stats = []
    for c in range(dataset.num_channels):
        pooled = [r.samples[c] for r in results if r.samples]
        stats.append(IntensityStats.of(np.concatenate(pooled) if pooled else np.zeros(0)))
    rel = float(np.median([c.relative_size_after_crop for c in cases]))
    return Fingerprint(
        dataset_name=dataset.name,
        channel_names=dataset.channel_names,
        labels=dict(dataset.labels),
        regions_class_order=dataset.regions_class_order,
        cases=cases,
        foreground_intensity=tuple(stats),
        median_relative_size_after_crop=rel,
    )
