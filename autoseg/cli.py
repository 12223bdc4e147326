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
        log.error("%d problem(s) in %d cases; fix them and run again", len(report.problems),
                  report.n_cases)
        return EXIT_BAD_INPUT
    log.info("%s: %d cases, no problems (%d warnings)", folder, report.n_cases,
             len(report.warnings))
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from autoseg._device import default_gpu_memory_gb
    from autoseg.pipeline import plan

    ws = _workspace(args)
    _, folder = ws.resolve(args.dataset)
    gpu = args.gpu_memory if args.gpu_memory is not None else default_gpu_memory_gb()
    fp, the_plan = plan(folder, ws, gpu_memory_gb=gpu, workers=_workers(args),
                        add_2p5d=args.add_2p5d)
    out = ws.dataset_dir(the_plan.dataset_name)
    lines = [f"plan for {the_plan.dataset_name} ({len(fp.cases)} cases, {gpu:g} GB budget) "
             f"-> {out / 'plans.json'}"]
    for c in the_plan.configurations.values():
        lines.append(f"  {c.name:<20} spacing {_fmt(c.spacing)} patch {_fmt(c.patch_size)} "
                     f"batch {c.batch_size} stages {c.network.n_stages}"
                     + (f" K={c.in_slices}" if c.kind == "2.5d" else ""))
    lines += [f"  note: {n}" for n in the_plan.notes]
    log.info("\n".join(lines))
    return 0


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
    common.add_argument("--work-dir", type=Path, default=None,
                        help="work folder (default: $AUTOSEG_WORK, else ./autoseg_work)")
    common.add_argument("--workers", type=int, default=0,
                        help="worker processes (default: CPUs available, at most 8)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("verify", parents=[common], help="check a dataset; writes nothing",
                       description="Check every file of a dataset and report all problems.")
    v.add_argument("dataset", help="dataset folder (nnU-Net v2 or MSD layout) or planned name")
    v.set_defaults(func=_cmd_verify)

    pl = sub.add_parser("plan", parents=[common], help="verify, fingerprint and plan a dataset",
                        description="Verify the dataset, extract its fingerprint and write "
                        "<work>/<name>/fingerprint.json and plans.json.")
    pl.add_argument("dataset", help="dataset folder (nnU-Net v2 or MSD layout) or planned name")
    pl.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                    help="memory budget for patch and batch size (default: the CUDA device's, "
                    "else 8)")
    pl.add_argument("--add-2.5d", dest="add_2p5d", action="store_true",
                    help="offer the 2.5d configuration even for data that is not thick-sliced")
    pl.set_defaults(func=_cmd_plan)
    return p


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    logging.captureWarnings(True)


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
