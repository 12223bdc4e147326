"""The ``autoseg`` command line: parses arguments, calls :mod:`autoseg.pipeline`, maps errors.

Exit codes: 0 success, 2 bad input (one message per problem, each naming the file and the fix,
no traceback), 1 an unexpected failure (a bug: the traceback is kept). Heavy modules (torch) are
imported inside the commands that need them, so ``autoseg --help`` and ``autoseg plan`` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from autoseg import __version__
from autoseg.errors import AutosegError

log = logging.getLogger("autoseg")

EXIT_BAD_INPUT = 2


def _workspace(args: argparse.Namespace):
    from autoseg.workspace import Workspace

    root = args.work_dir or os.environ.get("AUTOSEG_WORK") or "autoseg_work"
    return Workspace(Path(root))


def _workers(args: argparse.Namespace) -> int:
    from autoseg._parallel import default_workers

    return args.workers if args.workers else default_workers()


def _cmd_verify(args: argparse.Namespace) -> int:
    from autoseg.pipeline import verify

    ws = _workspace(args)
    _, folder = ws.resolve(args.dataset)
    report = verify(folder, workers=_workers(args))
    for w in report.warnings:
        log.warning(w)
    if report.problems:
        for p in report.problems:
            log.error(p)
        log.error("%d problem(s) in %d cases; fix them and run again", len(report.problems), report.n_cases)
        return EXIT_BAD_INPUT
    log.info("%s: %d cases, no problems (%d warnings)", folder, report.n_cases, len(report.warnings))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from autoseg._device import default_gpu_memory_gb
    from autoseg.pipeline import plan
    from autoseg.planning.kinds import KINDS

    ws = _workspace(args)
    _, folder = ws.resolve(args.dataset)
    gpu = args.gpu_memory if args.gpu_memory is not None else default_gpu_memory_gb()
    fp, the_plan = plan(folder, ws, gpu_memory_gb=gpu, workers=_workers(args), add_2p5d=args.add_2p5d)
    out = ws.dataset_dir(the_plan.dataset_name)
    lines = [
        f"plan for {the_plan.dataset_name} ({len(fp.cases)} cases, {gpu:g} GB budget) -> {out / 'plans.json'}"
    ]
    for c in the_plan.configurations.values():
        lines.append(
            f"  {c.name:<20} spacing {_fmt(c.spacing)} patch {_fmt(c.patch_size)} "
            f"batch {c.batch_size} stages {c.network.n_stages}"
            + (f" K={c.in_slices}" if KINDS[c.kind].stacks_slices else "")
        )
    lines += [f"  note: {n}" for n in the_plan.notes]
    log.info("\n".join(lines))
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from autoseg.pipeline import preprocess

    folders = preprocess(
        args.dataset, _workspace(args), configurations=args.configurations, workers=_workers(args)
    )
    for f in folders:
        log.info("preprocessed data: %s", f)
    return 0


def _device(requested: str | None) -> str:
    """``--device``, defaulting to CUDA when present; asking for CUDA without one is bad input."""
    from autoseg._device import cuda_available

    device = requested or ("cuda" if cuda_available() else "cpu")
    if device == "cuda" and not cuda_available():
        msg = "--device cuda: no CUDA device is available here; use --device cpu"
        raise AutosegError(msg)
    return device


def _cmd_train(args: argparse.Namespace) -> int:
    from autoseg.pipeline import train
    from autoseg.training.config import TrainConfig
    from autoseg.training.trainer import TrainingInterrupted

    device = _device(args.device)
    fold = "all" if args.fold == "all" else int(args.fold)
    defaults = TrainConfig(configuration=args.configuration, fold=fold)
    cfg = TrainConfig(
        configuration=args.configuration,
        fold=fold,
        device=device,
        epochs=args.epochs or defaults.epochs,
        iters_per_epoch=args.iters_per_epoch or defaults.iters_per_epoch,
        val_iters=args.val_iters if args.val_iters is not None else defaults.val_iters,
        lr=args.lr,
        loss=args.loss,
        precision=args.precision,
        accumulate=args.accumulate,
        workers=args.workers if args.workers is not None else defaults.workers,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        val_probabilities=not args.no_val_probabilities,
        batch_size=args.batch_size,
    )
    try:
        fold_dir = train(
            args.dataset,
            _workspace(args),
            cfg,
            resume=args.resume,
            group_by=args.group_by,
            preprocess_workers=_workers(args),
        )
    except TrainingInterrupted:
        return 130
    log.info("done: %s", fold_dir)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from autoseg.pipeline import predict

    device = _device(args.device)
    report = predict(
        args.input,
        args.output,
        _workspace(args),
        dataset=args.dataset,
        configurations=args.configurations,
        folds=args.folds,
        device=device,
        precision=args.precision,
        step=args.step,
        tta=not args.no_tta,
        overwrite=args.overwrite,
        save_probabilities=args.save_probabilities,
        checkpoint=args.checkpoint,
        backend=args.backend,
        postprocess=not args.no_postprocessing,
    )
    log.info(
        "%d written, %d skipped (existing; --overwrite to redo), %d failed -> %s",
        len(report.written),
        len(report.skipped),
        len(report.failed),
        args.output,
    )
    if report.failed:
        log.error("autoseg: error: %d input(s) could not be predicted (see above)", len(report.failed))
        return EXIT_BAD_INPUT
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from autoseg.evaluation.evaluate import evaluate_folders

    out = args.output
    summary = evaluate_folders(
        args.pred,
        args.ref,
        out,
        labels=args.labels,
        tolerance_mm=args.tolerance,
        workers=_workers(args),
        plot=args.plot,
    )
    lines = [
        f"{summary['settings']['n_cases']} cases -> {out} (+ {out.with_suffix('.csv').name}"
        + (", box plot" if args.plot else "")
        + ")",
        f"{'label':>8} {'Dice':>7} {'IoU':>7} {'HD95 mm':>8} {'NSD':>7}",
    ]
    for lab, m in summary["per_label"].items():
        lines.append(f"{lab:>8} {m['dice']:7.4f} {m['iou']:7.4f} {m['hd95_mm']:8.2f} {m['nsd']:7.4f}")
    m = summary["mean"]
    lines.append(f"{'mean':>8} {m['dice']:7.4f} {m['iou']:7.4f} {m['hd95_mm']:8.2f} {m['nsd']:7.4f}")
    if args.images is not None:
        from autoseg.evaluation.overlay import save_overlays

        pngs = save_overlays(args.images, args.ref, args.pred, out.parent / f"{out.stem}_overlays")
        lines.append(f"{len(pngs)} overlay PNGs -> {out.parent / f'{out.stem}_overlays'}")
    log.info("\n".join(lines))
    return 0


def _cmd_find_best(args: argparse.Namespace) -> int:
    from autoseg.pipeline import find_best

    info = find_best(
        args.dataset, _workspace(args), configurations=args.configurations, workers=_workers(args)
    )
    lines = ["cross-validation foreground-mean Dice:"]
    lines += [f"  {k:<28} {'n/a' if v is None else f'{v:.4f}'}" for k, v in info["cv_dice"].items()]
    lines.append(
        f"best: {info['best']}; post-processing: {info['postprocessing']} "
        "(used by `autoseg predict` without -c)"
    )
    log.info("\n".join(lines))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from autoseg.pipeline import export

    paths = export(
        args.dataset,
        args.configuration,
        _workspace(args),
        fmt=args.format,
        folds=args.folds,
        out=args.output,
        fp16=args.fp16,
    )
    log.info(
        "exported %d fold(s): %s%s",
        len(paths),
        ", ".join(str(p) for p in paths),
        f" (copy in {args.output})" if args.output else "",
    )
    return 0


def _fold(value: str) -> str:
    if value == "all" or (value.isdigit() and 0 <= int(value) <= 4):
        return value
    msg = f"FOLD must be 0-4 or 'all', got {value!r}"
    raise argparse.ArgumentTypeError(msg)


def _step(value: str) -> float:
    """A sliding-window step: more than 0 (else endless windows), at most 1 (else gaps)."""
    try:
        step = float(value)
    except ValueError:
        step = float("nan")
    if 0 < step <= 1:
        return step
    msg = f"STEP must be a fraction of the patch in (0, 1], got {value!r} (0.5: windows overlap by half)"
    raise argparse.ArgumentTypeError(msg)


def _fmt(v: Sequence[float]) -> str:
    return "x".join(f"{x:g}" for x in v)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    p = argparse.ArgumentParser(
        prog="autoseg",
        description="Self-configuring segmentation of 3D medical images.",
    )
    p.add_argument("--version", action="version", version=f"autoseg {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--work-dir",
        type=Path,
        default=None,
        help="work folder (default: $AUTOSEG_WORK, else ./autoseg_work)",
    )
    common.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: CPUs available, at most 8; for train: "
        "augmentation workers, default 2)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser(
        "verify",
        parents=[common],
        help="check a dataset; writes nothing",
        description="Check every file of a dataset and report all problems.",
    )
    v.add_argument("dataset", help="dataset folder (nnU-Net v2 or MSD layout) or planned name")
    v.set_defaults(func=_cmd_verify)

    pl = sub.add_parser(
        "plan",
        parents=[common],
        help="verify, fingerprint and plan a dataset",
        description="Verify the dataset, extract its fingerprint and write "
        "<work>/<name>/fingerprint.json and plans.json.",
    )
    pl.add_argument("dataset", help="dataset folder (nnU-Net v2 or MSD layout) or planned name")
    pl.add_argument(
        "--gpu-memory",
        type=float,
        default=None,
        metavar="GB",
        help="memory budget for patch and batch size (default: the CUDA device's, else 8)",
    )
    pl.add_argument(
        "--add-2.5d",
        dest="add_2p5d",
        action="store_true",
        help="offer the 2.5d configuration even for data that is not thick-sliced",
    )
    pl.set_defaults(func=_cmd_plan)

    pp = sub.add_parser(
        "preprocess",
        parents=[common],
        help="preprocess a planned dataset",
        description="Preprocess a planned dataset (train does this on first use).",
    )
    pp.add_argument("dataset", help="dataset folder or planned name")
    pp.add_argument(
        "-c",
        "--configurations",
        nargs="+",
        default=None,
        metavar="CONFIG",
        help="configurations to preprocess (default: all in the plan)",
    )
    pp.set_defaults(func=_cmd_preprocess)

    tr = sub.add_parser(
        "train",
        parents=[common],
        help="train one configuration on one fold",
        description="Train CONFIG on FOLD (0-4 or all) of a planned dataset.",
    )
    tr.add_argument("dataset", help="dataset folder or planned name")
    tr.add_argument("configuration", help="a configuration of the plan (2d, 2.5d, 3d_fullres, ...)")
    tr.add_argument("fold", type=_fold, help="0-4, or all")
    tr.add_argument("--epochs", type=int, default=None, help="epochs (default 1000)")
    tr.add_argument("--iters-per-epoch", type=int, default=None, help="iterations per epoch (default 250)")
    tr.add_argument(
        "--val-iters",
        type=int,
        default=None,
        help="validation batches per epoch for the pseudo-Dice (default 50)",
    )
    tr.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    tr.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto: fp16 autocast on CUDA, bf16 on CPUs with native bf16, else fp32",
    )
    tr.add_argument("--accumulate", type=int, default=1, metavar="N", help="gradient accumulation steps")
    tr.add_argument(
        "--loss",
        choices=["dice_ce", "dice_focal"],
        default="dice_ce",
        help="dice_focal for strong class imbalance",
    )
    tr.add_argument("--lr", type=float, default=1e-2, help="initial learning rate")
    tr.add_argument("--batch-size", type=int, default=None, help="override the plan's batch size")
    tr.add_argument("--seed", type=int, default=12345)
    tr.add_argument("--checkpoint-every", type=int, default=5, metavar="EPOCHS")
    tr.add_argument(
        "--continue",
        dest="resume",
        action="store_true",
        help="resume from the latest checkpoint of this fold",
    )
    tr.add_argument(
        "--group-by",
        default=None,
        metavar="REGEX",
        help="case-name pattern whose first group names the patient (no patient in "
        "both training and validation)",
    )
    tr.add_argument(
        "--no-val-probabilities",
        action="store_true",
        help="do not keep validation probabilities (needed for ensembles)",
    )
    tr.set_defaults(func=_cmd_train)

    pr = sub.add_parser(
        "predict",
        parents=[common],
        help="segment new scans",
        description="Segment scans with trained models; outputs CASE.nii.gz on each input's own grid.",
    )
    pr.add_argument(
        "-i",
        "--input",
        type=Path,
        required=True,
        help="a scan, a DICOM series folder, or a folder of scans "
        "(CASE_0000.nii.gz…, CASE.nii.gz, DICOM series sub-folders)",
    )
    pr.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    pr.add_argument(
        "-d",
        "--dataset",
        default=None,
        help="dataset name or folder (default: the only one in the work folder)",
    )
    pr.add_argument(
        "-c",
        "--configurations",
        nargs="+",
        default=None,
        metavar="CONFIG",
        help="configuration(s); several are ensembled (default: find-best's choice, "
        "else the only trained one)",
    )
    pr.add_argument(
        "-f",
        "--folds",
        nargs="+",
        default=None,
        metavar="FOLD",
        help="folds to average (default: all trained)",
    )
    pr.add_argument(
        "--step", type=_step, default=0.5, help="sliding-window step as a fraction of the patch (default 0.5)"
    )
    pr.add_argument("--no-tta", action="store_true", help="no mirror test-time augmentation")
    pr.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    pr.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        default="auto",
        help="auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32",
    )
    pr.add_argument("--overwrite", action="store_true", help="redo existing outputs")
    pr.add_argument(
        "--save-probabilities",
        action="store_true",
        help="also write CASE.npz with softmax probabilities (float16)",
    )
    pr.add_argument(
        "--no-postprocessing",
        action="store_true",
        help="write the raw label maps (default: apply find-best's post-processing, or the model's own)",
    )
    pr.add_argument("--checkpoint", choices=["final", "best", "latest"], default="final")
    pr.add_argument(
        "--backend",
        choices=["torch", "onnx", "tensorrt"],
        default="torch",
        help="run the exported networks (autoseg export) with onnxruntime or TensorRT",
    )
    pr.set_defaults(func=_cmd_predict)

    ev = sub.add_parser(
        "evaluate",
        parents=[common],
        help="score predictions against references",
        description="Per case and label: Dice, IoU, HD95, normalised surface "
        "Dice, sensitivity, specificity, precision, volume difference; JSON + CSV.",
    )
    ev.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps")
    ev.add_argument("--ref", type=Path, required=True, help="folder of reference label maps")
    ev.add_argument("-o", "--output", type=Path, required=True, help="FILE.json (a CSV beside it)")
    ev.add_argument(
        "--labels",
        type=int,
        nargs="+",
        default=None,
        help="labels to score (default: every nonzero value in the references)",
    )
    ev.add_argument(
        "--tolerance", type=float, default=1.0, metavar="MM", help="surface Dice tolerance in mm (default 1)"
    )
    ev.add_argument("--plot", action="store_true", help="also save a box plot PNG")
    ev.add_argument(
        "--images",
        type=Path,
        default=None,
        help="folder of the scans: also save a PNG per case (a slice with the "
        "reference and predicted outlines) in <stem>_overlays/",
    )
    ev.set_defaults(func=_cmd_evaluate)

    fb = sub.add_parser(
        "find-best",
        parents=[common],
        help="choose configuration/ensemble and post-processing from CV",
        description="Compare the trained configurations and their pairwise "
        "ensembles on the folds' validation predictions; record the best and its "
        "post-processing for `autoseg predict`.",
    )
    fb.add_argument("dataset", help="dataset name or folder")
    fb.add_argument(
        "-c",
        "--configurations",
        nargs="+",
        default=None,
        metavar="CONFIG",
        help="configurations to consider (default: all trained)",
    )
    fb.set_defaults(func=_cmd_find_best)

    ex = sub.add_parser(
        "export",
        parents=[common],
        help="export a trained model (ONNX, TensorRT)",
        description="Export the fold networks of a trained configuration (dynamic "
        "batch) with a JSON sidecar, into the model folder where `predict "
        "--backend onnx|tensorrt` finds them.",
    )
    ex.add_argument("dataset", help="dataset name or folder")
    ex.add_argument("configuration", help="trained configuration")
    ex.add_argument("--format", choices=["onnx", "tensorrt"], default="onnx")
    ex.add_argument(
        "-f",
        "--folds",
        nargs="+",
        default=None,
        metavar="FOLD",
        help="folds to export (default: every trained fold)",
    )
    ex.add_argument(
        "-o", "--output", type=Path, default=None, help="also copy the exported files here (ONNX)"
    )
    ex.add_argument("--fp16", action="store_true", help="TensorRT: allow fp16 kernels")
    ex.set_defaults(func=_cmd_export)
    return p


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (test harnesses swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _setup_logging(args: argparse.Namespace) -> None:
    """Console shows INFO (or WARNING with -q, DEBUG with -v); the loggers themselves pass INFO
    on, so a run's log file keeps the whole story whatever the console shows."""
    console = _StderrHandler()
    console.setFormatter(logging.Formatter("%(message)s"))
    console.setLevel(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[console], force=True)
    logging.captureWarnings(True)
    logging.getLogger("numexpr").setLevel(logging.WARNING)  # "NumExpr defaulting to N threads"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    args = build_parser().parse_args(argv)
    _setup_logging(args)
    try:
        return int(args.func(args))
    except AutosegError as e:
        msg = str(e)
        log.error("autoseg: error: %s", msg)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log.error("autoseg: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
