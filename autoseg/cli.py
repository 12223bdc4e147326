"""The ``autoseg`` command line: parses arguments, calls :mod:`autoseg.pipeline`, maps errors.

The sub-parsers are built from the options dataclasses (:class:`~autoseg.training.config.TrainConfig`
and :mod:`autoseg.command_options`), which hold every option's default, choices, range and help;
out-of-range numbers, nan and inf are refused while parsing (exit 2, one line naming the flag).

Exit codes: 0 success, 2 bad input (one message per problem, each naming the file and the fix,
no traceback), 1 an unexpected failure (a bug: the traceback is kept). Heavy modules (torch) are
imported inside the commands that need them, so ``autoseg --help`` and ``autoseg plan`` start fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoseg import __version__
from autoseg._fs import fs_error, is_environment_error
from autoseg.command_options import (
    CommonOptions,
    EvaluateOptions,
    ExportOptions,
    FindBestOptions,
    PlanOptions,
    PredictOptions,
    PreprocessOptions,
    SendOptions,
    TrainRunOptions,
    VerifyOptions,
)
from autoseg.dicom_node import DicomNode
from autoseg.errors import AutosegError, DatasetError
from autoseg.options import describe, from_values, parse_fold
from autoseg.training.config import TrainConfig

if TYPE_CHECKING:
    from autoseg.workspace import Workspace

log = logging.getLogger("autoseg")

EXIT_BAD_INPUT = 2

#: The options dataclasses of each command (every command also has CommonOptions'); the
#: positional arguments and required paths are added in :func:`build_parser`.
COMMAND_OPTIONS: dict[str, tuple[type, ...]] = {
    "verify": (VerifyOptions,),
    "plan": (PlanOptions,),
    "preprocess": (PreprocessOptions,),
    "train": (TrainConfig, TrainRunOptions),
    "predict": (PredictOptions,),
    "evaluate": (EvaluateOptions,),
    "find-best": (FindBestOptions,),
    "export": (ExportOptions,),
    "send": (SendOptions,),
}


def _workspace(args: argparse.Namespace) -> Workspace:
    from autoseg.workspace import Workspace

    root = args.work_dir or os.environ.get("AUTOSEG_WORK") or "autoseg_work"
    return Workspace(Path(root))


def _options(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """The command's options dataclass from the parsed arguments (unset ones keep its defaults)."""
    return from_values(cls, vars(args), **fixed)


def _preprocess_workers(opts: Any) -> int:
    """``--preprocess-workers``, else the deprecated ``--workers`` (0 meant the default), else the
    CPUs available (at most 8)."""
    from autoseg._parallel import default_workers

    _warn_legacy_workers(opts)
    return opts.preprocess_workers or opts.legacy_workers or default_workers()


def _warn_legacy_workers(opts: Any) -> None:
    if opts.legacy_workers is not None:
        advice = next(d.option.deprecated for d in describe(type(opts)) if d.name == "legacy_workers")
        log.warning("--workers is deprecated: %s", advice)


def _cmd_verify(args: argparse.Namespace) -> int:
    from autoseg.pipeline import verify

    opts = _options(VerifyOptions, args)
    ws = _workspace(args)
    _, folder = ws.resolve(args.dataset)
    report = verify(folder, workers=_preprocess_workers(opts))
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

    opts = _options(PlanOptions, args)
    ws = _workspace(args)
    _, folder = ws.resolve(args.dataset)
    gpu = opts.gpu_memory if opts.gpu_memory is not None else default_gpu_memory_gb()
    fp, the_plan = plan(
        folder,
        ws,
        gpu_memory_gb=gpu,
        workers=_preprocess_workers(opts),
        add_2p5d=opts.add_2p5d,
        add_lowres=opts.add_lowres,
        presets=opts.presets or (),
        preset_gpu_memory_gb=opts.gpu_memory,
    )
    out = ws.dataset_dir(the_plan.dataset_name)
    lines = [
        f"plan for {the_plan.dataset_name} ({len(fp.cases)} cases, {gpu:g} GB budget) -> {out / 'plans.json'}"
    ]
    for c in the_plan.configurations.values():
        lines.append(
            f"  {c.name:<20} spacing {_fmt(c.spacing)} patch {_fmt(c.patch_size)} "
            f"batch {c.batch_size} stages {c.network.n_stages}"
            + (f" K={c.in_slices}" if KINDS[c.kind].stacks_slices else "")
            + (
                f" blocks {','.join(map(str, c.network.blocks_per_stage))}"
                if c.network.blocks_per_stage
                else ""
            )
        )
    lines += [f"  note: {n}" for n in the_plan.notes]
    log.info("\n".join(lines))
    return 0


def _cmd_preprocess(args: argparse.Namespace) -> int:
    from autoseg.pipeline import preprocess

    opts = _options(PreprocessOptions, args)
    folders = preprocess(
        args.dataset,
        _workspace(args),
        configurations=_list(opts.configurations),
        workers=_preprocess_workers(opts),
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


def train_config(args: argparse.Namespace, fold: Any = None) -> TrainConfig:
    """The :class:`TrainConfig` of parsed ``train`` arguments: unset options keep the dataclass
    defaults, except the device (CUDA when available) and the deprecated ``--workers``. The fold
    is ``fold``, else the first FOLD given.

    Raises:
        AutosegError: ``--device cuda`` without a CUDA device, or both ``--time`` and ``--epochs``.
    """
    if getattr(args, "time_limit", None) is not None and args.epochs is not None:
        msg = (
            "--time and --epochs exclude each other: --time decides how many epochs fit in the time; "
            "give one of them"
        )
        raise AutosegError(msg)
    if fold is None:
        fold = args.fold[0] if isinstance(args.fold, list) else args.fold
    run = _options(TrainRunOptions, args)
    augment = args.workers
    if augment is None and run.legacy_workers is not None:
        augment = run.legacy_workers
    values = {**vars(args), "workers": augment}
    return from_values(
        TrainConfig, values, configuration=args.configuration, fold=fold, device=_device(args.device)
    )


def _cmd_train(args: argparse.Namespace) -> int:
    from autoseg.pipeline import train
    from autoseg.training.trainer import TrainingInterrupted

    run = _options(TrainRunOptions, args)
    folds = args.fold if isinstance(args.fold, list) else [args.fold]
    if len(folds) > 1:
        return _train_folds(args, folds)
    cfg = train_config(args)
    # --workers N (deprecated) also set the preprocessing workers when N >= 1
    workers = _preprocess_workers(run)
    try:
        fold_dir = train(
            args.dataset,
            _workspace(args),
            cfg,
            resume=run.resume,
            group_by=run.group_by,
            n_folds=run.n_folds,
            preprocess_workers=workers,
        )
    except TrainingInterrupted:
        return 130
    log.info("done: %s", fold_dir)
    return 0


def _train_folds(args: argparse.Namespace, folds: list[Any]) -> int:
    """``train`` with several folds: prepare once, then one child process per fold (see
    :mod:`autoseg.training.fold_runner`); the exit code names how the worst fold ended."""
    repeated = sorted({str(f) for f in folds if folds.count(f) > 1})
    if repeated:
        msg = f"FOLD {', '.join(repeated)} given more than once; give each fold once"
        raise AutosegError(msg)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        msg = "several folds cannot share one torchrun job; start one torchrun per fold"
        raise AutosegError(msg)
    from autoseg.pipeline import prepare_folds
    from autoseg.training import fold_runner

    run = _options(TrainRunOptions, args)
    cfg = train_config(args)
    ws = _workspace(args)
    model_dir = prepare_folds(
        args.dataset,
        ws,
        cfg,
        folds,
        group_by=run.group_by,
        n_folds=run.n_folds,
        preprocess_workers=_preprocess_workers(run),
    )
    gpus = 0
    if cfg.device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    lanes = fold_runner.assign_folds(folds, device=cfg.device, gpu_count=gpus)
    options = _child_options(args, work_dir=ws.root.resolve(), device=cfg.device)
    log.info(
        "training %s folds %s: %s",
        cfg.configuration,
        " ".join(str(f) for f in folds),
        "; ".join(
            f"{'GPU ' + str(lane.gpu) if lane.gpu is not None else cfg.device} folds "
            + " ".join(str(f) for f in lane.folds)
            for lane in lanes
        ),
    )
    runner = fold_runner.FoldRunner(
        lanes,
        command=lambda f: [
            sys.executable,
            "-m",
            "autoseg",
            "train",
            args.dataset,
            args.configuration,
            str(f),
            *options,
        ],
        fold_dir=lambda f: model_dir / f"fold_{f}",
        epochs=cfg.epochs,
    )
    results = runner.run()
    code = fold_runner.exit_code(results)
    done = [str(r.fold) for r in results if r.ok]
    if code == 0:
        log.info("done: folds %s in %s", ", ".join(done), model_dir)
    elif code != fold_runner.INTERRUPTED:
        failed = ", ".join(f"{r.fold} (exit {r.code}, see {r.console})" for r in results if not r.ok)
        log.error("autoseg: error: fold(s) %s failed; finished: %s", failed, ", ".join(done) or "none")
    return code


def _child_options(args: argparse.Namespace, *, work_dir: Path, device: str) -> list[str]:
    """The options of a parsed ``train`` command line, as flags a fold's child takes again: the
    settings the user gave (the rest keep their defaults there too), the work folder and device
    as resolved here, and ``-q`` (the child's console output is kept in a file)."""
    flags = ["--work-dir", str(work_dir), "--device", device, "-q"]
    skip = {"work_dir", "device", "quiet", "verbose"}
    for cls in (CommonOptions, *COMMAND_OPTIONS["train"]):
        for d in describe(cls):
            value = getattr(args, d.name, None)
            if d.name in skip or value is None:
                continue
            if d.kind is bool:
                if value != d.default:
                    flags.append(d.flags[0])
            elif d.many:
                flags += [d.flags[0], *(str(v) for v in value)]
            else:
                flags += [d.flags[0], str(value)]
    return flags


def _cmd_predict(args: argparse.Namespace) -> int:
    from autoseg.pipeline import predict

    opts = _options(PredictOptions, args)
    _warn_legacy_workers(opts)
    if opts.seg_codes is not None and opts.output_format == "nifti":
        log.warning("--seg-codes has no effect without --output-format dicom-seg or both")
    node = _destination(opts, args)
    device = _device(opts.device)
    report = predict(
        args.input,
        args.output,
        _workspace(args),
        dataset=opts.dataset,
        configurations=_list(opts.configurations),
        folds=_list(opts.folds),
        device=device,
        precision=opts.precision,
        step=opts.step,
        tta=opts.tta,
        overwrite=opts.overwrite,
        save_probabilities=opts.save_probabilities,
        checkpoint=opts.checkpoint,
        backend=opts.backend,
        postprocess=opts.postprocessing,
        output_format=opts.output_format,
        seg_codes=opts.seg_codes,
        save_uncertainty=opts.save_uncertainty,
        part=(opts.part_id, opts.num_parts),
        read_ahead=opts.read_ahead,
        write_behind=opts.write_behind,
        overlap_voxels=opts.overlap_limit * 1e6,
    )
    log.info(
        "%d written, %d skipped (existing; --overwrite to redo), %d failed -> %s",
        len(report.written),
        len(report.skipped),
        len(report.failed),
        args.output,
    )
    unsent = 0
    if node is not None:
        if report.skipped:
            log.info(
                "%d skipped case(s) not sent (written before): `autoseg send %s --to %s` sends them",
                len(report.skipped),
                args.output,
                node,
            )
        segs = [args.output / f"{case}.dcm" for case in report.written]
        unsent = _send(segs, node, calling_ae=opts.calling_ae, timeout_s=opts.send_timeout)
    if report.failed:
        log.error("autoseg: error: %d input(s) could not be predicted (see above)", len(report.failed))
    return EXIT_BAD_INPUT if report.failed or unsent else 0


def _destination(opts: PredictOptions, args: argparse.Namespace) -> DicomNode | None:
    """``--send-to``, checked before any work: a SEG must be asked for, pynetdicom installed."""
    if opts.send_to is None:
        for flag, value in (("--calling-ae", args.calling_ae), ("--send-timeout", args.send_timeout)):
            if value is not None:
                log.warning("%s has no effect without --send-to", flag)
        return None
    if opts.output_format == "nifti":
        msg = (
            f"--send-to {opts.send_to} sends DICOM-SEG files, but --output-format is nifti; "
            "add --output-format dicom-seg (or both)"
        )
        raise AutosegError(msg)
    from autoseg._optional import get_pynetdicom

    get_pynetdicom()
    return DicomNode.parse(opts.send_to)


def _send(files: list[Path], node: DicomNode, *, calling_ae: str, timeout_s: float) -> int:
    """C-STORE ``files`` to ``node``; logs one error line per file not sent and returns their
    number. The files stay where they are, whatever happens."""
    from autoseg.io.pacs import send_files

    if not files:
        log.info("no DICOM-SEG written, nothing sent to %s", node)
        return 0
    results = send_files(files, node, calling_ae=calling_ae, timeout_s=timeout_s)
    failed = [r for r in results if not r.ok]
    for r in failed:
        log.error("autoseg: error: %s: not sent: %s", r.path, r.error)
    log.info("%d of %d DICOM-SEG file(s) sent to %s", len(results) - len(failed), len(results), node)
    if failed:
        log.error(
            "autoseg: error: %d file(s) not sent; they are kept: fix the cause, then "
            "`autoseg send FILES --to %s`",
            len(failed),
            node,
        )
    return len(failed)


def _cmd_send(args: argparse.Namespace) -> int:
    from autoseg._optional import get_pynetdicom
    from autoseg.io.pacs import seg_files

    opts = _options(SendOptions, args)
    get_pynetdicom()
    files = seg_files(args.paths)
    failed = _send(files, args.to, calling_ae=opts.calling_ae, timeout_s=opts.timeout)
    return EXIT_BAD_INPUT if failed else 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from autoseg._fs import check_output_dir
    from autoseg.evaluation.evaluate import evaluate_folders

    opts = _options(EvaluateOptions, args)
    if args.lesion_iou is not None and not opts.lesions:
        log.warning("--lesion-iou has no effect without --lesions")
    scheme = None
    if opts.dataset_json is not None:
        from autoseg.io.dataset import read_label_scheme

        if opts.labels is not None:
            msg = f"--labels and --dataset-json both say what to score ({opts.dataset_json}); give one"
            raise DatasetError(msg)
        scheme = read_label_scheme(opts.dataset_json)
    out = args.output
    overlays = out.parent / f"{out.stem}_overlays"
    if opts.images is not None:  # before scoring: a bad location must not leave the summary alone
        check_output_dir(overlays, fix="choose another -o (the overlays go beside it)")
    summary = evaluate_folders(
        args.pred,
        args.ref,
        out,
        labels=_list(opts.labels),
        scheme=scheme,
        tolerance_mm=opts.tolerance,
        workers=_preprocess_workers(opts),
        plot=opts.plot,
        lesions=opts.lesions,
        lesion_iou=opts.lesion_iou,
    )
    width = max([8, *(len(k) for k in summary["per_label"])])  # region names can be long
    lines = [
        f"{summary['settings']['n_cases']} cases -> {out} (+ {out.with_suffix('.csv').name}"
        + (", box plot" if opts.plot else "")
        + ")",
        f"{'label':>{width}} {'Dice':>7} {'IoU':>7} {'HD95 mm':>8} {'NSD':>7}",
    ]
    for lab, m in summary["per_label"].items():
        lines.append(f"{lab:>{width}} {m['dice']:7.4f} {m['iou']:7.4f} {m['hd95_mm']:8.2f} {m['nsd']:7.4f}")
    m = summary["mean"]
    lines.append(f"{'mean':>{width}} {m['dice']:7.4f} {m['iou']:7.4f} {m['hd95_mm']:8.2f} {m['nsd']:7.4f}")
    if opts.lesions:
        lines += _lesion_lines(summary["lesions"], out, width)
    if opts.images is not None:
        from autoseg.evaluation.overlay import save_overlays

        pngs = save_overlays(opts.images, args.ref, args.pred, overlays)
        lines.append(f"{len(pngs)} overlay PNGs -> {overlays}")
    log.info("\n".join(lines))
    return 0


def _lesion_lines(lesions: dict[str, Any], out: Path, width: int) -> list[str]:
    """The lesion table evaluate prints: counts per label, and the CPM with probabilities."""
    files = f"{out.stem}_lesions.csv" + (", " + f"{out.stem}_froc.png" if _has_froc(lesions) else "")
    lines = [
        f"lesions (IoU > {lesions['settings']['iou_threshold']:g}, one-to-one) -> {files}",
        f"{'label':>{width}} {'ref':>5} {'pred':>5} {'sens':>6} {'prec':>6} {'FP/case':>7} {'F1':>6}"
        + (f" {'CPM':>6}" if _has_froc(lesions) else ""),
    ]
    for lab, c in lesions["per_label"].items():
        cpm = f" {c['froc']['cpm']:6.3f}" if c["froc"] is not None else ""
        lines.append(
            f"{lab:>{width}} {c['n_reference']:5d} {c['n_predicted']:5d} {c['sensitivity']:6.3f} "
            f"{c['precision']:6.3f} {c['fp_per_case']:7.2f} {c['f1']:6.3f}{cpm}"
        )
    return lines


def _has_froc(lesions: dict[str, Any]) -> bool:
    return any(c["froc"] is not None for c in lesions["per_label"].values())


def _cmd_find_best(args: argparse.Namespace) -> int:
    from autoseg.pipeline import find_best

    opts = _options(FindBestOptions, args)
    info = find_best(
        args.dataset,
        _workspace(args),
        configurations=_list(opts.configurations),
        workers=_preprocess_workers(opts),
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

    opts = _options(ExportOptions, args)
    _warn_legacy_workers(opts)
    paths = export(
        args.dataset,
        args.configuration,
        _workspace(args),
        fmt=opts.format,
        folds=_list(opts.folds),
        out=opts.output,
        fp16=opts.fp16,
    )
    log.info(
        "exported %d fold(s): %s%s",
        len(paths),
        ", ".join(str(p) for p in paths),
        f" (copy in {opts.output})" if opts.output else "",
    )
    return 0


def _list(values: tuple[Any, ...] | None) -> list[Any] | None:
    return None if values is None else list(values)


def _fmt(v: Sequence[float], sep: str = "x") -> str:
    return sep.join(f"{x:g}" for x in v)


def _checked(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` whose ``ValueError`` message is shown as is (argparse would replace it
    with "invalid value"), after ``argument --flag:``."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add the options of a settings dataclass (see :mod:`autoseg.options`) to ``parser``.

    Options that take a value default to ``None`` ("not given"): the dataclass fills in its
    default when built with :func:`~autoseg.options.from_values`, so the default lives only there.
    """
    for d in describe(cls):
        kw: dict[str, Any] = {"dest": d.name, "help": d.help()}
        if d.kind is bool:
            kw["action"] = "store_false" if d.default is True else "store_true"
        else:
            kw.update(default=None, type=_checked(d.convert))
            if d.choices is None:
                kw["metavar"] = d.metavar
            else:
                kw["choices"] = d.choices
            if d.many:
                kw["nargs"] = "+"
        parser.add_argument(*d.flags, **kw)


def _command(
    sub: Any, name: str, common: argparse.ArgumentParser, func: Callable[[argparse.Namespace], int], **kw: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, parents=[common], formatter_class=_Formatter, **kw)
    parser.set_defaults(func=func)
    return parser


def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-parsers of a :func:`build_parser` parser, by command name."""
    for action in parser._actions:  # argparse has no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


class _Formatter(argparse.HelpFormatter):
    """Wider help columns, so that defaults and ranges rarely wrap."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=32)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation), built from the options
    dataclasses: :class:`TrainConfig` and those of :mod:`autoseg.command_options`."""
    p = argparse.ArgumentParser(
        prog="autoseg",
        description="Self-configuring segmentation of 3D medical images.",
    )
    p.add_argument("--version", action="version", version=f"autoseg {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    add_options(common, CommonOptions)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dataset_help = "dataset folder (nnU-Net v2 or MSD layout) or planned name"

    v = _command(
        sub,
        "verify",
        common,
        _cmd_verify,
        help="check a dataset; writes nothing",
        description="Check every file of a dataset and report all problems.",
    )
    v.add_argument("dataset", help=dataset_help)

    pl = _command(
        sub,
        "plan",
        common,
        _cmd_plan,
        help="verify, fingerprint and plan a dataset",
        description="Verify the dataset, extract its fingerprint and write "
        "<work>/<name>/fingerprint.json and plans.json.",
    )
    pl.add_argument("dataset", help=dataset_help)

    pp = _command(
        sub,
        "preprocess",
        common,
        _cmd_preprocess,
        help="preprocess a planned dataset",
        description="Preprocess a planned dataset (train does this on first use).",
    )
    pp.add_argument("dataset", help="dataset folder or planned name")

    tr = _command(
        sub,
        "train",
        common,
        _cmd_train,
        help="train one configuration on one or more folds",
        description="Train CONFIG on FOLD (0-4 with the default 5 folds, see --n-folds; or all) of a "
        "planned dataset. Several folds run as one process each: in parallel, one per GPU, with "
        "--device cuda and several GPUs; else one after the other.",
    )
    tr.add_argument("dataset", help="dataset folder or planned name")
    tr.add_argument("configuration", help="a configuration of the plan (2d, 2.5d, 3d_fullres, ...)")
    tr.add_argument(
        "fold", nargs="+", type=_checked(parse_fold), help="a fold (0-4 with 5 folds), or all; or several"
    )

    pr = _command(
        sub,
        "predict",
        common,
        _cmd_predict,
        help="segment new scans",
        description="Segment scans with trained models; outputs CASE.nii.gz on each input's own grid "
        "and, with --output-format dicom-seg|both, a DICOM Segmentation CASE.dcm per DICOM series.",
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

    ev = _command(
        sub,
        "evaluate",
        common,
        _cmd_evaluate,
        help="score predictions against references",
        description="Per case and label: Dice, IoU, HD95, normalised surface "
        "Dice, sensitivity, specificity, precision, volume difference; JSON + CSV. "
        "With --lesions also lesion-wise detection (and the FROC from CASE.npz probabilities).",
    )
    ev.add_argument("--pred", type=Path, required=True, help="folder of predicted label maps")
    ev.add_argument("--ref", type=Path, required=True, help="folder of reference label maps")
    ev.add_argument("-o", "--output", type=Path, required=True, help="FILE.json (a CSV beside it)")

    fb = _command(
        sub,
        "find-best",
        common,
        _cmd_find_best,
        help="choose configuration/ensemble and post-processing from CV",
        description="Compare the trained configurations and their pairwise "
        "ensembles on the folds' validation predictions; record the best and its "
        "post-processing for `autoseg predict`.",
    )
    fb.add_argument("dataset", help="dataset name or folder")

    ex = _command(
        sub,
        "export",
        common,
        _cmd_export,
        help="export a trained model (ONNX, TensorRT)",
        description="Export the fold networks of a trained configuration (dynamic "
        "batch) with a JSON sidecar, into the model folder where `predict "
        "--backend onnx|tensorrt` finds them.",
    )
    ex.add_argument("dataset", help="dataset name or folder")
    ex.add_argument("configuration", help="trained configuration")

    se = _command(
        sub,
        "send",
        common,
        _cmd_send,
        help="send DICOM-SEG files to a PACS (C-STORE)",
        description="Send DICOM Segmentation files (e.g. those `autoseg predict --output-format "
        "dicom-seg` wrote) to a PACS with C-STORE, over one association; one line per file not "
        "stored, naming the reason. Needs pynetdicom (pip install 'autoseg[pacs]').",
    )
    se.add_argument(
        "paths", type=Path, nargs="+", metavar="FILE_OR_FOLDER", help="SEG files, or folders of *.dcm"
    )
    se.add_argument(
        "--to",
        type=_checked(DicomNode.parse),
        required=True,
        metavar="AE@HOST:PORT",
        help="the PACS: its AE title, host and port, e.g. PACS@10.0.0.5:104",
    )
    for name, parser in commands(p).items():
        for cls in COMMAND_OPTIONS[name]:
            add_options(parser, cls)
    return p


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only from Python 3.11
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
    # pynetdicom logs every PDU and each failure; autoseg reports each file's outcome itself
    logging.getLogger("pynetdicom").setLevel(logging.INFO if args.verbose else logging.CRITICAL)


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
    except OSError as e:  # permission denied, read-only or full disk: the machine, not a bug
        if not is_environment_error(e):
            raise
        log.error("autoseg: error: %s", fs_error(e, e.filename, doing="use this path"))
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        log.error("autoseg: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
