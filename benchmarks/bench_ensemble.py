"""What the 5-fold ensemble buys over one fold, on cases no fold has seen (issue 16, part 4).

Hippocampus (../shared/data, 200 labelled cases): 40 cases are held out (a seeded draw, the same
every time, kept in the results file and checked against it), the other 160 are the dataset whose
5 folds train (autoseg's default split of them: 128 training, 32 validation cases each), every fold
at the budget-curve shape: 32 epochs x 45 iterations of batch 7 = 1440 iterations, 5 validation
iterations per epoch (``bench_budget.py``), about an hour per fold on 2 CPU cores.

Five hours of training do not fit one session, and a session's machine may not keep its files
for the next one. So each fold is trained, then predicts the held-out cases alone (mirroring on,
the default; raw label maps, no post-processing) with ``--save-probabilities``; its Dice is a row
of ``results/ensemble_hippocampus.json`` and its probabilities are kept in the repository,
``results/ensemble_hippocampus/fold_K/`` (foreground channels in uint8 steps of 1/255: 0.19 MB a
fold instead of 3.6 MB as the predictor's float16 ``CASE.npz``). The
ensemble is then the mean of the five folds' kept probabilities, case by case, turned into labels
by the rule the predictor and find-best use (:func:`autoseg.evaluation.find_best.ensemble_labels`),
written with the held-out image's geometry and scored by ``autoseg evaluate`` like the folds.
Each fold's label maps are rebuilt from its kept probabilities and compared with what ``predict``
wrote: the 1/255 steps flip a few near-ties (counted in its row); differences in more than 5 %
of the foreground voxels stop the run.

A fold already trained is skipped; a fold whose run was stopped continues from its last checkpoint
(``--continue``, written every 5 epochs) when the work folder is still there:

    .venv/bin/python benchmarks/bench_ensemble.py --train 0        # ~1.1 h, then ~1 min predict
    .venv/bin/python benchmarks/bench_ensemble.py --train 1 2      # ~2.2 h
    .venv/bin/python benchmarks/bench_ensemble.py --evaluate       # all 5 kept: ~1 min
    .venv/bin/python benchmarks/bench_ensemble.py --table

Writes results/ensemble_hippocampus.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import AUTOSEG, HERE, ROOT, SHARED, append_row, read_rows
from bench_budget import ITERS_PER_EPOCH, train_command
from bench_train import _run, _today

from autoseg.evaluation.find_best import ensemble_labels
from autoseg.inference.probabilities import ProbabilityMap
from autoseg.io.image import read_image, write_image
from autoseg.labels import LabelScheme

RESULTS = HERE / "results" / "ensemble_hippocampus.json"
DATASET = "hippocampus_dev"
N_HELD_OUT = 40
HELD_OUT_SEED = 2026
EPOCHS = 32
BATCH = 7
SEED = 12345
FOLDS = (0, 1, 2, 3, 4)
log = logging.getLogger("bench_ensemble")


def held_out_cases(case_ids: list[str], n: int = N_HELD_OUT, seed: int = HELD_OUT_SEED) -> list[str]:
    """``n`` of the sorted ids, drawn by a seeded permutation (the same on every machine)."""
    ids = sorted(case_ids)
    order = np.random.RandomState(seed).permutation(len(ids))
    return sorted(ids[i] for i in order[:n])


def build(msd: Path, dest: Path, n_held_out: int = N_HELD_OUT) -> list[str]:
    """The development dataset (nnU-Net v2 layout, links to the MSD files) and the held-out
    images and labels beside it; returns the held-out ids."""
    meta = json.loads((msd / "dataset.json").read_text())
    cases = {Path(e["image"]).name.removesuffix(".nii.gz"): e for e in meta["training"]}
    held = held_out_cases(list(cases), n_held_out)
    if (dest / DATASET / "dataset.json").is_file():
        return held
    ds, test_images, test_labels = dest / DATASET, dest / "held_out" / "images", dest / "held_out" / "labels"
    for d in (ds / "imagesTr", ds / "labelsTr", test_images, test_labels):
        d.mkdir(parents=True, exist_ok=True)
    for case, e in cases.items():
        images, labels = (test_images, test_labels) if case in held else (ds / "imagesTr", ds / "labelsTr")
        (images / f"{case}_0000.nii.gz").symlink_to((msd / e["image"]).resolve())
        (labels / f"{case}.nii.gz").symlink_to((msd / e["label"]).resolve())
    labels = {name: int(value) for value, name in meta["labels"].items()}
    dataset = {"channel_names": {"0": "MRI"}, "labels": labels, "file_ending": ".nii.gz"}
    dataset["numTraining"] = len(cases) - len(held)
    (ds / "dataset.json").write_text(json.dumps(dataset, indent=1))
    return held


def _check_held_out(results: Path, held: list[str]) -> None:
    for r in read_rows(results):
        if r.get("held_out") not in (None, held):
            sys.exit(f"{results.name} was made with another held-out set: the runs would not add up")


def _fold_dir(work: Path, fold: int) -> Path:
    return work / "models" / DATASET / "models" / "3d_fullres" / f"fold_{fold}"


def train_fold(
    work: Path, results: Path, fold: int, held: list[str], epochs: int = EPOCHS, iters: int = ITERS_PER_EPOCH
) -> None:
    """Train one fold unless it already finished (or continue it from its last checkpoint); a row
    with its time and validation Dice. A continued fold's hours are this run's plus the seconds
    of the epochs it kept (the epochs redone after the checkpoint are counted once)."""
    model = _fold_dir(work, fold)
    if (model / "validation" / "summary.json").is_file():
        log.info("fold %d is trained (%s): skipped", fold, model)
        return
    if any(r["kind"] == "fold" and r["fold"] == fold for r in read_rows(results)):
        sys.exit(f"fold {fold} has a row in {results.name} but no model in {work}: remove the row to retrain")
    if not (work / "models" / DATASET / "plans.json").is_file():
        _run([AUTOSEG, "plan", str(work / DATASET), "--work-dir", str(work / "models"), "-q"])
    cmd = train_command(work / "models", DATASET, "3d_fullres", fold, epochs, BATCH, SEED, iters)
    kept_epochs, kept_s = _kept_epochs(model)
    if kept_epochs:
        log.info("fold %d: continuing after epoch %d (%.2f h kept)", fold, kept_epochs - 1, kept_s / 3600)
        cmd.append("--continue")
    wall = _run(cmd)
    summary = json.loads((model / "validation" / "summary.json").read_text())
    append_row(
        results,
        {
            "kind": "fold",
            "fold": fold,
            "date": _today(),
            "hours": (wall + kept_s) / 3600,
            "iters": epochs * iters,
            **({"continued_after_epoch": kept_epochs - 1} if kept_epochs else {}),
            "held_out": held,
            "val_dice": [summary["mean"]["1"], summary["mean"]["2"]],
            "val_dice_mean": summary["foreground_mean"],
        },
    )


def _kept_epochs(model: Path) -> tuple[int, float]:
    """How many epochs a stopped run of this fold kept in its last checkpoint, and their seconds
    (from its progress.jsonl); (0, 0.0) when it has no checkpoint yet."""
    from autoseg.training.checkpoint import load_checkpoint
    from autoseg.training.progress import read_records

    ckpt = model / "checkpoint_latest.pt"
    if not ckpt.is_file():
        return 0, 0.0
    epoch = int(load_checkpoint(ckpt)["epoch"])
    return epoch, sum(r["seconds"] for r in read_records(model / "progress.jsonl") if r["epoch"] < epoch)


def kept_dir(results: Path, fold: int) -> Path:
    """Where a fold's held-out probabilities are kept: beside its results file, in the repository."""
    return results.with_suffix("") / f"fold_{fold}"


def _scheme(work: Path) -> LabelScheme:
    meta = json.loads((work / DATASET / "dataset.json").read_text())
    return LabelScheme.from_declared(meta["labels"])


def _score(work: Path, pred: Path, name: str) -> dict:
    """``autoseg evaluate`` of a folder of held-out label maps; its summary."""
    scores = work / "scores" / f"{name}.json"
    _run(
        [
            AUTOSEG,
            "evaluate",
            "--pred",
            str(pred),
            "--ref",
            str(work / "held_out" / "labels"),
            "-o",
            str(scores),
        ]
    )
    return json.loads(scores.read_text())


def _held_out_row(members: list[int], seconds: float, held: list[str], s: dict) -> dict:
    return {
        "kind": "held_out",
        "members": members,
        "date": _today(),
        "predict_s": seconds,
        "held_out": held,
        "dice": [s["per_label"]["1"]["dice"], s["per_label"]["2"]["dice"]],
        "dice_mean": s["mean"]["dice"],
        "hd95_mean": s["mean"].get("hd95_mm"),
    }


def _has_row(results: Path, members: list[int]) -> bool:
    return any(r["kind"] == "held_out" and r["members"] == members for r in read_rows(results))


def _is_kept(results: Path, fold: int, held: list[str]) -> bool:
    """The fold's probabilities of every held-out case are in the repository."""
    return len(list(kept_dir(results, fold).glob("*.npz"))) == len(held)


def _predict(work: Path, out: Path, folds: list[int], *flags: str) -> float:
    """``autoseg predict`` of the held-out images with ``folds`` of 3d_fullres (raw label maps); seconds."""
    cmd = [AUTOSEG, "predict", "-i", str(work / "held_out" / "images"), "-o", str(out)]
    cmd += ["--work-dir", str(work / "models"), "-d", DATASET, "-c", "3d_fullres", "--device", "cpu"]
    return _run([*cmd, "-f", *map(str, folds), "--no-postprocessing", "--overwrite", "-q", *flags])


def _differing(a: Path, b: Path, held: list[str]) -> tuple[int, int, int]:
    """Voxels where two folders' label maps of the held-out cases differ, voxels either calls
    foreground, and all voxels."""
    differ, foreground, total = 0, 0, 0
    for case in held:
        x, y = (read_image(d / f"{case}.nii.gz").array for d in (a, b))
        differ += int((x != y).sum())
        foreground += int(((x > 0) | (y > 0)).sum())
        total += x.size
    return differ, foreground, total


def score_fold(work: Path, results: Path, fold: int, held: list[str]) -> None:
    """The fold alone on the held-out cases (a row) and its probabilities kept for the ensemble;
    skipped when both are there already."""
    kept = kept_dir(results, fold)
    if _has_row(results, [fold]) and _is_kept(results, fold, held):
        log.info("fold %d: held-out scores and probabilities kept already (%s)", fold, kept)
        return
    out = work / "predictions" / f"fold_{fold}"
    seconds = _predict(work, out, [fold], "--save-probabilities")
    summary = _score(work, out, f"fold_{fold}")
    kept.mkdir(parents=True, exist_ok=True)
    scheme = _scheme(work)
    for case in held:
        keep(out / f"{case}.npz", kept / f"{case}.npz", scheme)
    row = _held_out_row([fold], seconds, held, summary)
    row["voxels_rebuilt_unlike_predict"] = _check_rebuilt(work, kept, out, held)
    append_row(results, row)


def keep(npz: Path, dest: Path, scheme: LabelScheme) -> None:
    """Keep a predictor's ``CASE.npz`` as its foreground channels in uint8 steps of 1/255 (the
    background is 1 minus their sum; softmax labels only, as hippocampus has): fold 0's 40 cases
    take 0.19 MB so, 3.56 MB as the float16 file, and all five folds live in the repository."""
    p = ProbabilityMap.load(npz, scheme=scheme).probabilities
    np.savez_compressed(dest, foreground=np.round(p[1:].astype(np.float32) * 255).astype(np.uint8))


def _load_kept(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """``(n_labels, Z, Y, X)`` float32 probabilities from a kept file (see :func:`keep`)."""
    with np.load(path, allow_pickle=False) as f:
        fg = f["foreground"].astype(np.float32) / 255
    if fg.shape[1:] != shape:
        sys.exit(f"{path}: kept probabilities of shape {fg.shape[1:]}, the image is {shape}")
    return np.concatenate([1 - fg.sum(axis=0, keepdims=True), fg])


def _labels_from_kept(work: Path, folds: list[Path], held: list[str], out: Path) -> None:
    """Label maps of the mean of the kept probabilities of ``folds``, one per held-out case."""
    scheme = _scheme(work)
    out.mkdir(parents=True, exist_ok=True)
    for case in held:
        image = read_image(work / "held_out" / "images" / f"{case}_0000.nii.gz")
        probs = [_load_kept(d / f"{case}.npz", image.array.shape) for d in folds]
        labels = ensemble_labels(probs, scheme)
        write_image(labels, image.geometry, out / f"{case}.nii.gz")


def _check_rebuilt(work: Path, kept: Path, predicted: Path, held: list[str]) -> int:
    """Voxels where the label maps rebuilt from one fold's kept probabilities are not the
    predictor's: a few, where the 1/255 steps flip a near-tie (more for an untrained network's
    near-uniform probabilities); exit when they are over 5 % of the voxels either map calls
    foreground (a wrong grid or axis order, which would make the ensemble meaningless)."""
    rebuilt = work / "rebuilt" / kept.name
    _labels_from_kept(work, [kept], held, rebuilt)
    differ, foreground, total = _differing(rebuilt, predicted, held)
    if differ > 0.05 * foreground:
        sys.exit(
            f"{kept}: labels rebuilt from the kept probabilities differ from predict's in "
            f"{differ} voxels, {foreground} foreground in either"
        )
    log.info(
        "%s: the kept probabilities give predict's labels but in %d of %d voxels", kept.name, differ, total
    )
    return differ


def evaluate(work: Path, results: Path, held: list[str]) -> None:
    """The 5 folds together on the held-out cases, from their kept probabilities (a row)."""
    missing = [k for k in FOLDS if not _is_kept(results, k, held)]
    if missing:
        sys.exit(
            f"folds {missing} have no kept held-out probabilities yet: --train {' '.join(map(str, missing))}"
        )
    if _has_row(results, list(FOLDS)):
        log.info("the ensemble is scored already (%s)", results.name)
    else:
        _score_ensemble(work, results, held)
    if not any(r["kind"] == "paired" for r in read_rows(results)):
        append_row(results, paired(work, results, held))


def _score_ensemble(work: Path, results: Path, held: list[str]) -> None:
    out = work / "predictions" / "ensemble"
    t0 = time.perf_counter()
    _labels_from_kept(work, [kept_dir(results, k) for k in FOLDS], held, out)
    seconds = time.perf_counter() - t0
    single = {
        r["members"][0]: r["predict_s"]
        for r in read_rows(results)
        if r["kind"] == "held_out" and len(r["members"]) == 1
    }
    row = _held_out_row(
        list(FOLDS), sum(single.get(k, 0.0) for k in FOLDS), held, _score(work, out, "ensemble")
    )
    row["combine_s"] = seconds
    if all((_fold_dir(work, k) / "checkpoint_final.pt").is_file() for k in FOLDS):
        row["voxels_unlike_predict"] = _unlike_predict(work, out, held)
    append_row(results, row)


def paired(work: Path, results: Path, held: list[str]) -> dict:
    """Case by case, the ensemble against each fold alone (a row): on how many held-out cases
    its Dice (mean of the labels) is higher, the mean difference, and the Wilcoxon signed-rank
    p-value of the differences. A mean over 40 cases can move by the width of the single folds'
    spread through a handful of cases; this says whether the gain is broad. Every label map is
    rebuilt from the kept probabilities, so only results/ and the held-out cases are needed."""
    from scipy.stats import wilcoxon

    def case_dice(members: list[int], name: str) -> dict[str, float]:
        out = work / "rebuilt" / name
        _labels_from_kept(work, [kept_dir(results, k) for k in members], held, out)
        _score(work, out, name)
        per: dict[str, list[float]] = {}
        with (work / "scores" / f"{name}.csv").open() as f:
            for r in csv.DictReader(f):
                per.setdefault(r["case"], []).append(float(r["dice"]))
        return {c: float(np.nanmean(v)) for c, v in per.items()}

    ensemble = case_dice(list(FOLDS), "rebuilt_ensemble")
    folds = {}
    for k in FOLDS:
        alone = case_dice([k], f"rebuilt_fold_{k}")
        diff = np.array([ensemble[c] - alone[c] for c in held])
        folds[str(k)] = {
            "better": int((diff > 0).sum()),
            "worse": int((diff < 0).sum()),
            "mean_diff": float(diff.mean()),
            "wilcoxon_p": float(wilcoxon(diff).pvalue) if diff.any() else 1.0,
        }
    return {"kind": "paired", "date": _today(), "held_out": held, "folds": folds}


def _unlike_predict(work: Path, ensembled: Path, held: list[str]) -> int:
    """Voxels where the ensemble of kept probabilities differs from ``predict -f 0 1 2 3 4``
    (only where all five models are still in the work folder, e.g. a smoke test)."""
    out = work / "predictions" / "ensemble_predict"
    _predict(work, out, list(FOLDS))
    n = _differing(ensembled, out, held)[0]
    log.info("the ensemble of kept probabilities differs from predict's 5-fold ensemble in %d voxels", n)
    return n


def table(rows: list[dict]) -> str:
    folds = [r for r in rows if r["kind"] == "fold"]
    held = [r for r in rows if r["kind"] == "held_out"]
    n_held = len(next((r["held_out"] for r in rows if r.get("held_out")), [])) or N_HELD_OUT
    iters = sorted({r["iters"] for r in folds}) or [EPOCHS * ITERS_PER_EPOCH]
    lines = [
        f"## 5-fold ensemble vs one fold: hippocampus, {n_held} held-out cases, CPU (2 cores)",
        "",
        f"5 folds of 3d_fullres at {'/'.join(map(str, iters))} iterations of batch {BATCH} (seed "
        f"{SEED}) on the development cases; {n_held} cases held out of every fold (seed "
        f"{HELD_OUT_SEED}). Each fold predicts them alone (mirroring on, raw label maps, no "
        "post-processing); the ensemble is the mean of the 5 folds' kept probabilities, its "
        "'predict s' the sum of theirs. Dice on the held-out cases.",
        "",
        "| fold | date | hours | validation Dice (its own validation cases) |",
        "|---:|---|---:|---:|",
    ]
    lines += [
        f"| {r['fold']} | {r['date']} | {r['hours']:.2f}{_continued(r)} | {r['val_dice_mean']:.4f} |"
        for r in folds
    ]
    lines += [
        "",
        "| model | predict s | Dice ant. | Dice post. | Dice mean | HD95 mean (mm) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in held:
        name = "5-fold ensemble" if len(r["members"]) > 1 else f"fold {r['members'][0]} alone"
        hd = "" if r.get("hd95_mean") is None else f"{r['hd95_mean']:.2f}"
        lines.append(
            f"| {name} | {r['predict_s']:.1f} | {r['dice'][0]:.4f} | {r['dice'][1]:.4f} | "
            f"{r['dice_mean']:.4f} | {hd} |"
        )
    singles = [r["dice_mean"] for r in held if len(r["members"]) == 1]
    ens = [r["dice_mean"] for r in held if len(r["members"]) > 1]
    if singles and ens:
        zero = [r["dice_mean"] for r in held if r["members"] == [0]]
        lines += [
            "",
            f"Ensemble - fold 0 alone: {ens[-1] - zero[-1]:+.4f}; ensemble - mean of single folds: "
            f"{ens[-1] - statistics.mean(singles):+.4f} "
            f"(single folds {min(singles):.4f} to {max(singles):.4f}).",
        ]
        for r in rows:
            if r["kind"] != "paired":
                continue
            lines += [
                "",
                f"Case by case ({len(r['held_out'])} held-out cases, label maps rebuilt from the kept "
                "probabilities; Dice of a case = mean of its labels):",
                "",
                "| ensemble vs | cases better | cases worse | mean difference | Wilcoxon p |",
                "|---|---:|---:|---:|---:|",
            ]
            lines += [
                f"| fold {k} alone | {p['better']} | {p['worse']} | {p['mean_diff']:+.4f} "
                f"| {p['wilcoxon_p']:.2f} |"
                for k, p in r["folds"].items()
            ]
    elif len(folds) < len(FOLDS):
        lines += ["", f"{len(folds)} of {len(FOLDS)} folds trained; the ensemble is scored when all are."]
    return "\n".join(lines) + "\n"


def _continued(row: dict) -> str:
    after = row.get("continued_after_epoch")
    return "" if after is None else f" (continued after epoch {after})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "hippocampus")
    ap.add_argument(
        "--work",
        type=Path,
        default=ROOT.parent / "bench_work" / "ensemble",
        help="models, predictions (default: ../bench_work/ensemble); the ensemble needs only results/",
    )
    ap.add_argument("--train", type=int, nargs="*", default=[], choices=FOLDS, help="folds to train")
    ap.add_argument("--evaluate", action="store_true", help="score the 5-fold ensemble (kept probabilities)")
    ap.add_argument("--table", action="store_true", help="only rewrite the table")
    ap.add_argument("--epochs", type=int, default=EPOCHS, help="a smoke test's shorter runs")
    ap.add_argument("--iters", type=int, default=ITERS_PER_EPOCH, help="iterations per epoch")
    ap.add_argument("--held-out", type=int, default=N_HELD_OUT, help="cases held out (a smoke test's fewer)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the runs file (a smoke test's own)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    work, results = args.work.resolve(), args.results.resolve()
    if not args.table:
        held = build(args.data.resolve(), work, args.held_out)
        _check_held_out(results, held)
        for fold in args.train:
            if _has_row(results, [fold]) and _is_kept(results, fold, held):
                log.info("fold %d: trained and scored in an earlier run: skipped", fold)
                continue
            t0 = time.perf_counter()
            train_fold(work, results, fold, held, args.epochs, args.iters)
            score_fold(work, results, fold, held)
            log.info("fold %d: %.1f min", fold, (time.perf_counter() - t0) / 60)
        if args.evaluate:
            evaluate(work, results, held)
    text = table(read_rows(results))
    print(text)
    results.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
