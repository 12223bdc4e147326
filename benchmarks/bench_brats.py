"""The brain-tumour case on CPU: BraTS regions (whole tumour, tumour core, enhancing tumour).

Builds the regions dataset from ``../shared/data/brats2015_sample`` (6 cases, FLAIR + T1c; labels
0-4 declared as the three BraTS regions, :func:`autoseg.io.samples.make_brats_regions_dataset`,
scans linked, never copied), plans it, trains one configuration on fold 0 of 5 (4 training
cases, 2 validation cases) with the given budget, predicts the 2 validation cases from their raw
scans with ``autoseg predict`` and scores them per region with ``autoseg evaluate
--dataset-json``. Six cases are far too few to judge accuracy: this shows the regions path
working end to end on real multi-modal tumour data, with its numbers and times.

    .venv/bin/python benchmarks/bench_brats.py [--config 2d] [--epochs 10] [--iters 30] [--batch-size 12]

Needs ../shared (BraTS is licensed for non-commercial use and never shipped). Run on an
otherwise idle machine. Appends the run to benchmarks/results/brats_regions_cpu.json and
rewrites benchmarks/results/brats_regions_cpu.md from every kept run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import AUTOSEG, HERE, SHARED, run_measured, write_result

from autoseg.io.samples import make_brats_regions_dataset

BRATS = SHARED / "data" / "brats2015_sample"
RUNS = HERE / "results" / "brats_regions_cpu.json"


def run(args: argparse.Namespace, root: Path) -> dict[str, object]:
    """Plan, train fold ``args.fold``, predict and evaluate its validation cases."""
    ds = make_brats_regions_dataset(BRATS, root / "brats")
    work = root / "work"
    common = ["--work-dir", str(work), "-q"]
    seconds: dict[str, float] = {}
    seconds["plan"] = run_measured([AUTOSEG, "plan", str(ds), *common]).wall_s
    budget = ["--epochs", str(args.epochs), "--iters-per-epoch", str(args.iters), "--seed", str(args.seed)]
    if args.batch_size:
        budget += ["--batch-size", str(args.batch_size)]
    train = [AUTOSEG, "train", "brats", args.config, str(args.fold), *budget, "--device", "cpu", *common]
    trained = run_measured(train)
    seconds["train"] = trained.wall_s
    splits = json.loads((work / "brats" / "splits.json").read_text())
    val = sorted(splits[args.fold]["val"])
    scans, refs = root / "scans", root / "refs"
    scans.mkdir()
    refs.mkdir()
    for case in val:
        for image in sorted((ds / "imagesTr").glob(f"{case}_*.nii.gz")):
            (scans / image.name).symlink_to(image.resolve())
        (refs / f"{case}.nii.gz").symlink_to((ds / "labelsTr" / f"{case}.nii.gz").resolve())
    out = root / "out"
    predict = [AUTOSEG, "predict", "-i", str(scans), "-o", str(out), "-d", "brats", "-c", args.config]
    predict += ["-f", str(args.fold), "--device", "cpu", *([] if args.tta else ["--no-tta"])]
    predicted = run_measured([*predict, *common])
    seconds["predict"] = predicted.wall_s
    report = root / "eval.json"
    evaluate = [AUTOSEG, "evaluate", "--pred", str(out), "--ref", str(refs), "-o", str(report), "-q"]
    seconds["evaluate"] = run_measured([*evaluate, "--dataset-json", str(ds / "dataset.json")]).wall_s
    scored = json.loads(report.read_text())
    fold_dir = work / "brats" / "models" / args.config / f"fold_{args.fold}"
    progress = [json.loads(line) for line in (fold_dir / "progress.jsonl").read_text().splitlines() if line]
    plan = json.loads((work / "brats" / "plans.json").read_text())["configurations"][args.config]
    return {
        "date": datetime.date.today().isoformat(),
        "settings": vars(args) | {"plan_batch_size": plan["batch_size"], "patch_size": plan["patch_size"]},
        "validation_cases": val,
        "seconds": seconds,
        "peak_mib": {"train": trained.peak_mib, "predict": predicted.peak_mib},
        "s_per_iteration": sorted(p["seconds"] for p in progress)[len(progress) // 2] / args.iters,
        "pseudo_dice": [round(p["pseudo_dice_mean"], 4) for p in progress if "pseudo_dice_mean" in p],
        "dice": {name: v["dice"] for name, v in scored["per_label"].items()},
        "dice_per_case": {
            c["case"]: {name: m["dice"] for name, m in c["metrics"].items()} for c in scored["per_case"]
        },
    }


def table(runs: list[dict]) -> str:
    """The markdown table of every kept run."""
    head = (
        "## BraTS 2015 sample, three regions, on CPU (2 cores): fold 0 (4 training, 2 validation cases)\n\n"
        "Every run of `benchmarks/bench_brats.py` (kept in brats_regions_cpu.json). Dice is of "
        "`autoseg predict` (TTA as the budget column says) of the 2 validation cases, scored per region by "
        "`autoseg evaluate --dataset-json`; 6 cases are too few to judge accuracy.\n\n"
        "| date | config | budget (epochs x its, batch) | s / it | train min | predict s/case | "
        "whole tumour | tumour core | enhancing tumour | mean |\n"
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    for r in runs:
        s, d = r["settings"], r["dice"]
        batch = s["batch_size"] or s["plan_batch_size"]
        values = [d.get(n) for n in ("whole tumour", "tumour core", "enhancing tumour")]
        known = [v for v in values if v is not None]
        cells = [
            r["date"],
            s["config"],
            f"{s['epochs']} x {s['iters']}, {batch}{'' if s.get('tta', True) else ', no TTA'}",
            f"{r['s_per_iteration']:.2f}",
            f"{r['seconds']['train'] / 60:.1f}",
            f"{r['seconds']['predict'] / len(r['validation_cases']):.1f}",
            *("n/a" if v is None else f"{v:.4f}" for v in values),
            f"{sum(known) / len(known):.4f}" if known else "n/a",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="2d", help="configuration to train (default 2d)")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--iters", type=int, default=30, help="iterations per epoch")
    ap.add_argument("--batch-size", type=int, default=12, help="0: the plan's")
    ap.add_argument("--seed", type=int, default=12345)
    ap.add_argument("--no-tta", dest="tta", action="store_false", help="predict without mirroring")
    ap.add_argument("--table", action="store_true", help="only rewrite the table from the kept runs")
    args = ap.parse_args()
    runs = json.loads(RUNS.read_text()) if RUNS.is_file() else []
    if not args.table:
        if not (BRATS / "dataset.json").is_file():
            sys.exit(f"{BRATS}: not found (BraTS is never shipped; this benchmark needs ../shared)")
        root = Path(tempfile.mkdtemp(prefix="bench_brats_"))
        try:
            runs.append(run(args, root))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        RUNS.write_text(json.dumps(runs, indent=1) + "\n")
    write_result("brats_regions_cpu.md", table(runs))


if __name__ == "__main__":
    main()
