"""Predicting a cohort with the stages overlapped vs one stage after another (issue 15).

Two cohorts, TTA off, CPU, whole `autoseg predict` command (wall seconds, peak RSS):

* the 40 fold-0 validation cases of hippocampus with a model trained on fold 0 (``--work``:
  a work folder from ``bench_train.py --keep-work``), where reading and writing are a large share;
* 4 copies of the large CT of ``bench_large_ct.py`` (458x379x420 voxels, 42-class throwaway
  model planned at 3 mm), where memory is what an overlap could cost.

Variants: ``--read-ahead 0 --write-behind 0`` (in turn, the default on the CPU), 1 and 1 (the
default on a GPU; cases overlap while at most 100 M voxels are in flight), 2 and 2, 1 and 1
without the voxel limit, and with ``--before REV`` the code of a git revision before the
overlap existed (run from a temporary worktree with the same interpreter; the model in
``--work`` must be one it can read: train it with that revision, a plan of a newer schema is
refused). Each variant runs ``--repeats`` times in rotation; the table gives the median wall
time and the largest peak. Runs add up in benchmarks/results/cohort_predict_cpu.json; the table,
cohort_predict_cpu.md, shows each cohort from the newest run that measured it.

    git worktree add --detach /tmp/before 390635c && cd /tmp/before
    ../main/.venv/bin/python -m autoseg plan ../shared/data/hippocampus --work-dir /tmp/cw
    ../main/.venv/bin/python -m autoseg train hippocampus 3d_fullres 0 --work-dir /tmp/cw \\
        --device cpu --epochs 1 --iters-per-epoch 5 --val-iters 1   # timing only: any weights do
    cd ../main && git worktree remove --force /tmp/before
    .venv/bin/python benchmarks/bench_cohort.py --work /tmp/cw --before 390635c [--skip-ct]

Time nothing else while it runs (2 shared cores).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import HERE, ROOT, SHARED, run_measured, write_result
from bench_large_ct import make_input, train_model

log = logging.getLogger("bench")

_ONE_EACH = ["--read-ahead", "1", "--write-behind", "1"]
VARIANTS: dict[str, list[str]] = {
    "in turn (0/0, the CPU default)": ["--read-ahead", "0", "--write-behind", "0"],
    "overlapped (1/1, the GPU default)": _ONE_EACH,
    "overlapped (2/2)": ["--read-ahead", "2", "--write-behind", "2"],
    "overlapped (1/1), no voxel limit": [*_ONE_EACH, "--overlap-limit", "100000"],
}


def _predict_cmd(src: Path, out: Path, work: Path, dataset: str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "autoseg",
        "predict",
        *("-i", str(src), "-o", str(out), "--work-dir", str(work), "-d", dataset),
        *("-c", "3d_fullres", "--no-tta", "--device", "cpu", "-q", *extra),
    ]


def measure_cohort(
    name: str,
    src: Path,
    work: Path,
    dataset: str,
    tmp: Path,
    repeats: int,
    before: Path | None,
    extra: list[str],
) -> list[dict[str, object]]:
    """Every variant ``repeats`` times in rotation; one row per variant."""
    variants = dict(VARIANTS)
    cwd: dict[str, Path] = dict.fromkeys(variants, ROOT)
    if before is not None:
        variants = {"before (sequential loop)": [], **variants}
        cwd["before (sequential loop)"] = before
    walls: dict[str, list[float]] = {v: [] for v in variants}
    peaks: dict[str, list[float]] = {v: [] for v in variants}
    env = dict(os.environ, OMP_NUM_THREADS="2")
    for r in range(repeats):
        for v, flags in variants.items():
            out = tmp / f"out_{name}_{r}_{len(walls[v])}_{abs(hash(v))}"
            run = run_measured(_predict_cmd(src, out, work, dataset, [*extra, *flags]), env=env, cwd=cwd[v])
            n = len(list(out.glob("*.nii.gz")))
            if n != len(list(src.iterdir())):
                msg = f"{v}: {n} outputs for {len(list(src.iterdir()))} inputs"
                raise RuntimeError(msg)
            walls[v].append(run.wall_s)
            peaks[v].append(run.peak_mib)
            log.info("%s %s: %.1f s, %.0f MiB", name, v, run.wall_s, run.peak_mib)
            shutil.rmtree(out)
    return [
        {
            "cohort": name,
            "variant": v,
            "wall_s": statistics.median(walls[v]),
            "walls_s": walls[v],
            "peak_mib": max(peaks[v]),
        }
        for v in variants
    ]


def train_ct_model(work: Path, tmp: Path, before: Path | None) -> None:
    """The large CT's throwaway model; trained by the ``--before`` revision when there is one,
    so that its plan is one both revisions read (a newer schema is refused by older code)."""
    if before is None:
        train_model(work, tmp)
        return
    code = (
        "import sys; from pathlib import Path; sys.path.insert(1, 'benchmarks'); "
        "from bench_large_ct import train_model; train_model(Path(sys.argv[1]), Path(sys.argv[2]))"
    )
    subprocess.run([sys.executable, "-c", code, str(work), str(tmp)], cwd=before, check=True)


def latest_rows(runs: list[dict]) -> list[dict[str, object]]:
    """Each cohort's rows from the newest run that measured it (a run may skip the large CT),
    each with its run's date."""
    newest = {r["cohort"]: run["date"] for run in runs for r in run["rows"]}  # runs are in order
    return [
        {**r, "date": run["date"][:10]}
        for run in runs
        for r in run["rows"]
        if newest[r["cohort"]] == run["date"]
    ]


def _table(rows: list[dict[str, object]]) -> list[str]:
    lines = [
        "| cohort | date | variant | wall s (median) | runs | peak RSS MiB | speed-up vs in turn |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    base = {r["cohort"]: r["wall_s"] for r in rows if str(r["variant"]).startswith("in turn")}
    for r in rows:
        runs = ", ".join(f"{w:.1f}" for w in r["walls_s"])  # type: ignore[attr-defined]
        speed = float(base[r["cohort"]]) / float(r["wall_s"])  # type: ignore[arg-type]
        head = f"| {r['cohort']} | {r['date']} | {r['variant']} | {r['wall_s']:.2f} | {runs} |"
        lines.append(f"{head} {r['peak_mib']:.0f} | {speed:.2f}x |")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="work folder with a hippocampus fold-0 model")
    ap.add_argument("--dataset", default="hippocampus", help="the dataset's name in --work")
    ap.add_argument("--folds", nargs="*", default=[], help="predict with these folds only (-f)")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "hippocampus")
    ap.add_argument("--ct", type=Path, default=SHARED / "data" / "ct_sample")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ct-copies", type=int, default=4)
    ap.add_argument("--ct-repeats", type=int, help="repeats of the CT cohort (default: --repeats)")
    ap.add_argument("--before", help="git revision to time as the sequential baseline")
    ap.add_argument("--skip-ct", action="store_true")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        before = None
        if args.before:
            before = tmp / "before"
            subprocess.run(
                ["git", "worktree", "add", "--detach", str(before), args.before], cwd=ROOT, check=True
            )
        try:
            hippo = tmp / "hippo_in"
            hippo.mkdir()
            splits = json.loads((args.work / args.dataset / "splits.json").read_text())
            for c in splits[0]["val"]:
                shutil.copy(args.data / "imagesTr" / f"{c}.nii.gz", hippo)
            rows += measure_cohort(
                f"hippocampus {len(splits[0]['val'])}",
                hippo,
                args.work.resolve(),
                args.dataset,
                tmp,
                args.repeats,
                before,
                ["-f", *args.folds] if args.folds else [],
            )
            if not args.skip_ct:
                ct_work = tmp / "ct_work"
                train_ct_model(ct_work, tmp, before)
                ct = tmp / "ct_in"
                ct.mkdir()
                size = make_input(args.ct / "example_ct.nii.gz", ct / "big_0.nii.gz")
                for i in range(1, args.ct_copies):
                    shutil.copy(ct / "big_0.nii.gz", ct / f"big_{i}.nii.gz")
                name = f"large CT x{args.ct_copies} ({'x'.join(map(str, size))})"
                rows += measure_cohort(
                    name,
                    ct,
                    ct_work,
                    "ct_sample",
                    tmp,
                    args.ct_repeats or args.repeats,
                    before,
                    ["--precision", "fp32"],
                )
        finally:
            if before is not None:
                subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, check=False)
    store = HERE / "results" / "cohort_predict_cpu.json"
    runs = json.loads(store.read_text()) if store.is_file() else []
    runs.append({"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "rows": rows})
    store.write_text(json.dumps(runs, indent=1) + "\n")
    lines = [
        "## predict a cohort: stages overlapped vs in turn, TTA off, CPU "
        f"({os.cpu_count()} cores), whole command",
        "",
        *_table(latest_rows(runs)),
        "",
        "in turn = `--read-ahead 0 --write-behind 0`; overlapped (a/b) = `--read-ahead a --write-behind b`;",
        "before = the sequential loop of the revision given with --before. Each cohort from the",
        "newest run that measured it (every run: cohort_predict_cpu.json).",
    ]
    write_result("cohort_predict_cpu.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
