"""Preprocess a whole dataset for a configuration, in parallel, skipping cases already done."""

from __future__ import annotations

import logging
from pathlib import Path

from autoseg._atomic import sweep_partials
from autoseg._parallel import map_cases, values_or_raise
from autoseg.io.case import load_case
from autoseg.io.dataset import Case, Dataset
from autoseg.planning.plan import Configuration, Plan
from autoseg.preprocessing.case import preprocess_arrays
from autoseg.preprocessing.store import PreprocessedStore

log = logging.getLogger(__name__)


def _one(args: tuple[Case, Dataset, Plan, Configuration, Path]) -> None:
    """Read, check, preprocess and store one case (raises :class:`DatasetError` for a bad one)."""
    case, dataset, plan, config, folder = args
    loaded = load_case(case, dataset)
    pre = preprocess_arrays(
        loaded.data,
        loaded.label,
        loaded.geometry.spacing,
        plan,
        config,
        case_id=case.case_id,
        geometry=loaded.geometry,
    )
    PreprocessedStore(folder).save(pre)


def preprocess_dataset(
    dataset: Dataset, plan: Plan, config: Configuration, dataset_dir: Path, *, workers: int
) -> PreprocessedStore:
    """Preprocess every case of ``dataset`` for ``config`` under ``dataset_dir/preprocessed/``.

    Cases already stored for the same plan part are skipped; a changed plan gets a new store.

    Raises:
        DatasetError: listing every case that could not be read.
    """
    store = PreprocessedStore.for_config(dataset_dir, plan, config)
    sweep_partials(store.folder)
    todo = [c for c in dataset.cases if not store.is_done(c.case_id)]
    if not todo:
        log.info("preprocessed data for %s is up to date (%s)", config.name, store.folder)
        return store
    log.info(
        "preprocessing %d of %d cases for %s -> %s", len(todo), len(dataset.cases), config.name, store.folder
    )
    jobs = [(c, dataset, plan, config, store.folder) for c in todo]
    values_or_raise(map_cases(_one, jobs, workers=workers, desc="Preprocessing"))
    return store
