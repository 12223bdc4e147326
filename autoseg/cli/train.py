"""``train``: one fold in this process, or several folds as one child process each
(:mod:`autoseg.training.fold_runner`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from autoseg.cli._common import (
    COMMAND_OPTIONS,
    log,
    options_of,
    preprocess_workers,
    resolve_device,
    workspace,
)
from autoseg.command_options import CommonOptions, TrainRunOptions
from autoseg.errors import AutosegError
from autoseg.options import describe, from_values
from autoseg.training.config import TrainConfig


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
    run = options_of(TrainRunOptions, args)
    augment = args.workers
    if augment is None and run.legacy_workers is not None:
        augment = run.legacy_workers
    values = {**vars(args), "workers": augment}
    return from_values(
        TrainConfig, values, configuration=args.configuration, fold=fold, device=resolve_device(args.device)
    )


def cmd_train(args: argparse.Namespace) -> int:
    from autoseg.pipeline import train
    from autoseg.training.trainer import TrainingInterrupted

    run = options_of(TrainRunOptions, args)
    folds = args.fold if isinstance(args.fold, list) else [args.fold]
    if len(folds) > 1:
        return _train_folds(args, folds)
    cfg = train_config(args)
    # --workers N (deprecated) also set the preprocessing workers when N >= 1
    workers = preprocess_workers(run)
    try:
        fold_dir = train(
            args.dataset,
            workspace(args),
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

    run = options_of(TrainRunOptions, args)
    cfg = train_config(args)
    ws = workspace(args)
    model_dir = prepare_folds(
        args.dataset,
        ws,
        cfg,
        folds,
        group_by=run.group_by,
        n_folds=run.n_folds,
        preprocess_workers=preprocess_workers(run),
    )
    gpus = 0
    if cfg.device == "cuda":
        import torch

        gpus = torch.cuda.device_count()
    lanes = fold_runner.assign_folds(folds, device=cfg.device, gpu_count=gpus)
    options = child_options(args, work_dir=ws.root.resolve(), device=cfg.device)
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


def child_options(args: argparse.Namespace, *, work_dir: Path, device: str) -> list[str]:
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
