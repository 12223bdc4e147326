"""The commands' work, as functions a script or test can call without the CLI.

Each function takes paths and options, does one user-level job, and raises
:class:`~autoseg.errors.AutosegError` for anything the user can fix.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from autoseg.fingerprint.extract import extract_fingerprint, fingerprint_cases
from autoseg.fingerprint.model import Fingerprint
from autoseg.io.dataset import load_dataset
from autoseg.planning.plan import Plan
from autoseg.planning.planner import make_plan
from autoseg.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify`: every problem and warning, each naming its file."""

    n_cases: int
    problems: list[str]
    warnings: list[str]


def verify(dataset_dir: Path, *, workers: int) -> VerifyReport:
    """Check a dataset folder completely; writes nothing.

    Raises:
        DatasetError: dataset.json or the folder listing is wrong (cases cannot even be listed).
    """
    dataset = load_dataset(dataset_dir)
    results = fingerprint_cases(dataset, workers=workers)
    return VerifyReport(
        n_cases=len(dataset.cases),
        problems=[p for r in results for p in r.problems],
        warnings=[w for r in results for w in r.warnings],
    )


def plan(dataset_dir: Path, workspace: Workspace, *, gpu_memory_gb: float, workers: int,
         add_2p5d: bool = False) -> tuple[Fingerprint, Plan]:
    """Verify, fingerprint and plan a dataset; write ``fingerprint.json`` and ``plans.json``.

    Nothing is written unless every case passed the checks.

    Returns:
        The fingerprint and the plan (also saved under ``<work>/<dataset name>/``).
    """
    dataset = load_dataset(dataset_dir)
    log.info("%s: %d cases, %d channel(s) %s, labels %s (%s layout)", dataset.name,
             len(dataset.cases), dataset.num_channels, list(dataset.channel_names),
             dataset.labels, dataset.layout)
    fp = extract_fingerprint(dataset, workers=workers)
    the_plan = make_plan(fp, gpu_memory_gb=gpu_memory_gb, add_2p5d=add_2p5d)
    fp.save(workspace.fingerprint_path(dataset.name))
    the_plan.save(workspace.plans_path(dataset.name))
    workspace.remember_source(dataset.name, dataset_dir)
    return fp, the_plan
