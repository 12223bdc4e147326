"""A large, many-class volume on CPU: the case where nnU-Net spends its time and memory on the way
back to the input grid (../shared/reference/nnunet_large_ct.md: 201 s, 12.9 GiB peak).

Input: the CT of ../shared/data/ct_sample/example_ct.nii.gz resampled to 0.8 mm (458x379x420 =
72.9 M voxels). Model: a throwaway 42-class 3d_fullres network planned at 3 mm (patch
32x112x128, as nnU-Net's) and trained for 2 iterations on ct_sample (example_ct_sm +
example_seg). TTA off, as in the reference.

Measures `autoseg predict` (whole command: wall, peak RSS), then in-process the phases and the
label map without memory savings (all 42 channels resampled at once) to show the plane-by-plane export
gives the same labels.

    .venv/bin/python benchmarks/bench_large_ct.py
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import AUTOSEG, SHARED, run_measured, short_training, write_result

log = logging.getLogger("bench")


def make_input(src: Path, dest: Path, spacing: float = 0.8) -> tuple[int, ...]:
    img = sitk.ReadImage(str(src))
    size = [round(n * s / spacing) for n, s in zip(img.GetSize(), img.GetSpacing(), strict=True)]
    out = sitk.Resample(
        img,
        size,
        sitk.Transform(),
        sitk.sitkLinear,
        img.GetOrigin(),
        (spacing,) * 3,
        img.GetDirection(),
        -1024.0,
        sitk.sitkInt16,
    )
    sitk.WriteImage(out, str(dest), useCompression=True)
    return tuple(size)


def train_model(work: Path, tmp: Path) -> None:
    from autoseg.cli import main
    from autoseg.io.samples import DATA_DIR, make_single_case_dataset

    ct = DATA_DIR / "fixtures" / "ct_sample"
    ds = make_single_case_dataset(ct / "example_ct_sm.nii.gz", ct / "example_seg.nii.gz", tmp / "ct_sample")
    common = ["--work-dir", str(work), "-q"]
    assert main(["plan", str(ds), "--preprocess-workers", "1", *common]) == 0
    assert (
        main(
            [
                "train",
                "ct_sample",
                "3d_fullres",
                "all",
                *short_training(),
                "--device",
                "cpu",
                *common,
            ]
        )
        == 0
    )


def in_process(work: Path, big: Path) -> dict[str, float]:
    import torch

    from autoseg.inference.cohort import _dataset_for
    from autoseg.inference.model import load_model
    from autoseg.inference.predictor import Predictor
    from autoseg.inference.source_grid import logits_to_labels, resize_channels, to_source_grid
    from autoseg.io.case import load_case
    from autoseg.io.dataset import Case
    from autoseg.preprocessing.case import preprocess_arrays

    model = load_model(work / "ct_sample" / "models" / "3d_fullres", device="cpu")
    pred = Predictor([model], device=torch.device("cpu"), amp_dtype=None, tta=False)
    t = {}
    t0 = time.perf_counter()
    case = Case("big", (big,), None)
    loaded = load_case(case, _dataset_for(model.plan, big.parent, [case]), with_label=False)
    t["read"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pre = preprocess_arrays(
        loaded.data, None, loaded.geometry.spacing, model.plan, model.config, case_id="big"
    )
    t["preprocess"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits = pred._logits(model, torch.from_numpy(pre.data))
    t["sliding window"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    walked = logits_to_labels(logits, pre.properties, model.plan)
    t["export (one output plane of all classes at a time)"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    props = pre.properties
    dense = resize_channels(logits.float(), props.shape_after_crop, z_axis=props.z_axis)
    full = to_source_grid(dense.argmax(0).to(torch.uint8).numpy(), props, model.plan)
    del dense
    t["export without the memory savings (all 42 classes resized, then argmax)"] = time.perf_counter() - t0
    t["differing voxels (count)"] = float(np.count_nonzero(walked != full))
    t["differing voxels %"] = 100.0 * float(np.mean(walked != full))
    t["classes in output"] = float(len(np.unique(walked)))
    return t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "ct_sample")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        work = tmp / "work"
        train_model(work, tmp)
        (tmp / "in").mkdir()
        big = tmp / "in" / "big_ct.nii.gz"
        size = make_input(args.data / "example_ct.nii.gz", big)
        cmd = [
            AUTOSEG,
            "predict",
            "-i",
            str(big),
            "-o",
            str(tmp / "out"),
            "--work-dir",
            str(work),
            "-d",
            "ct_sample",
            "-c",
            "3d_fullres",
            "--no-tta",
            "--device",
            "cpu",
            "--precision",
            "fp32",
            "-q",
        ]
        env = dict(os.environ, OMP_NUM_THREADS="2")
        r = run_measured(cmd, env=env)
        cmd_u = [str(tmp / "out_uncertainty") if a == str(tmp / "out") else a for a in cmd]
        ru = run_measured([*cmd_u, "--save-uncertainty"], env=env)
        phases = in_process(work, big)
    ref_s, ref_gib = 201.0, 12.9
    gib = r.peak_mib / 1024
    lines = [
        f"## predict: one CT at 0.8 mm ({size[0]}x{size[1]}x{size[2]} = "
        f"{np.prod(size) / 1e6:.1f} M voxels), 42-class 3d_fullres (3 mm plan), TTA off, CPU",
        "",
        "| tool | wall s | peak RSS GiB |",
        "|---|---:|---:|",
        f"| nnU-Net v2.8.1 (reference, ../shared/reference/nnunet_large_ct.md) | {ref_s:.0f} | "
        f"{ref_gib:.1f} |",
        f"| autoseg predict (whole command) | {r.wall_s:.1f} | {gib:.2f} |",
        f"| autoseg predict --save-uncertainty | {ru.wall_s:.1f} | {ru.peak_mib / 1024:.2f} |",
        "",
        f"--save-uncertainty costs {100 * (ru.peak_mib / r.peak_mib - 1):+.0f} % peak memory "
        f"(limit +30 %) and {100 * (ru.wall_s / r.wall_s - 1):+.0f} % time.",
        "",
        f"time ratio {r.wall_s / ref_s:.3f} (target <= 0.2), memory ratio {gib / ref_gib:.3f} "
        "(target <= 0.33)",
        "",
        "in-process phases (s) and label-map check:",
        "",
    ]
    lines += [f"- {k}: {v:.2f}" for k, v in phases.items()]
    write_result("predict_large_ct_cpu.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
