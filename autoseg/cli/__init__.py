"""The ``autoseg`` command line: parses arguments, calls :mod:`autoseg.pipeline`, maps errors.

One module per stage of the data path: :mod:`~autoseg.cli.prepare` (verify, plan, preprocess),
:mod:`~autoseg.cli.train`, :mod:`~autoseg.cli.predict` (predict, send), :mod:`~autoseg.cli.models`
(evaluate, find-best, export); :mod:`~autoseg.cli.parser` builds the parser from the options
dataclasses. This module runs a command and maps its errors to exit codes.

Exit codes: 0 success, 2 bad input (one message per problem, each naming the file and the fix,
no traceback), 1 an unexpected failure (a bug: the traceback is kept). Heavy modules (torch) are
imported inside the commands that need them, so ``autoseg --help`` and ``autoseg plan`` start fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from autoseg._fs import fs_error, is_environment_error
from autoseg.cli._common import COMMAND_OPTIONS, EXIT_BAD_INPUT, log
from autoseg.cli.parser import build_parser, commands
from autoseg.cli.train import train_config
from autoseg.errors import AutosegError

__all__ = ["COMMAND_OPTIONS", "EXIT_BAD_INPUT", "build_parser", "commands", "main", "train_config"]


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
