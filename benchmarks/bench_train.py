"""CPU training at equal budget: autoseg vs nnU-Net v2 on hippocampus, 3d_fullres, fold 0.

Budget (the one of ../shared/reference/nnunet_cpu_run): 8 epochs x 45 iterations of batch 7
(patch 40x56x40, the same plan for both), 5 validation iterations per epoch, then the full
sliding-window validation of the 40 fold-0 cases with mirroring. Both use nnU-Net's fold 0
(autoseg's splits are identical to sklearn KFold(5, shuffle, 12345); checked here).

    .venv/bin/python benchmarks/bench_train.py            # autoseg; nnU-Net from the reference run
    .venv/bin/python benchmarks/bench_train.py --nnunet        # also re-run nnU-Net (about 45 min)

Prints a markdown table and writes benchmarks/results/train_hippocampus_cpu.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
REFERENCE = SHARED / "reference" / "nnunet_cpu_run"
log = logging.getLogger("bench_train")


def _run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    log.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def run_autoseg(data: Path, work: Path, args: argparse.Namespace) -> dict[str, object]:
    exe = str(ROOT / ".venv" / "bin" / "autoseg")
    _run([exe, "plan", str(data), "--work-dir", str(work), "-q"])
    ds_dir = work / data.name
    ref_splits = json.loads((REFERENCE / "splits_final.json").read_text())
    from autoseg.data.splits import make_splits
    from autoseg.io.dataset import load_dataset

    splits = make_splits([c.case_id for c in load_dataset(data).cases])
    same = all(sorted(r["val"]) == s["val"] for r, s in zip(ref_splits, splits, strict=True))
    wall = _run([exe, "train", data.name, "3d_fullres", "0", "--work-dir", str(work),
                 "--device", "cpu", "--epochs", str(args.epochs), "--iters-per-epoch",
                 str(args.iters), "--val-iters", str(args.val_iters), "--workers", str(args.workers),
                 "--precision", args.precision, "--seed", str(args.seed)])
    fold = ds_dir / "models" / "3d_fullres" / "fold_0"
    recs = [json.loads(line) for line in (fold / "progress.jsonl").read_text().splitlines()]
    epoch_s = [r["seconds"] for r in recs]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    log_text = (fold / "log.txt").read_text()
    return {
        "tool": f"autoseg ({args.precision}, seed {args.seed})", "splits_equal_nnunet": same,
        "s_per_iter": statistics.median(epoch_s) / args.iters,
        "epoch_s": f"{min(epoch_s):.0f}-{max(epoch_s):.0f}", "total_min": wall / 60,
        "dice": [summary["mean"]["1"], summary["mean"]["2"]],
        "dice_mean": summary["foreground_mean"], "log_tail": log_text.splitlines()[-1],
    }


def reference_nnunet() -> dict[str, object]:
    s = json.loads((REFERENCE / "fold0_validation_summary.json").read_text())
    return {"tool": "nnU-Net v2.8.1 (reference run)", "s_per_iter": 7.0, "epoch_s": "302-334",
            "total_min": 44.4, "dice": [s["mean"]["1"]["Dice"], s["mean"]["2"]["Dice"]],
            "dice_mean": s["foreground_mean"]["Dice"]}


_NNUNET_TRAINER = '''
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_benchCPU(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = {epochs}
        self.num_iterations_per_epoch = {iters}
        self.num_val_iterations_per_epoch = {val}
'''


def run_nnunet(data: Path, work: Path, args: argparse.Namespace) -> dict[str, object]:
    venv = HERE / ".peer-venv"
    if not (venv / "bin" / "nnUNetv2_train").exists():
        sys.exit("run benchmarks/setup_peer.sh first")
    site = next((venv / "lib").glob("python3*/site-packages/nnunetv2/training/nnUNetTrainer"))
    (site / "nnUNetTrainer_benchCPU.py").write_text(_NNUNET_TRAINER.format(
        epochs=args.epochs, iters=args.iters, val=args.val_iters))
    env = dict(os.environ, nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "pre"),
               nnUNet_results=str(work / "res"), nnUNet_n_proc_DA=str(args.workers),
               nnUNet_compile="f")
    b = venv / "bin"
    msd = work / "Task04_Hippocampus"
    msd.mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr"):
        (msd / sub).symlink_to(data / sub)
    (msd / "imagesTs").mkdir()
    (msd / "dataset.json").write_text((data / "dataset.json").read_text())
    _run([str(b / "nnUNetv2_convert_MSD_dataset"), "-i", str(msd), "-overwrite_id", "4"], env)
    _run([str(b / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres", "-np", "2"], env)
    pre = work / "pre" / "Dataset004_Hippocampus"
    (pre / "splits_final.json").write_text((REFERENCE / "splits_final.json").read_text())
    wall = _run([str(b / "nnUNetv2_train"), "4", "3d_fullres", "0", "-tr",
                 "nnUNetTrainer_benchCPU", "-device", "cpu"], env)
    fold = next((work / "res").glob("Dataset004_Hippocampus/*/fold_0"))
    s = json.loads((fold / "validation" / "summary.json").read_text())
    return {"tool": "nnU-Net v2.8.1 (this run)", "s_per_iter": float("nan"), "epoch_s": "see log",
            "total_min": wall / 60, "dice": [s["mean"]["1"]["Dice"], s["mean"]["2"]["Dice"]],
            "dice_mean": s["foreground_mean"]["Dice"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "hippocampus")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--iters", type=int, default=45)
    ap.add_argument("--val-iters", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--seed", type=int, default=12345, help="autoseg's training seed")
    ap.add_argument("--nnunet", action="store_true", help="also re-run nnU-Net (about 45 min)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run_autoseg(args.data.resolve(), Path(tmp) / "autoseg", args))
        rows.append(run_nnunet(args.data.resolve(), Path(tmp) / "nnunet", args) if args.nnunet
                    else reference_nnunet())
    ours, ref = rows[0], rows[-1]
    lines = [
        f"## train: hippocampus 3d_fullres fold 0 on CPU ({os.cpu_count()} cores), "
        f"{args.epochs} x {args.iters} iterations of batch 7, {args.val_iters} val iters/epoch",
        "",
        "| tool | s / iteration | epoch s | total min (incl. final validation) | Dice anterior | "
        "Dice posterior | Dice mean |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        d = r["dice"]
        lines.append(f"| {r['tool']} | {r['s_per_iter']:.2f} | {r['epoch_s']} | "
                     f"{r['total_min']:.1f} | {d[0]:.4f} | {d[1]:.4f} | {r['dice_mean']:.4f} |")
    lines += ["", f"s/iteration ratio autoseg / nnU-Net: {ours['s_per_iter'] / ref['s_per_iter']:.2f} "
              "(target <= 0.8)", f"Dice mean difference: {ours['dice_mean'] - ref['dice_mean']:+.4f} "
              "(target >= 0)", f"autoseg folds equal nnU-Net's: {ours.get('splits_equal_nnunet')}"]
    text = "\n".join(lines) + "\n"
    print(text)
    out = HERE / "results" / "train_hippocampus_cpu.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
