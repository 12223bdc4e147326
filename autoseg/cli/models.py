"""``evaluate``, ``find-best`` and ``export``: score predictions, choose among trained models,
export them."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from autoseg.cli._common import as_list, log, options_of, preprocess_workers, warn_legacy_workers, workspace
from autoseg.command_options import EvaluateOptions, ExportOptions, FindBestOptions
from autoseg.errors import DatasetError


def cmd_evaluate(args: argparse.Namespace) -> int:
    from autoseg._fs import check_output_dir
    from autoseg.evaluation.evaluate import evaluate_folders

    opts = options_of(EvaluateOptions, args)
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
        labels=as_list(opts.labels),
        scheme=scheme,
        tolerance_mm=opts.tolerance,
        workers=preprocess_workers(opts),
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


def cmd_find_best(args: argparse.Namespace) -> int:
    from autoseg.pipeline import find_best

    opts = options_of(FindBestOptions, args)
    info = find_best(
        args.dataset,
        workspace(args),
        configurations=as_list(opts.configurations),
        workers=preprocess_workers(opts),
    )
    lines = ["cross-validation foreground-mean Dice:"]
    lines += [f"  {k:<28} {'n/a' if v is None else f'{v:.4f}'}" for k, v in info["cv_dice"].items()]
    lines.append(
        f"best: {info['best']}; post-processing: {info['postprocessing']} "
        "(used by `autoseg predict` without -c)"
    )
    log.info("\n".join(lines))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from autoseg.pipeline import export

    opts = options_of(ExportOptions, args)
    warn_legacy_workers(opts)
    paths = export(
        args.dataset,
        args.configuration,
        workspace(args),
        fmt=opts.format,
        folds=as_list(opts.folds),
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
