"""Compare autoseg's DICOM reader with SimpleITK's own series reader on every series of
../shared/data (slice order, array, spacing, origin, direction) and print a table.

    .venv/bin/python benchmarks/check_dicom_series.py [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from autoseg.io.dicom import read_dicom_series
from autoseg.io.image import Geometry

SERIES = [
    "dicom_mr/Study1/13_HCropVolume",
    "dicom_mr/Study2/14_HCropVolume",
    "dicom_mr/Study3/11_HCropVolume",
    "dicom_mr/Study3/11-T1post-18670",
    "dicom_mr/Study3/37830-T2reg-78532",
    "ct_sample/example_ct_dicom",
]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    args = ap.parse_args()
    print("| series | shape (z,y,x) | spacing | array equal | max geometry diff | ours s | SimpleITK s |")
    print("|---|---|---|---|---|---|---|")
    bad = 0
    for rel in SERIES:
        folder = args.data / rel
        if not folder.is_dir():
            print(f"| {rel} | missing | | | | | |")
            bad += 1
            continue
        t0 = time.perf_counter()
        ours = read_dicom_series(folder)
        t1 = time.perf_counter()
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
        ref = reader.Execute()
        t2 = time.perf_counter()
        g = Geometry.from_sitk(ref)
        equal = np.array_equal(ours.array, sitk.GetArrayFromImage(ref))
        diff = max(
            np.abs(np.subtract(a, b)).max()
            for a, b in (
                (ours.geometry.spacing, g.spacing),
                (ours.geometry.origin, g.origin),
                (ours.geometry.direction, g.direction),
            )
        )
        bad += (not equal) or diff > 1e-4
        sp = "x".join(f"{s:.4g}" for s in ours.spacing)
        print(f"| {rel} | {ours.array.shape} | {sp} | {equal} | {diff:.1e} | {t1 - t0:.3f} | {t2 - t1:.3f} |")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
