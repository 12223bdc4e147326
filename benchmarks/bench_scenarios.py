"""nnU-Net v2's integration scenarios, whole chain, all 5 folds: the runtime of autoseg's version.

nnU-Net's repository builds four datasets from MSD Hippocampus (standard; posterior as ignore;
regions {hippocampus: [1, 2], anterior: 1}; regions + ignore with ~3 % of the slices per axis
annotated) and, for each, trains 2d, 3d_fullres, 3d_lowres and 3d_cascade_fullres on 5 folds,
runs find-best, predicts a test set and applies post-processing. This script does the same with
autoseg on datasets built from the shipped sample (:func:`autoseg.io.samples.make_scenario_dataset`:
``--cases`` training cases, the next ``--test`` cases held out with their labels), with a tiny
training budget (accuracy is not the point: every stage must run), and reports wall time per
stage and the held-out Dice per label or region of find-best's choice.

    .venv/bin/python benchmarks/bench_scenarios.py [--cases 20] [--test 4] [--epochs 1] [--iters 5]

Prints a table and appends to benchmarks/results/scenarios.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import AUTOSEG, HERE, run_measured

from autoseg.io.samples import SCENARIOS, make_scenario_dataset

CONFIGS = ("3d_lowres", "2d", "3d_fullres", "3d_cascade_fullres")  # lowres before its cascade


def _dataset(root: Path, scenario: str, n_train: int, n_test: int) -> tuple[Path, Path, Path]:
    ds = make_scenario_dataset(root / scenario, scenario, n_train + n_test)
    scans, refs = root / f"{scenario}_scans", root / f"{scenario}_refs"
    scans.mkdir()
    refs.mkdir()
    for label in sorted((ds / "labelsTr").glob("*.nii.gz"))[n_train:]:
        case = label.name.removesuffix(".nii.gz")
        shutil.move(ds / "imagesTr" / f"{case}_0000.nii.gz", scans / f"{case}.nii.gz")
        shutil.move(label, refs / label.name)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["numTraining"] = n_train
    (ds / "dataset.json").write_text(json.dumps(meta))
    return ds, scans, refs


def run_scenario(root: Path, scenario: str, args: argparse.Namespace) -> dict[str, object]:
    ds, scans, refs = _dataset(root, scenario, args.cases, args.test)
    work = root / f"{scenario}_work"
    common = ["--work-dir", str(work), "-q"]
    times: dict[str, float] = {}
    times["plan"] = run_measured([AUTOSEG, "plan", str(ds), "--add-lowres", *common]).wall_s
    budget = ["--epochs", str(args.epochs), "--iters-per-epoch", str(args.iters), "--device", "cpu"]
    for config in CONFIGS:
        t = 0.0
        for fold in range(5):
            t += run_measured([AUTOSEG, "train", scenario, config, str(fold), *budget, *common]).wall_s
        times[f"train {config} (5 folds)"] = t
    times["find-best"] = run_measured([AUTOSEG, "find-best", scenario, *common]).wall_s
    out = root / f"{scenario}_out"
    times["predict"] = run_measured([AUTOSEG, "predict", "-i", str(scans), "-o", str(out), *common]).wall_s
    report = root / f"{scenario}_eval.json"
    evaluate = [AUTOSEG, "evaluate", "--pred", str(out), "--ref", str(refs), "-o", str(report)]
    times["evaluate"] = run_measured([*evaluate, "--dataset-json", str(ds / "dataset.json"), "-q"]).wall_s
    choice = json.loads((work / scenario / "inference.json").read_text())
    scored = json.loads(report.read_text())
    return {
        "scenario": scenario,
        "seconds": times,
        "total_s": sum(times.values()),
        "choice": {k: choice[k] for k in ("configurations", "folds")},
        "held_out_dice": {k: v["dice"] for k, v in scored["per_label"].items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=20, help="training cases per scenario")
    ap.add_argument("--test", type=int, default=4, help="held-out cases per scenario")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--iters", type=int, default=5, help="iterations per epoch")
    ap.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="scenarios_"))
    t0 = time.perf_counter()
    results = [run_scenario(root, s, args) for s in args.scenarios]
    total = time.perf_counter() - t0
    head = "| scenario | plan | train (4 configs x 5 folds) | find-best | predict | evaluate | total s "
    rows = [head + "| choice | held-out Dice |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s: dict[str, float] = r["seconds"]  # type: ignore[assignment]
        train = sum(v for k, v in s.items() if k.startswith("train"))
        held: dict[str, float] = r["held_out_dice"]  # type: ignore[assignment]
        choice: dict[str, list[str]] = r["choice"]  # type: ignore[assignment]
        dice = ", ".join(f"{k} {v:.3f}" for k, v in held.items())
        cells = [f"{s['plan']:.1f}", f"{train:.0f}"]
        cells += [f"{s[k]:.1f}" for k in ("find-best", "predict", "evaluate")]
        cells += [f"{r['total_s']:.0f}", "+".join(choice["configurations"]), dice]
        rows.append(f"| {r['scenario']} | " + " | ".join(cells) + " |")
    print("\n".join(rows))
    print(f"all scenarios: {total:.0f} s")
    out = HERE / "results" / "scenarios.json"
    kept = json.loads(out.read_text()) if out.is_file() else []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    kept.append({"date": stamp, "settings": vars(args), "total_s": total, "results": results})
    out.write_text(json.dumps(kept, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
