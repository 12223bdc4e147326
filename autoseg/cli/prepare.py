"""``verify``, ``plan`` and ``preprocess``: a dataset from its folder to preprocessed arrays."""

from __future__ import annotations

import argparse

from autoseg.cli._common import EXIT_BAD_INPUT, as_list, fmt, log, options_of, preprocess_workers, workspace
from autoseg.command_options import PlanOptions, PreprocessOptions, VerifyOptions


def cmd_verify(args: argparse.Namespace) -> int:
    from autoseg.pipeline import verify

    opts = options_of(VerifyOptions, args)
    ws = workspace(args)
    _, folder = ws.resolve(args.dataset)
    report = verify(folder, workers=preprocess_workers(opts))
    for w in report.warnings:
        log.warning(w)
    if report.problems:
        for p in report.problems:
            log.error(p)
        log.error("%d problem(s) in %d cases; fix them and run again", len(report.problems), report.n_cases)
        return EXIT_BAD_INPUT
    log.info("%s: %d cases, no problems (%d warnings)", folder, report.n_cases, len(report.warnings))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from autoseg._device import default_gpu_memory_gb
    from autoseg.pipeline import plan
    from autoseg.planning.kinds import KINDS

    opts = options_of(PlanOptions, args)
    ws = workspace(args)
    _, folder = ws.resolve(args.dataset)
    gpu = opts.gpu_memory if opts.gpu_memory is not None else default_gpu_memory_gb()
    fp, the_plan = plan(
        folder,
        ws,
        gpu_memory_gb=gpu,
        workers=preprocess_workers(opts),
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
            f"  {c.name:<20} spacing {fmt(c.spacing)} patch {fmt(c.patch_size)} "
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


def cmd_preprocess(args: argparse.Namespace) -> int:
    from autoseg.pipeline import preprocess

    opts = options_of(PreprocessOptions, args)
    folders = preprocess(
        args.dataset,
        workspace(args),
        configurations=as_list(opts.configurations),
        workers=preprocess_workers(opts),
    )
    for f in folders:
        log.info("preprocessed data: %s", f)
    return 0
