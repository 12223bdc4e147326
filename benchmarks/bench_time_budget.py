"""``autoseg train --time``: does a run end within its limit, and what does the time buy?

Plans the shipped hippocampus sample (or its first ``--cases`` cases), then times one
``autoseg train hippo CONFIG FOLD --time T`` end to end (preprocessing, training, the final
validation and the process start-up: all that a user waits for) and reports the wall time
against the limit (+5 % allowed), the epochs the run decided, the final validation's time
against what the plan kept for it, and the fold's validation Dice. Every run is appended to
``results/time_budget.json``.

    /work/main/.venv/bin/python benchmarks/bench_time_budget.py                 # --time 10m
    /work/main/.venv/bin/python benchmarks/bench_time_budget.py --time 30m --note idle

Run it on an otherwise idle machine: the decision is made from the first epoch's speed, so
other jobs that start or stop later make the run end early or late. The default 50 iterations
per epoch (the trainer's default is 250) let a short CPU budget choose among several epochs;
pass ``--iters-per-epoch 250`` for the real setting. Exit status 1 when the run ended over the
limit + 5 %.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import HERE, ROOT

RESULTS = HERE / "results" / "time_budget.json"
ALLOWED_OVER = 0.05
log = logging.getLogger("bench_time_budget")
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _stamp(line: str) -> datetime.datetime | None:
    m = _STAMP.match(line)
    return datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f") if m else None


def _final_seconds(log_text: str) -> float | None:
    """Seconds from the last epoch's log line to the validation summary's (the run's end)."""
    lines = log_text.splitlines()
    epochs = [_stamp(x) for x in lines if "autoseg.training.trainer: epoch " in x]
    done = [_stamp(x) for x in lines if "autoseg.training.validate: validation of " in x]
    if not epochs or not done or epochs[-1] is None or done[-1] is None:
        return None
    return (done[-1] - epochs[-1]).total_seconds()


def _autoseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoseg", *args]


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Plan (untimed), then one timed ``train --time``; the result row."""
    from autoseg.io.samples import copy_sample_subset
    from autoseg.options import duration_seconds

    data = copy_sample_subset(work / "hippo", args.cases)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    subprocess.run(
        _autoseg("plan", str(data), "--work-dir", str(work / "w"), "-q"), check=True, cwd=ROOT, env=env
    )
    cmd = _autoseg(
        "train",
        "hippo",
        args.configuration,
        args.fold,
        "--work-dir",
        str(work / "w"),
        "--time",
        args.time,
        "--iters-per-epoch",
        str(args.iters_per_epoch),
        "--val-iters",
        str(args.val_iters),
        "--device",
        args.device,
        "-q",
        *args.extra,
    )
    log.info("$ %s", " ".join(cmd))
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - t0
    fold = work / "w" / "hippo" / "models" / args.configuration / f"fold_{args.fold}"
    cfg = json.loads((fold / "train_config.json").read_text())
    budget = cfg["budget"] or {}
    summary = fold / "validation" / "summary.json"
    dice = json.loads(summary.read_text())["foreground_mean"] if summary.is_file() else None
    epochs_run = sum(1 for _ in (fold / "progress.jsonl").open())
    limit = duration_seconds(args.time)
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "note": args.note,
        "cpus": os.cpu_count(),
        "omp_threads": os.environ.get("OMP_NUM_THREADS"),
        "configuration": args.configuration,
        "fold": args.fold,
        "cases": args.cases,
        "device": args.device,
        "time": args.time,
        "limit_s": limit,
        "wall_s": round(wall, 1),
        "wall_over_limit": round(wall / limit, 3),
        "within_limit_plus_5pct": wall <= limit * (1 + ALLOWED_OVER),
        "epochs_decided": budget.get("epochs"),
        "epochs_run": epochs_run,
        "iters_per_epoch": args.iters_per_epoch,
        "val_iters": args.val_iters,
        "seconds_per_iter": budget.get("seconds_per_iter"),
        "planned_epoch_s": budget.get("epoch_s"),
        "final_kept_s": budget.get("final_s"),
        "final_measured_s": _final_seconds((fold / "log.txt").read_text()),
        "validation_dice_foreground_mean": dice,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time", default="10m", help="the --time of the run (default 10m)")
    p.add_argument("--configuration", default="3d_fullres")
    p.add_argument("--fold", default="0")
    p.add_argument("--cases", type=int, default=32, help="sample training cases to use (at most 32)")
    p.add_argument("--iters-per-epoch", type=int, default=50)
    p.add_argument("--val-iters", type=int, default=10)
    p.add_argument("--device", default="cpu")
    p.add_argument("--work", type=Path, help="work folder to keep (default: a temporary one)")
    p.add_argument("--note", default="", help="kept with the result, e.g. 'idle machine'")
    p.add_argument("--results", type=Path, default=RESULTS, help=f"runs file (default {RESULTS})")
    p.add_argument("extra", nargs="*", help="more train flags, after --")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    sys.path.insert(0, str(ROOT))
    if args.work is not None:
        args.work.mkdir(parents=True, exist_ok=True)
        row = run(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="bench_time_budget_") as tmp:
            row = run(args, Path(tmp))
    runs = json.loads(args.results.read_text()) if args.results.is_file() else []
    runs.append(row)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(runs, indent=1) + "\n")
    log.info(
        "--time %s: wall %.1f s = %.0f%% of the limit (%s); %s epochs x %d iterations; final "
        "validation %s s (kept %s s); validation Dice %s -> %s",
        row["time"],
        row["wall_s"],
        100 * row["wall_over_limit"],
        "within +5%" if row["within_limit_plus_5pct"] else "OVER +5%",
        row["epochs_run"],
        row["iters_per_epoch"],
        row["final_measured_s"],
        None if row["final_kept_s"] is None else round(row["final_kept_s"], 1),
        row["validation_dice_foreground_mean"],
        args.results,
    )
    return 0 if row["within_limit_plus_5pct"] else 1


if __name__ == "__main__":
    sys.exit(main())
