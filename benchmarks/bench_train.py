"""CPU training at equal budget: autoseg vs nnU-Net v2 on hippocampus, 3d_fullres, fold 0.

Budget (the one of ../shared/reference/nnunet_cpu_run): 8 epochs x 45 iterations of batch 7
(patch 40x56x40, the same plan for both), 5 validation iterations per epoch, then the full
sliding-window validation of the 40 fold-0 cases with mirroring. Both use nnU-Net's fold 0
(autoseg's splits are identical to sklearn KFold(5, shuffle, 12345); checked here).

At 360 iterations a run's Dice depends on *when* it takes off: both tools predict only
background for the first one to three epochs, and the epoch at which the foreground appears
varies from run to run (nnU-Net does not seed its runs at all). One run per tool says little, so
every run is kept in ``results/train_hippocampus_cpu.json`` and the table compares the means.

    .venv/bin/python benchmarks/bench_train.py --seeds 12345 1   # two autoseg runs
    .venv/bin/python benchmarks/bench_train.py --nnunet-runs 1   # one more nnU-Net run (~45 min)
    .venv/bin/python benchmarks/bench_train.py --collect-nnunet RESULTS/fold_0   # a finished run
    .venv/bin/python benchmarks/bench_train.py --table            # only rewrite the table
    .venv/bin/python benchmarks/bench_train.py --regions --seeds 1 2 --nnunet-runs 2

``--regions`` trains both tools on nnU-Net's regions scenario (its Dataset997: labels
``{hippocampus: [1, 2], anterior: 1}``, ``regions_class_order [2, 1]``, sigmoid outputs) of the
same data and split, scored per region; its runs are kept apart
(``results/train_hippocampus_regions_cpu.json`` and ``.md``; there is no reference run).

The nnU-Net reference run of ../shared/reference is always one of the nnU-Net rows. Run on an
otherwise idle machine: s/iteration is the median epoch time / 45 (validation iterations
included, as in nnU-Net's epoch times). Prints a markdown table and writes
benchmarks/results/train_hippocampus_cpu.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import HERE, ROOT, SHARED, write_result

REFERENCE = SHARED / "reference" / "nnunet_cpu_run"
RUNS = HERE / "results" / "train_hippocampus_cpu.json"
REGION_RUNS = HERE / "results" / "train_hippocampus_regions_cpu.json"
log = logging.getLogger("bench_train")


def _run(cmd: list[str], env: dict[str, str] | None = None) -> float:
    t0 = time.perf_counter()
    log.info("$ %s", " ".join(cmd))
    subprocess.run(cmd, check=True, env=env)
    return time.perf_counter() - t0


def _today() -> str:
    return datetime.date.today().isoformat()


def check_same_split(data: Path) -> None:
    """Exit unless autoseg's folds of ``data`` are nnU-Net's (the reference run's splits)."""
    ref_splits = json.loads((REFERENCE / "splits_final.json").read_text())
    from autoseg.data.splits import make_splits
    from autoseg.io.dataset import load_dataset

    splits = make_splits([c.case_id for c in load_dataset(data).cases])
    same = all(sorted(r["val"]) == s["val"] for r, s in zip(ref_splits, splits, strict=True))
    if not same:
        sys.exit("autoseg's fold 0 differs from nnU-Net's: the comparison would not be fair")


def run_autoseg(data: Path, work: Path, seed: int, args: argparse.Namespace) -> dict[str, object]:
    """Plan, train and validate fold 0 with autoseg; one result row."""
    exe = str(ROOT / ".venv" / "bin" / "autoseg")
    if args.regions:
        data = _regions_dataset(data, work / "data" / data.name)
    _run([exe, "plan", str(data), "--work-dir", str(work), "-q"])
    check_same_split(data)
    wall = _run(
        [
            exe,
            "train",
            data.name,
            "3d_fullres",
            "0",
            "--work-dir",
            str(work),
            "--device",
            "cpu",
            "--epochs",
            str(args.epochs),
            "--iters-per-epoch",
            str(args.iters),
            "--val-iters",
            str(args.val_iters),
            "--augment-workers",
            str(args.workers),
            "--precision",
            args.precision,
            "--seed",
            str(seed),
        ]
    )
    fold = work / data.name / "models" / "3d_fullres" / "fold_0"
    recs = [json.loads(line) for line in (fold / "progress.jsonl").read_text().splitlines()]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    return {
        "tool": "autoseg",
        "run": f"{args.precision}, seed {seed}" + (f" ({args.note})" if args.note else ""),
        "date": _today(),
        "epoch_s": [r["seconds"] for r in recs],
        "iters": args.iters,
        "total_min": wall / 60,
        "pseudo_dice": [round(r["pseudo_dice_mean"], 3) for r in recs],
        "dice": [summary["mean"][k] for k in _keys(args)[0]],
        "dice_mean": summary["foreground_mean"],
    }


def _runs_file(args: argparse.Namespace) -> Path:
    return REGION_RUNS if args.regions else RUNS


def _keys(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The summary keys of the two scores: autoseg's, nnU-Net's."""
    if args.regions:
        return ["hippocampus", "anterior"], ["(1, 2)", "1"]
    return ["1", "2"], ["1", "2"]


def _regions_dataset(msd: Path, dest: Path) -> Path:
    """The MSD hippocampus folder as nnU-Net's regions scenario (nnU-Net v2 layout, links to the
    files; the same case ids, so the same split)."""
    from autoseg.io.samples import SCENARIOS

    labels, order, _ = SCENARIOS["regions"]
    meta = json.loads((msd / "dataset.json").read_text())
    (dest / "imagesTr").mkdir(parents=True)
    (dest / "labelsTr").mkdir()
    for entry in meta["training"]:
        name = Path(entry["image"]).name
        case = name.removesuffix(".nii.gz")
        (dest / "imagesTr" / f"{case}_0000.nii.gz").symlink_to((msd / entry["image"]).resolve())
        (dest / "labelsTr" / name).symlink_to((msd / entry["label"]).resolve())
    dataset = {"channel_names": {"0": "MRI"}, "labels": labels, "regions_class_order": order}
    dataset |= {"numTraining": len(meta["training"]), "file_ending": ".nii.gz"}
    (dest / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return dest


def reference_nnunet() -> dict[str, object]:
    """The reference run of ../shared/reference/nnunet_cpu_run (its README gives the times)."""
    s = json.loads((REFERENCE / "fold0_validation_summary.json").read_text())
    return {
        "tool": "nnU-Net v2.8.1",
        "run": "reference run (../shared/reference)",
        "date": "",
        "epoch_s": None,
        "s_per_iter": 7.0,
        "iters": 45,
        "total_min": 44.4,
        "pseudo_dice": "see progress.png: 0.0, ~0.33, ~0.73, ~0.79, ~0.81, ~0.83, ~0.83, ~0.84",
        "dice": [s["mean"]["1"]["Dice"], s["mean"]["2"]["Dice"]],
        "dice_mean": s["foreground_mean"]["Dice"],
    }


def collect_nnunet(
    fold: Path, iters: int, total_min: float | None = None, keys: tuple[str, str] = ("1", "2")
) -> dict[str, object]:
    """A result row from a finished nnU-Net fold folder (its training log and validation)."""
    text = "\n".join(p.read_text() for p in sorted(fold.glob("training_log_*.txt")))
    epoch_s = [float(x) for x in re.findall(r"Epoch time: ([\d.]+) s", text)]
    dice = [
        [float(v) for v in re.findall(r"(?<![\w.])(\d+\.\d+(?:e-?\d+)?)", m)]
        for m in re.findall(r"Pseudo dice \[(.*)\]", text)
    ]
    s = json.loads((fold / "validation" / "summary.json").read_text())
    return {
        "tool": "nnU-Net v2.8.1",
        "run": "this benchmark",
        "date": _today(),
        "epoch_s": epoch_s,
        "iters": iters,
        "total_min": total_min,
        "pseudo_dice": [round(statistics.mean(d), 3) for d in dice],
        "dice": [s["mean"][k]["Dice"] for k in keys],
        "dice_mean": s["foreground_mean"]["Dice"],
    }


_NNUNET_TRAINER = """
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_benchCPU(nnUNetTrainer):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = {epochs}
        self.num_iterations_per_epoch = {iters}
        self.num_val_iterations_per_epoch = {val}
"""


def run_nnunet(data: Path, work: Path, n_runs: int, args: argparse.Namespace) -> list[dict[str, object]]:
    """Convert, plan and preprocess once, then train and validate fold 0 ``n_runs`` times."""
    venv = HERE / ".peer-venv"
    if not (venv / "bin" / "nnUNetv2_train").exists():
        sys.exit("run benchmarks/setup_peer.sh first")
    site = next((venv / "lib").glob("python3*/site-packages/nnunetv2/training/nnUNetTrainer"))
    (site / "nnUNetTrainer_benchCPU.py").write_text(
        _NNUNET_TRAINER.format(epochs=args.epochs, iters=args.iters, val=args.val_iters)
    )
    env = dict(
        os.environ,
        nnUNet_raw=str(work / "raw"),
        nnUNet_preprocessed=str(work / "pre"),
        nnUNet_results=str(work / "res"),
        nnUNet_n_proc_DA=str(args.workers),
        nnUNet_compile="f",
    )
    b = venv / "bin"
    msd = work / "Task04_Hippocampus"
    msd.mkdir(parents=True)
    for sub in ("imagesTr", "labelsTr"):
        (msd / sub).symlink_to(data / sub)
    (msd / "imagesTs").mkdir()
    (msd / "dataset.json").write_text((data / "dataset.json").read_text())
    _run([str(b / "nnUNetv2_convert_MSD_dataset"), "-i", str(msd), "-overwrite_id", "4"], env)
    if args.regions:  # nnU-Net's Dataset997: the same labels declared as regions
        from autoseg.io.samples import SCENARIOS

        labels, order, _ = SCENARIOS["regions"]
        raw_json = work / "raw" / "Dataset004_Hippocampus" / "dataset.json"
        dj = json.loads(raw_json.read_text())
        dj["labels"], dj["regions_class_order"] = labels, order
        raw_json.write_text(json.dumps(dj, indent=1))
    _run([str(b / "nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres", "-np", "2"], env)
    pre = work / "pre" / "Dataset004_Hippocampus"
    (pre / "splits_final.json").write_text((REFERENCE / "splits_final.json").read_text())
    rows = []
    for i in range(n_runs):
        env["nnUNet_results"] = str(work / f"res{i}")
        wall = _run(
            [
                str(b / "nnUNetv2_train"),
                "4",
                "3d_fullres",
                "0",
                "-tr",
                "nnUNetTrainer_benchCPU",
                "-device",
                "cpu",
            ],
            env,
        )
        fold = next((work / f"res{i}").glob("Dataset004_Hippocampus/*/fold_0"))
        rows.append(collect_nnunet(fold, args.iters, wall / 60, tuple(_keys(args)[1])))  # type: ignore[arg-type]
    return rows


def _s_per_iter(row: dict) -> float:
    if row.get("epoch_s"):
        return statistics.median(row["epoch_s"]) / row["iters"]
    return float(row["s_per_iter"])


def table(rows: list[dict], args: argparse.Namespace) -> str:
    """The markdown table of every run, then the means per tool and their comparison."""
    lines = [
        f"## train: hippocampus{' regions' if args.regions else ''} 3d_fullres fold 0 on CPU (2 cores), "
        f"{args.epochs} x {args.iters} "
        f"iterations of batch 7, {args.val_iters} val iters/epoch",
        "",
        f"Every run of `benchmarks/bench_train.py` (kept in {_runs_file(args).name}). Runs that "
        "shared the CPU with other jobs have slower epochs; the s/iteration comparison uses each "
        "tool's fastest median. At this budget the Dice of a run depends mostly on the epoch at "
        "which it starts to predict foreground (see the pseudo-Dice columns), which varies from run "
        "to run (nnU-Net does not seed its runs), so the tools are compared by the mean of their runs.",
        "",
        "| tool | run | date | s / it | total min | pseudo-Dice per epoch | "
        + ("Dice hippocampus | Dice anterior " if args.regions else "Dice ant. | Dice post. ")
        + "| Dice mean |",
        "|---|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        pd = (
            r["pseudo_dice"]
            if isinstance(r["pseudo_dice"], str)
            else ", ".join(f"{d:.2f}" for d in r["pseudo_dice"])
        )
        total = "" if r.get("total_min") is None else f"{r['total_min']:.1f}"
        lines.append(
            f"| {r['tool']} | {r['run']} | {r['date']} | {_s_per_iter(r):.2f} | {total} | {pd} | "
            f"{r['dice'][0]:.4f} | {r['dice'][1]:.4f} | {r['dice_mean']:.4f} |"
        )
    by_tool: dict[str, list[dict]] = {}
    for r in rows:
        by_tool.setdefault(r["tool"], []).append(r)
    lines += [
        "",
        "| tool | runs | Dice mean (mean of runs) | min | max | best s / it |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    stats = {}
    for tool, rs in by_tool.items():
        d = [r["dice_mean"] for r in rs]
        stats[tool] = (statistics.mean(d), min(_s_per_iter(r) for r in rs))
        lines.append(
            f"| {tool} | {len(rs)} | {statistics.mean(d):.4f} | {min(d):.4f} | {max(d):.4f} | "
            f"{stats[tool][1]:.2f} |"
        )
    if "autoseg" in stats and "nnU-Net v2.8.1" in stats:
        (ours, ours_s), (ref, ref_s) = stats["autoseg"], stats["nnU-Net v2.8.1"]
        lines += [
            "",
            f"s/iteration autoseg / nnU-Net: {ours_s / ref_s:.2f} (target <= 0.8).",
            f"Dice, mean of runs, autoseg - nnU-Net: {ours - ref:+.4f} (target >= 0).",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "hippocampus")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--iters", type=int, default=45)
    ap.add_argument("--val-iters", type=int, default=5)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--seeds", type=int, nargs="*", default=[], help="autoseg runs, one per seed")
    ap.add_argument("--nnunet-runs", type=int, default=0, help="nnU-Net runs (about 45 min each)")
    ap.add_argument(
        "--collect-nnunet",
        type=Path,
        nargs="*",
        default=[],
        help="finished nnU-Net fold_0 folders (same budget) to add as runs",
    )
    ap.add_argument("--table", action="store_true", help="only rewrite the table from the kept runs")
    ap.add_argument("--fresh", action="store_true", help="forget the kept runs first")
    ap.add_argument(
        "--keep-work",
        type=Path,
        default=None,
        help="keep the work folders here (e.g. for bench_predict.py --work DIR/autoseg<seed>)",
    )
    ap.add_argument("--note", default="", help="appended to each run's label (e.g. what changed)")
    ap.add_argument("--regions", action="store_true", help="nnU-Net's regions scenario (Dataset997)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    runs = _runs_file(args)
    rows = [] if args.fresh or not runs.is_file() else json.loads(runs.read_text())
    if not rows and not args.regions:
        rows.append(reference_nnunet())
    if not args.table:
        data = args.data.resolve()
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = args.keep_work or Path(tmp_dir)
            for seed in args.seeds:
                rows.append(run_autoseg(data, Path(tmp) / f"autoseg{seed}", seed, args))
                runs.write_text(json.dumps(rows, indent=1))
            if args.nnunet_runs:
                rows += run_nnunet(data, Path(tmp) / "nnunet", args.nnunet_runs, args)
        keys = tuple(_keys(args)[1])
        rows += [collect_nnunet(f.resolve(), args.iters, None, keys) for f in args.collect_nnunet]  # type: ignore[arg-type]
        runs.parent.mkdir(exist_ok=True)
        runs.write_text(json.dumps(rows, indent=1))
    write_result(runs.with_suffix(".md").name, table(rows, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
