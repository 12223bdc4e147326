"""``predict`` and ``send``: segment new scans, and C-STORE the DICOM-SEG files to a PACS."""

from __future__ import annotations

import argparse
from pathlib import Path

from autoseg._memory import keep_freed_memory
from autoseg.cli._common import (
    EXIT_BAD_INPUT,
    as_list,
    log,
    options_of,
    resolve_device,
    warn_legacy_workers,
    workspace,
)
from autoseg.command_options import PredictOptions, SendOptions
from autoseg.dicom_node import DicomNode
from autoseg.errors import AutosegError


def cmd_predict(args: argparse.Namespace) -> int:
    from autoseg.pipeline import predict

    keep_freed_memory()  # whole volumes allocated and freed case after case (autoseg._memory)
    opts = options_of(PredictOptions, args)
    warn_legacy_workers(opts)
    if opts.seg_codes is not None and opts.output_format == "nifti":
        log.warning("--seg-codes has no effect without --output-format dicom-seg or both")
    node = _destination(opts, args)
    device = resolve_device(opts.device)
    report = predict(
        args.input,
        args.output,
        workspace(args),
        dataset=opts.dataset,
        configurations=as_list(opts.configurations),
        folds=as_list(opts.folds),
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


def cmd_send(args: argparse.Namespace) -> int:
    from autoseg._optional import get_pynetdicom
    from autoseg.io.pacs import seg_files

    opts = options_of(SendOptions, args)
    get_pynetdicom()
    files = seg_files(args.paths)
    failed = _send(files, args.to, calling_ae=opts.calling_ae, timeout_s=opts.timeout)
    return EXIT_BAD_INPUT if failed else 0
