"""Does the uncertainty mean anything? Per-case uncertainty against per-case Dice.

On the 40 fold-0 validation cases of hippocampus, with a model trained on fold 0 (kept by
``bench_train.py --keep-work DIR``): ``autoseg predict -c 3d_fullres -f 0 --save-uncertainty``
(TTA on: the 8 mirrors are the ensemble members), ``autoseg evaluate`` per case, then

* the Spearman rank correlation between each case's uncertainty score (mean predictive entropy
  inside the predicted foreground, and the same for the mutual information) and its Dice (mean
  of the two labels): a useful score is clearly negative;
* the mean Dice of the 25 % least certain cases against the rest;
* a scatter plot, ``results/uncertainty_hippocampus.png``.

    .venv/bin/python benchmarks/bench_train.py --seeds 12345 --keep-work /tmp/keep
    .venv/bin/python benchmarks/bench_uncertainty.py --work /tmp/keep/autoseg12345

Appends to ``results/uncertainty_hippocampus.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import AUTOSEG, HERE, SHARED, run_measured, write_result

RUNS = HERE / "results" / "uncertainty_hippocampus.json"
SCORES = ("mean_entropy_foreground", "mean_mutual_information_foreground")


def run(work: Path, data: Path, tmp: Path) -> dict[str, object]:
    """Predict and score the fold-0 validation cases; correlate."""
    from scipy.stats import spearmanr

    splits = json.loads((work / "hippocampus" / "splits.json").read_text())
    cases = sorted(splits[0]["val"])
    inp, ref, out = tmp / "in", tmp / "ref", tmp / "out"
    inp.mkdir()
    ref.mkdir()
    for c in cases:
        (inp / f"{c}.nii.gz").symlink_to((data / "imagesTr" / f"{c}.nii.gz").resolve())
        (ref / f"{c}.nii.gz").symlink_to((data / "labelsTr" / f"{c}.nii.gz").resolve())
    predict = [AUTOSEG, "predict", "-i", str(inp), "-o", str(out), "-d", "hippocampus", "-c", "3d_fullres"]
    timed = run_measured(
        [*predict, "-f", "0", "--device", "cpu", "--save-uncertainty", "--work-dir", str(work)]
    )
    report = tmp / "eval.json"
    run_measured([AUTOSEG, "evaluate", "--pred", str(out), "--ref", str(ref), "-o", str(report), "-q"])
    per_case = json.loads(report.read_text())["per_case"]
    dice = {
        c["case"]: float(
            np.nanmean([np.nan if m["dice"] is None else m["dice"] for m in c["metrics"].values()])
        )
        for c in per_case
    }
    with open(out / "uncertainty" / "uncertainty.csv", newline="") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    scored = [c for c in cases if rows[c][SCORES[0]]]  # cases with a predicted foreground
    result: dict[str, object] = {
        "date": datetime.date.today().isoformat(),
        "work": str(work),
        "cases": len(cases),
        "scored_cases": len(scored),
        "predict_s": timed.wall_s,
        "per_case": {c: {"dice": dice[c], **{s: float(rows[c][s] or "nan") for s in SCORES}} for c in cases},
    }
    d = np.array([dice[c] for c in scored])
    for s in SCORES:
        u = np.array([float(rows[c][s]) for c in scored])
        rho, p = spearmanr(u, d)
        result[f"spearman_{s}"] = {"rho": float(rho), "p": float(p)}
    u = np.array([float(rows[c][SCORES[0]]) for c in scored])
    worst = u >= np.quantile(u, 0.75)
    result["dice_least_certain_quarter"] = float(d[worst].mean())
    result["dice_rest"] = float(d[~worst].mean())
    _plot(scored, d, rows, HERE / "results" / "uncertainty_hippocampus.png", result)
    return result


def _plot(cases: list[str], dice: np.ndarray, rows: dict[str, dict[str, str]], path: Path, r: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 4))
    for ax, s, name in zip(
        fig.subplots(1, 2), SCORES, ("predictive entropy", "mutual information"), strict=True
    ):
        u = [float(rows[c][s]) for c in cases]
        ax.scatter(u, dice, s=14)
        rho = r[f"spearman_{s}"]["rho"]  # type: ignore[index]
        ax.set_title(f"{name}: Spearman rho {rho:.2f}")
        ax.set_xlabel(f"mean {name} in predicted foreground (nats)")
        ax.set_ylabel("Dice (mean of labels)")
    fig.suptitle("hippocampus fold 0, 40 validation cases: per-case uncertainty vs Dice")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(runs: list[dict]) -> str:
    head = (
        "## Uncertainty vs Dice: hippocampus fold 0, 40 validation cases (TTA members)\n\n"
        "| date | cases | Spearman rho (entropy) | p | Spearman rho (mutual info) | p | "
        "Dice, 25 % least certain | Dice, rest |\n|---|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [head]
    for r in runs:
        e, m = r[f"spearman_{SCORES[0]}"], r[f"spearman_{SCORES[1]}"]
        cells = [r["date"], str(r["scored_cases"]), f"{e['rho']:.3f}", f"{e['p']:.2g}", f"{m['rho']:.3f}"]
        cells += [f"{m['p']:.2g}", f"{r['dice_least_certain_quarter']:.4f}", f"{r['dice_rest']:.4f}"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows) + "\n\nFigure: uncertainty_hippocampus.png\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, help="autoseg work folder with hippocampus 3d_fullres fold 0")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "hippocampus")
    ap.add_argument("--table", action="store_true", help="only rewrite the table from the kept runs")
    args = ap.parse_args()
    runs = json.loads(RUNS.read_text()) if RUNS.is_file() else []
    if not args.table:
        if args.work is None:
            sys.exit("--work DIR is needed (a work folder with hippocampus 3d_fullres fold 0 trained)")
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(run(args.work.resolve(), args.data.resolve(), Path(tmp)))
        RUNS.write_text(json.dumps(runs, indent=1) + "\n")
    write_result("uncertainty_hippocampus.md", table(runs))


if __name__ == "__main__":
    main()
