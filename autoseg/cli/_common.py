"""What every command module shares: the work folder, options dataclasses from parsed arguments,
the device rule, and the exit code of bad input."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from autoseg.command_options import (
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
from autoseg.errors import AutosegError
from autoseg.options import describe, from_values
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


def workspace(args: argparse.Namespace) -> Workspace:
    """The work folder: ``--work-dir``, else $AUTOSEG_WORK, else ./autoseg_work."""
    from autoseg.workspace import Workspace

    root = args.work_dir or os.environ.get("AUTOSEG_WORK") or "autoseg_work"
    return Workspace(Path(root))


def options_of(cls: type, args: argparse.Namespace, **fixed: Any) -> Any:
    """The command's options dataclass from the parsed arguments (unset ones keep its defaults)."""
    return from_values(cls, vars(args), **fixed)


def preprocess_workers(opts: Any) -> int:
    """``--preprocess-workers``, else the deprecated ``--workers`` (0 meant the default), else the
    CPUs available (at most 8)."""
    from autoseg._parallel import default_workers

    warn_legacy_workers(opts)
    return opts.preprocess_workers or opts.legacy_workers or default_workers()


def warn_legacy_workers(opts: Any) -> None:
    if opts.legacy_workers is not None:
        advice = next(d.option.deprecated for d in describe(type(opts)) if d.name == "legacy_workers")
        log.warning("--workers is deprecated: %s", advice)


def resolve_device(requested: str | None) -> str:
    """``--device``, defaulting to CUDA when present; asking for CUDA without one is bad input."""
    from autoseg._device import cuda_available

    device = requested or ("cuda" if cuda_available() else "cpu")
    if device == "cuda" and not cuda_available():
        msg = "--device cuda: no CUDA device is available here; use --device cpu"
        raise AutosegError(msg)
    return device


def as_list(values: tuple[Any, ...] | None) -> list[Any] | None:
    return None if values is None else list(values)


def fmt(v: Sequence[float], sep: str = "x") -> str:
    return sep.join(f"{x:g}" for x in v)


def checked(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse ``type`` whose ``ValueError`` message is shown as is (argparse would replace it
    with "invalid value"), after ``argument --flag:``."""

    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse
