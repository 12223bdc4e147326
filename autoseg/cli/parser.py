"""The argument parser, built from the options dataclasses (:class:`~autoseg.training.config.TrainConfig`
and :mod:`autoseg.command_options`), which hold every option's default, choices, range and help:
out-of-range numbers, nan and inf are refused while parsing (exit 2, one line naming the flag)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoseg import __version__
from autoseg.cli._common import COMMAND_OPTIONS, checked
from autoseg.cli.models import cmd_evaluate, cmd_export, cmd_find_best
from autoseg.cli.predict import cmd_predict, cmd_send
from autoseg.cli.prepare import cmd_plan, cmd_preprocess, cmd_verify
from autoseg.cli.train import cmd_train
from autoseg.command_options import CommonOptions
from autoseg.dicom_node import DicomNode
from autoseg.options import describe, parse_fold


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
            kw.update(default=None, type=checked(d.convert))
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
        cmd_verify,
        help="check a dataset; writes nothing",
        description="Check every file of a dataset and report all problems.",
    )
    v.add_argument("dataset", help=dataset_help)

    pl = _command(
        sub,
        "plan",
        common,
        cmd_plan,
        help="verify, fingerprint and plan a dataset",
        description="Verify the dataset, extract its fingerprint and write "
        "<work>/<name>/fingerprint.json and plans.json.",
    )
    pl.add_argument("dataset", help=dataset_help)

    pp = _command(
        sub,
        "preprocess",
        common,
        cmd_preprocess,
        help="preprocess a planned dataset",
        description="Preprocess a planned dataset (train does this on first use).",
    )
    pp.add_argument("dataset", help="dataset folder or planned name")

    tr = _command(
        sub,
        "train",
        common,
        cmd_train,
        help="train one configuration on one or more folds",
        description="Train CONFIG on FOLD (0-4 with the default 5 folds, see --n-folds; or all) of a "
        "planned dataset. Several folds run as one process each: in parallel, one per GPU, with "
        "--device cuda and several GPUs; else one after the other.",
    )
    tr.add_argument("dataset", help="dataset folder or planned name")
    tr.add_argument("configuration", help="a configuration of the plan (2d, 2.5d, 3d_fullres, ...)")
    tr.add_argument(
        "fold", nargs="+", type=checked(parse_fold), help="a fold (0-4 with 5 folds), or all; or several"
    )

    pr = _command(
        sub,
        "predict",
        common,
        cmd_predict,
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
        cmd_evaluate,
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
        cmd_find_best,
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
        cmd_export,
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
        cmd_send,
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
        type=checked(DicomNode.parse),
        required=True,
        metavar="AE@HOST:PORT",
        help="the PACS: its AE title, host and port, e.g. PACS@10.0.0.5:104",
    )
    for name, parser in commands(p).items():
        for cls in COMMAND_OPTIONS[name]:
            add_options(parser, cls)
    return p
