"""The budget curve: hippocampus validation Dice against CPU training time, autoseg vs nnU-Net v2.

Issue 16, part 3. Hippocampus (../shared/data, 200 cases), 3d_fullres, fold 0 (nnU-Net's split,
checked), the 40 fold-0 validation cases scored after a full sliding-window validation with
mirroring. Every point trains epochs of 45 iterations with 5 validation iterations each, as
``bench_train.py`` does at 360 iterations (8 epochs), so a 1440-iteration run is 32 epochs of the
same shape and the learning-rate schedule spans its whole length.

Series: autoseg's default ``3d_fullres``, autoseg's ``3d_fullres_resenc_m`` (the ResEnc M preset;
trained at the default's batch of 7 unless ``--plan-batch``: the preset's own batch, 58 on this
dataset, would make one CPU iteration ~8x longer and compare batch sizes instead of networks), and
nnU-Net v2 (``3d_fullres``, its own plan, the same batch 7 and patch). A run is one JSON row kept
in ``results/budget_curve.json`` (appended as soon as it ends, so runs add up across sessions);
the 360-iteration runs of ``results/train_hippocampus_cpu.json`` join the table as they are (same
budget, same shape). Time is the wall-clock hours of the training command on the 2-core machine,
validation included; autoseg's includes its preprocessing (train preprocesses on first use,
~15 s here), nnU-Net's does not (a separate command): time one run at a time on an otherwise
idle machine.

    .venv/bin/python benchmarks/bench_budget.py --iters 1440 --seeds 12345
    .venv/bin/python benchmarks/bench_budget.py --iters 360 --config 3d_fullres_resenc_m --seeds 12345
    .venv/bin/python benchmarks/bench_budget.py --iters 1440 --nnunet-runs 1
    .venv/bin/python benchmarks/bench_budget.py --iters 360 --seeds 1 2 3 --flags "--schedule poly_step"
    .venv/bin/python benchmarks/bench_budget.py --table      # table + PNG from the kept runs

``--flags`` adds ``autoseg train`` flags to the autoseg runs: a recipe candidate, kept as its own
series (the flags are in its name) until >= 3 seeds at each budget it affects say whether it
beats the default beyond the seed spread (issue 16); the table's last lines apply that rule.

Writes results/budget_curve.md and results/budget_curve.png.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import AUTOSEG, HERE, SHARED, append_row, read_rows, write_result
from bench_train import RUNS as RUNS_360
from bench_train import _run, _today, check_same_split, run_nnunet

RUNS = HERE / "results" / "budget_curve.json"
PNG = HERE / "results" / "budget_curve.png"
ITERS_PER_EPOCH = 45
VAL_ITERS = 5
NNUNET = "nnU-Net v2.8.1"
log = logging.getLogger("bench_budget")


def train_command(
    work: Path,
    dataset: str,
    config: str,
    fold: int,
    epochs: int,
    batch: int,
    seed: int,
    iters: int = ITERS_PER_EPOCH,
) -> list[str]:
    """``autoseg train`` of one fold on the CPU in this benchmark's epoch shape (``iters``
    iterations + VAL_ITERS validation iterations, 2 augmentation workers)."""
    cmd = [AUTOSEG, "train", dataset, config, str(fold), "--work-dir", str(work), "--device", "cpu"]
    cmd += ["--epochs", str(epochs), "--iters-per-epoch", str(iters), "--val-iters", str(VAL_ITERS)]
    return [*cmd, "--augment-workers", "2", "--seed", str(seed), "--batch-size", str(batch)]


def run_autoseg(data: Path, work: Path, seed: int, args: argparse.Namespace) -> dict[str, object]:
    """Plan (with the preset a configuration needs), train and validate fold 0; one row."""
    check_same_split(data)
    preset = args.config.removeprefix("3d_fullres_") if args.config != "3d_fullres" else None
    plan = [AUTOSEG, "plan", str(data), "--work-dir", str(work), "-q"]
    _run(plan + (["--preset", preset] if preset else []))
    plans = json.loads((work / data.name / "plans.json").read_text())["configurations"]
    batch = plans[args.config]["batch_size"] if args.plan_batch else plans["3d_fullres"]["batch_size"]
    train = train_command(work, data.name, args.config, 0, args.iters // ITERS_PER_EPOCH, batch, seed)
    wall = _run(train + shlex.split(args.flags))
    fold = work / data.name / "models" / args.config / "fold_0"
    recs = [json.loads(line) for line in (fold / "progress.jsonl").read_text().splitlines()]
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    return {
        "tool": "autoseg",
        "config": args.config,
        "flags": args.flags,
        "iters": args.iters,
        "batch": batch,
        "seed": seed,
        "run": args.note,
        "date": _today(),
        "hours": wall / 3600,
        "epoch_s": [r["seconds"] for r in recs],
        "pseudo_dice": [round(r["pseudo_dice_mean"], 3) for r in recs],
        "dice": [summary["mean"]["1"], summary["mean"]["2"]],
        "dice_mean": summary["foreground_mean"],
    }


def _seed_in(label: str) -> int | None:
    """bench_train.py's rows name their seed only in the run's label ("auto, seed 3 (idle)")."""
    found = re.search(r"\bseed (\d+)\b", label)
    return int(found.group(1)) if found else None


def _as_row(r: dict, iters: int) -> dict[str, object]:
    """A ``bench_train.py`` (or ``run_nnunet``) row in this file's shape."""
    hours = None if r.get("total_min") is None else r["total_min"] / 60
    return {
        "tool": r["tool"],
        "config": "3d_fullres",
        "iters": iters,
        "batch": 7,
        "seed": _seed_in(r["run"]),
        "run": r["run"],
        "date": r["date"],
        "hours": hours,
        "epoch_s": r.get("epoch_s"),
        "pseudo_dice": r["pseudo_dice"],
        "dice": r["dice"],
        "dice_mean": r["dice_mean"],
    }


def all_rows() -> list[dict]:
    """This file's runs and the 360-iteration runs of bench_train.py."""
    old = [_as_row(r, 8 * ITERS_PER_EPOCH) | {"source": RUNS_360.name} for r in read_rows(RUNS_360)]
    return old + read_rows(RUNS)


#: The series that are configurations ``autoseg plan`` writes without options, and their names
#: there: the ResEnc M rows (its network at the default's batch and patch) are
#: ``3d_fullres_resenc`` on this dataset.
PLANNED_BY_DEFAULT = {"autoseg": "3d_fullres", "autoseg 3d_fullres_resenc_m": "3d_fullres_resenc"}


def _series(row: dict) -> str:
    """The tool, its configuration unless the default, and any recipe flags (a candidate)."""
    name = row["tool"] if row["config"] == "3d_fullres" else f"{row['tool']} {row['config']}"
    return f"{name} {row['flags']}" if row.get("flags") else name


def table(rows: list[dict]) -> str:
    """Every run, then mean / min / max per series and budget, then the comparison asked for."""
    lines = [
        "## Budget curve: hippocampus 3d_fullres fold 0 (40 validation cases), CPU (2 cores)",
        "",
        f"Epochs of {ITERS_PER_EPOCH} iterations + {VAL_ITERS} validation iterations, batch 7 "
        "(patch 40x56x40), full sliding-window validation with mirroring at the end. Hours: "
        "wall-clock of the training command on the 2-core machine (validation included; autoseg's "
        "includes its preprocessing, ~15 s, nnU-Net's not). Runs marked shared had another job "
        "on the CPU (slower; the Dice barely moves). The ResEnc M rows are its network at the "
        "default's batch 7 (`--batch-size`): the preset's own plan of this dataset asks batch 58 "
        "(memory-sized, no 5 % cap), ~8x the compute per iteration. That network at 3d_fullres's "
        "patch and batch is what `autoseg plan` now adds by default as `3d_fullres_resenc` (the "
        "same configuration on this dataset: tests/planning/test_presets.py checks it), because "
        "of its 1440-iteration verdict below; `3d_fullres` itself stays the plain U-Net (its "
        "360-iteration verdict).",
        "",
        "| series | iters | run | date | hours | pseudo-Dice per epoch (last 4) | Dice ant. | Dice post. "
        "| Dice mean |",
        "|---|---:|---|---|---:|---|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (_series(r), r["iters"])):
        pd = r["pseudo_dice"]
        pd = pd if isinstance(pd, str) or pd is None else ", ".join(f"{d:.2f}" for d in pd[-4:])
        hours = "" if r["hours"] is None else f"{r['hours']:.2f}"
        run = r["run"] or f"seed {r['seed']}"
        lines.append(
            f"| {_series(r)} | {r['iters']} | {run} | {r['date']} | {hours} | {pd} | "
            f"{r['dice'][0]:.4f} | {r['dice'][1]:.4f} | {r['dice_mean']:.4f} |"
        )
    groups = _groups(rows)
    lines += [
        "",
        "| series | iters | runs | Dice mean (of runs) | min | max | hours (median) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (series, iters), rs in sorted(groups.items()):
        d = [r["dice_mean"] for r in rs]
        h = [r["hours"] for r in rs if r["hours"] is not None]
        hours = f"{statistics.median(h):.2f}" if h else ""
        lines.append(
            f"| {series} | {iters} | {len(rs)} | {statistics.mean(d):.4f} | {min(d):.4f} | "
            f"{max(d):.4f} | {hours} |"
        )
    lines.append("")
    for iters in sorted({k[1] for k in groups}):
        theirs = groups.get((NNUNET, iters))
        for series, name in PLANNED_BY_DEFAULT.items():
            ours = groups.get((series, iters))
            if ours and theirs:
                diff = statistics.mean(r["dice_mean"] for r in ours) - statistics.mean(
                    r["dice_mean"] for r in theirs
                )
                lines.append(
                    f"- {iters} iterations: autoseg {name} - nnU-Net, mean of runs: {diff:+.4f} "
                    f"({len(ours)} vs {len(theirs)} runs; target >= 0)."
                )
            else:
                missing = f"autoseg {name}" if not ours else "nnU-Net"
                lines.append(f"- {iters} iterations: no {missing} run yet.")
    lines += ["", *candidate_verdicts(groups), "", f"Figure: {PNG.name}"]
    return "\n".join(lines) + "\n"


MIN_SEEDS = 3


def candidate_verdicts(groups: dict[tuple[str, int], list[dict]]) -> list[str]:
    """Issue 16's rule for every autoseg series other than the default, at each budget both have:
    a candidate replaces the default only with >= 3 seeds whose mean beats the default's best run
    (beyond the seed spread, not just its mean). Seeds that both ran are also compared pairwise
    (a seed's default runs averaged), which shows whether a gain follows the seed or the recipe."""
    lines = []
    for (series, iters), rs in sorted(groups.items()):
        base = groups.get(("autoseg", iters))
        if not series.startswith("autoseg ") or not base:
            continue
        mean = statistics.mean(r["dice_mean"] for r in rs)
        base_mean, base_max = (f(r["dice_mean"] for r in base) for f in (statistics.mean, max))
        by_seed: dict[object, list[float]] = {}
        for r in base:
            if r["seed"] is not None:  # an unknown seed pairs with nothing
                by_seed.setdefault(r["seed"], []).append(r["dice_mean"])
        paired = [r["dice_mean"] - statistics.mean(by_seed[r["seed"]]) for r in rs if r["seed"] in by_seed]
        pairs = f"; paired by seed ({len(paired)}): {statistics.mean(paired):+.4f}" if paired else ""
        if len(rs) < MIN_SEEDS:
            verdict = f"undecided: {len(rs)} of the {MIN_SEEDS} seeds the rule asks"
        elif mean > base_max:
            verdict = f"beats the default beyond its spread (mean above its best run, {base_max:.4f})"
        else:
            verdict = f"not beyond the default's spread (its best run: {base_max:.4f}): default kept"
        lines.append(
            f"- candidate `{series.removeprefix('autoseg ')}` at {iters}: mean {mean:.4f} over {len(rs)} "
            f"run(s) vs default {base_mean:.4f} over {len(base)} ({mean - base_mean:+.4f}{pairs}): {verdict}."
        )
    return lines


def _groups(rows: list[dict]) -> dict[tuple[str, int], list[dict]]:
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in rows:
        groups.setdefault((_series(r), r["iters"]), []).append(r)
    return groups


def plot(rows: list[dict], path: Path) -> None:
    """Dice against hours: every run a dot, each series' means joined by a line."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    by_series: dict[str, list[dict]] = {}
    for r in rows:
        if r["hours"] is not None:
            by_series.setdefault(_series(r), []).append(r)
    for i, (series, rs) in enumerate(sorted(by_series.items())):
        colour = f"C{i}"
        ax.scatter([r["hours"] for r in rs], [r["dice_mean"] for r in rs], color=colour, alpha=0.5, s=18)
        budgets = sorted({r["iters"] for r in rs})
        means = []
        for iters in budgets:
            at = [r for r in rs if r["iters"] == iters]
            means.append(
                (statistics.median(r["hours"] for r in at), statistics.mean(r["dice_mean"] for r in at))
            )
        # a series at one budget (a candidate) says it in the legend: labels beside every
        # cluster of 360-iteration points overlapped
        at_one = f"{budgets[0]} it, " if len(budgets) == 1 else ""
        ax.plot(*zip(*means, strict=True), color=colour, marker="o", label=f"{series} ({at_one}mean of runs)")
        if len(budgets) > 1:
            for (h, d), iters in zip(means, budgets, strict=True):
                ax.annotate(f"{iters} it", (h, d), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xlabel("training hours on 2 CPU cores (wall clock, validation included)")
    ax.set_ylabel("validation Dice, mean of 2 labels (40 cases)")
    ax.set_title("Hippocampus 3d_fullres fold 0: Dice per CPU hour")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "hippocampus")
    ap.add_argument("--iters", type=int, default=1440, help=f"a multiple of {ITERS_PER_EPOCH}")
    ap.add_argument(
        "--config",
        default="3d_fullres",
        choices=["3d_fullres", "3d_fullres_resenc", "3d_fullres_resenc_m", "3d_fullres_resenc_l"],
    )
    ap.add_argument("--plan-batch", action="store_true", help="train a preset at its planned batch")
    ap.add_argument("--seeds", type=int, nargs="*", default=[], help="autoseg runs, one per seed")
    ap.add_argument("--nnunet-runs", type=int, default=0, help="nnU-Net runs (~4 s/iteration)")
    ap.add_argument(
        "--flags",
        default="",
        help="more `autoseg train` flags: a recipe candidate, its own series (e.g. '--schedule poly_step')",
    )
    ap.add_argument("--note", default="", help="the run's label (e.g. what changed, or shared CPU)")
    ap.add_argument("--keep-work", type=Path, default=None, help="keep the work folders here")
    ap.add_argument("--table", action="store_true", help="only rewrite the table and the figure")
    args = ap.parse_args()
    if args.iters % ITERS_PER_EPOCH:
        ap.error(f"--iters must be a multiple of {ITERS_PER_EPOCH}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.table:
        data = args.data.resolve()
        with tempfile.TemporaryDirectory() as tmp_dir:
            tmp = args.keep_work or Path(tmp_dir)
            # the flags name the folder too: a candidate's kept work never lands in the default's
            series = "_".join(filter(None, [args.config, re.sub(r"\W+", "_", args.flags).strip("_")]))
            for seed in args.seeds:
                t0 = time.perf_counter()
                append_row(RUNS, run_autoseg(data, tmp / f"autoseg_{series}_{args.iters}_{seed}", seed, args))
                log.info("autoseg seed %d: %.1f min", seed, (time.perf_counter() - t0) / 60)
            if args.nnunet_runs:
                nn_args = argparse.Namespace(
                    epochs=args.iters // ITERS_PER_EPOCH,
                    iters=ITERS_PER_EPOCH,
                    val_iters=VAL_ITERS,
                    workers=2,
                    regions=False,
                )
                for row in run_nnunet(data, tmp / f"nnunet_{args.iters}", args.nnunet_runs, nn_args):
                    append_row(RUNS, _as_row(row, args.iters) | {"run": args.note or "this benchmark"})
    rows = all_rows()
    plot(rows, PNG)
    write_result("budget_curve.md", table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
