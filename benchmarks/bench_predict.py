"""CPU prediction on the fold-0 validation cases of hippocampus: autoseg vs nnU-Net v2.

Needs a work folder holding an autoseg model trained on hippocampus fold 0 (bench_train.py
leaves one with --keep, or train one), e.g.:

    .venv/bin/python benchmarks/bench_predict.py --work /tmp/keep_work [--nnunet]

autoseg: `autoseg predict` over the 40 fold-0 validation cases, with and without mirror TTA, in
the configured precision(s); whole-command wall time, seconds per case, peak memory, Dice.
nnU-Net (--nnunet, needs benchmarks/setup_peer.sh): the same network size (its own plan for the
same data, trained for one iteration: prediction speed does not depend on the weights) run by
`nnUNetv2_predict -f 0 -device cpu` with and without `--disable_tta`; its Dice at the equal
training budget comes from ../shared/reference/nnunet_cpu_run (fold 0, same cases, TTA on).
Prints a table and writes benchmarks/results/predict_hippocampus_cpu.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import AUTOSEG, HERE, SHARED, run_measured, write_result

log = logging.getLogger("bench")


def _dice(pred: Path, ref: Path, out: Path) -> float:
    from autoseg.evaluation.evaluate import evaluate_folders

    return evaluate_folders(pred, ref, out / "eval.json", labels=[1, 2])["mean"]["dice"]


def _startup_seconds(work: Path, one_case: Path, tmp: Path) -> float:
    """Whole `autoseg predict` of one case without TTA: start-up (imports, model load) dominates."""
    t0 = time.perf_counter()
    subprocess.run(
        [
            AUTOSEG,
            "predict",
            "-i",
            str(one_case),
            "-o",
            str(tmp / "startup"),
            "--work-dir",
            str(work),
            "-d",
            "hippocampus",
            "-c",
            "3d_fullres",
            "-f",
            "0",
            "--device",
            "cpu",
            "--no-tta",
            "-q",
        ],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - t0


def autoseg_rows(work: Path, cases: list[str], tmp: Path, variants: list[str]) -> list[dict[str, object]]:
    """``variants``: torch precisions (auto, fp32, bf16) and/or ``onnx`` (onnxruntime, fp32)."""
    inp, ref = tmp / "in", tmp / "ref"
    if "onnx" in variants:
        subprocess.run(
            [AUTOSEG, "export", "hippocampus", "3d_fullres", "-f", "0", "--work-dir", str(work), "-q"],
            check=True,
        )
    rows = []
    for variant in variants:
        backend, prec = ("onnx", "fp32") if variant == "onnx" else ("torch", variant)
        for tta in (True, False):
            out = tmp / f"out_{variant}_{tta}"
            cmd = [
                AUTOSEG,
                "predict",
                "-i",
                str(inp),
                "-o",
                str(out),
                "--work-dir",
                str(work),
                "-d",
                "hippocampus",
                "-c",
                "3d_fullres",
                "-f",
                "0",
                "--device",
                "cpu",
                "--precision",
                prec,
                "--backend",
                backend,
                "-q",
            ] + ([] if tta else ["--no-tta"])
            r = run_measured(cmd, env=dict(os.environ, OMP_NUM_THREADS="2"))
            rows.append(
                {
                    "tool": f"autoseg {backend} ({prec})",
                    "tta": tta,
                    "wall_s": r.wall_s,
                    "s_per_case": r.wall_s / len(cases),
                    "peak_mib": r.peak_mib,
                    "dice": _dice(out, ref, out),
                }
            )
    return rows


_TRAINER = """
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_oneIter(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = 1
        self.num_iterations_per_epoch = 1
        self.num_val_iterations_per_epoch = 1

    def perform_actual_validation(self, save_probabilities=False):
        pass  # a 1-iteration model: its validation is not what is measured
"""


def nnunet_rows(data: Path, cases: list[str], tmp: Path) -> list[dict[str, object]]:
    venv = HERE / ".peer-venv"
    b = venv / "bin"
    site = next((venv / "lib").glob("python3*/site-packages/nnunetv2/training/nnUNetTrainer"))
    (site / "nnUNetTrainer_oneIter.py").write_text(_TRAINER)
    nn = tmp / "nnunet"
    env = dict(
        os.environ,
        nnUNet_raw=str(nn / "raw"),
        nnUNet_preprocessed=str(nn / "pre"),
        nnUNet_results=str(nn / "res"),
        nnUNet_compile="f",
        nnUNet_n_proc_DA="2",
    )
    msd = nn / "Task04_Hippocampus"
    msd.mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr"):
        (msd / sub).symlink_to(data / sub)
    (msd / "imagesTs").mkdir()
    shutil.copy(data / "dataset.json", msd / "dataset.json")
    subprocess.run(
        [str(b / "nnUNetv2_convert_MSD_dataset"), "-i", str(msd), "-overwrite_id", "4"],
        env=env,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [str(b / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres", "-np", "2"],
        env=env,
        check=True,
        capture_output=True,
    )
    (nn / "pre" / "Dataset004_Hippocampus" / "splits_final.json").write_text(
        (SHARED / "reference" / "nnunet_cpu_run" / "splits_final.json").read_text()
    )
    subprocess.run(
        [str(b / "nnUNetv2_train"), "4", "3d_fullres", "0", "-tr", "nnUNetTrainer_oneIter", "-device", "cpu"],
        env=env,
        check=True,
        capture_output=True,
    )
    inp = nn / "in"
    inp.mkdir()
    for c in cases:
        shutil.copy(data / "imagesTr" / f"{c}.nii.gz", inp / f"{c}_0000.nii.gz")
    ref_summary = json.loads(
        (SHARED / "reference" / "nnunet_cpu_run" / "fold0_validation_summary.json").read_text()
    )
    rows = []
    for tta in (True, False):
        out = nn / f"out_{tta}"
        cmd = [
            str(b / "nnUNetv2_predict"),
            "-i",
            str(inp),
            "-o",
            str(out),
            "-d",
            "4",
            "-c",
            "3d_fullres",
            "-f",
            "0",
            "-tr",
            "nnUNetTrainer_oneIter",
            "-device",
            "cpu",
            "-chk",
            "checkpoint_final.pth",
        ] + ([] if tta else ["--disable_tta"])
        r = run_measured(cmd, env=env)
        rows.append(
            {
                "tool": "nnU-Net v2.8.1",
                "tta": tta,
                "wall_s": r.wall_s,
                "s_per_case": r.wall_s / len(cases),
                "peak_mib": r.peak_mib,
                "dice": ref_summary["foreground_mean"]["Dice"] if tta else float("nan"),
            }
        )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="autoseg work folder with the model")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "hippocampus")
    ap.add_argument(
        "--variants",
        nargs="*",
        default=["auto", "fp32", "onnx"],
        help="torch precisions (auto, fp32, bf16) and/or onnx",
    )
    ap.add_argument("--nnunet", action="store_true", help="also time nnUNetv2_predict")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    splits = json.loads((args.work / "hippocampus" / "splits.json").read_text())
    cases = splits[0]["val"]
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        (tmp / "in").mkdir()
        (tmp / "ref").mkdir()
        for c in cases:
            shutil.copy(args.data / "imagesTr" / f"{c}.nii.gz", tmp / "in")
            shutil.copy(args.data / "labelsTr" / f"{c}.nii.gz", tmp / "ref")
        rows += autoseg_rows(args.work, cases, tmp, args.variants)
        start = _startup_seconds(args.work, tmp / "in" / f"{cases[0]}.nii.gz", tmp)
        if args.nnunet:
            try:
                rows += nnunet_rows(args.data.resolve(), cases, tmp)
            except (subprocess.CalledProcessError, RuntimeError) as e:
                log.error("nnU-Net side failed: %s\n%s", e, getattr(e, "stderr", "")[-3000:])
    lines = [
        f"## predict: {len(cases)} hippocampus fold-0 validation cases, CPU ({os.cpu_count()} "
        "cores), one fold, whole command",
        "",
        "| tool | TTA | wall s | s / case | peak RSS MiB | Dice (fg mean) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tool']} | {'on' if r['tta'] else 'off'} | {r['wall_s']:.1f} | "
            f"{r['s_per_case']:.2f} | {r['peak_mib']:.0f} | {r['dice']:.4f} |"
        )
    lines += [
        "",
        f"CLI start-up: `autoseg predict` of one case without TTA takes {start:.2f} s "
        "in all (interpreter, imports, model load, one case)",
        "nnU-Net Dice: its fold-0 validation at the equal training budget "
        "(../shared/reference/nnunet_cpu_run); its timing model is trained for 1 iteration "
        "(same network size).",
    ]
    write_result("predict_hippocampus_cpu.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
