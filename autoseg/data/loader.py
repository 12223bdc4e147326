"""Endless batches of augmented training patches, in the main process or in worker processes.

:func:`make_loader` is the entry point; it returns a :class:`BatchLoader` to call ``next()`` on::

    with make_loader(store, train_ids, config, batch_size=2, workers=4, seed=0,
                     augment=True) as loader:
        batch = next(loader)   # {"data": (B, C, *patch) float32, "target": (B, 1, *patch) int64}

Workers are batchgenerators ``MultiThreadedAugmenter`` processes. Each receives a
:class:`PatchDataset` holding only the store folder, the case ids and settings; the memory maps
are opened lazily inside the worker, so no image array is ever pickled.

Batch ``n`` of a loader (counted from its ``start``) is drawn entirely (cases, patches,
augmentation) from ``numpy.random.default_rng(SeedSequence([*seed, n]))``: it depends on the seed
and its index only. Worker ``i`` of ``w`` makes batches ``start + i``, ``start + i + w``, … and
they are taken from the workers in turn, so every number of workers (0 included) gives the same
sequence, and a loader made with ``start=n`` continues exactly where another one was at batch
``n``: that is how training resumes bit-exactly (:mod:`autoseg.training.trainer`).

Several training processes share one sequence of *global* batches: a loader made with
``part=(i, k)`` draws batch ``n`` whole, as a single process would, and keeps its ``i``-th of
``k`` equal slices. So ``k`` processes each taking a slice of batch ``B / k`` see exactly the
samples (cases, patches, augmentation) one process of batch ``B`` sees, and their averaged
gradients are that process's (:mod:`autoseg.training.distributed`). Slicing after drawing costs
each process the augmentation of the whole global batch; drawing only a slice would need an
independent stream per sample, and that would change every single-process run of a given seed.
"""

from __future__ import annotations

import logging
import signal
import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import Compose

from autoseg._parallel import exit_when_orphaned
from autoseg.data.augmentation import AUGMENTATIONS, seeded_global_rng, to_tensors
from autoseg.data.previous_stage import PreviousStageInput
from autoseg.data.sampling import sample_patch
from autoseg.errors import DatasetError
from autoseg.planning.plan import Configuration
from autoseg.preprocessing.case import PreprocessedCase
from autoseg.preprocessing.store import PreprocessedStore

log = logging.getLogger(__name__)

#: nnU-Net's share of each batch forced to contain foreground.
OVERSAMPLE_FOREGROUND = 1 / 3


def forced_foreground(batch_size: int, oversample: float) -> list[bool]:
    """Which samples of a batch must contain foreground: the last ones, nnU-Net's rule.

    Sample ``j`` is forced when ``j >= round(batch_size * (1 - oversample))``.

    Examples:
        >>> forced_foreground(7, 1 / 3)
        [False, False, False, False, False, True, True]
        >>> forced_foreground(2, 1 / 3)
        [False, True]
    """
    first = round(batch_size * (1 - oversample))
    return [j >= first for j in range(batch_size)]


class PatchDataset(SlimDataLoaderBase):
    """The per-process batch source: picks cases, cuts patches, runs the pipeline.

    Pickles to a few strings and numbers (the store folder, case ids, configuration, settings);
    the cases are memory-mapped on first use in whichever process draws from it.

    Args:
        folder: the preprocessed store's folder.
        case_ids: cases to draw from (uniformly, with replacement).
        config: the configuration.
        batch_size: samples per batch.
        oversample: share of each batch forced to contain foreground.
        seed: the entropy of every draw: one number, or several (e.g. the run's seed, the rank
            and which loader); batch ``n`` is drawn from ``SeedSequence([*seed, n])``.
        augment: training augmentation (True) or the validation centre crop (False).
        augmentation: the training pipeline's name (see :func:`make_loader`).
        start: the index of the first batch (a resumed run starts where it stopped).
        previous_stage: for a cascade stage, the previous stage's predictions: added as one-hot
            data channels (:mod:`autoseg.data.previous_stage`), perturbed in training.
        part: ``(i, k)``: keep the ``i``-th of ``k`` equal slices of each batch of
            ``batch_size`` samples (``(0, 1)``: all of it); see the module docstring.

    Raises:
        ValueError: ``part`` is not ``(i, k)`` with ``0 <= i < k`` and ``k`` dividing
            ``batch_size``.
    """

    #: Set by the (untyped) batchgenerators base class from ``batch_size``.
    batch_size: int

    def __init__(
        self,
        folder: Path,
        case_ids: Sequence[str],
        config: Configuration,
        *,
        batch_size: int,
        oversample: float,
        seed: int | Sequence[int],
        augment: bool,
        augmentation: str = "default",
        start: int = 0,
        previous_stage: PreviousStageInput | None = None,
        part: tuple[int, int] = (0, 1),
    ) -> None:
        index, count = part
        if not (count >= 1 and 0 <= index < count and batch_size % count == 0):
            msg = f"part {part} of a batch of {batch_size}: need 0 <= i < k and k dividing the batch"
            raise ValueError(msg)
        super().__init__(None, batch_size, number_of_threads_in_multithreaded=1)
        share = batch_size // count
        #: The samples of each global batch this process keeps.
        self.keep = slice(index * share, (index + 1) * share)
        self.folder = Path(folder)
        self.case_ids = tuple(case_ids)
        self.config = config
        self.forced = forced_foreground(batch_size, oversample)
        self.seed = (seed,) if isinstance(seed, int) else tuple(int(x) for x in seed)
        self.start = start
        self.augment = augment
        pipeline = AUGMENTATIONS.get(augmentation if augment else "none")(config)
        self.patch_size = pipeline.cut_size
        self.transform: Compose = pipeline.transforms
        self.previous_stage = previous_stage
        self.perturb_previous = augment and pipeline.perturbs_previous_stage
        self._cases: dict[str, PreprocessedCase] = {}
        self._previous: dict[str, np.ndarray] = {}
        #: Batches this process has made (a worker makes every ``number_of_threads``-th one).
        self._made = 0

    #: Set by the batchgenerators base class; :class:`BatchLoader` sets it to the worker count.
    number_of_threads_in_multithreaded: int

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cases"] = {}
        state["_previous"] = {}
        return state

    def set_thread_id(self, thread_id: int) -> None:
        """Called by ``MultiThreadedAugmenter`` inside worker ``thread_id`` before drawing.

        The worker also ignores Ctrl-C (the training process decides when to stop and stops its
        workers; a worker that died of the terminal's SIGINT would stop the batches before the
        latest checkpoint is saved) and exits when the training process is gone (a ``kill -9``
        leaves no one to stop it).
        """
        super().set_thread_id(thread_id)
        self._cases = {}
        self._previous = {}
        self._made = 0
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        exit_when_orphaned()

    def next_index(self) -> int:
        """The index of the batch this process makes next (counts it as made)."""
        index = self.start + self.thread_id + self._made * self.number_of_threads_in_multithreaded
        self._made += 1
        return index

    def batch_rng(self, index: int) -> np.random.Generator:
        """The generator of batch ``index``: a function of the seed and the index only."""
        return np.random.default_rng(np.random.SeedSequence([*self.seed, index]))

    def case(self, case_id: str) -> PreprocessedCase:
        """The memory-mapped case, opened once per process."""
        if case_id not in self._cases:
            self._cases[case_id] = PreprocessedStore(self.folder).load(case_id)
        return self._cases[case_id]

    def previous(self, case_id: str) -> np.ndarray | None:
        """The previous stage's memory-mapped map of a case (cascade stages), opened once."""
        if self.previous_stage is None:
            return None
        if case_id not in self._previous:
            self._previous[case_id] = self.previous_stage.load(case_id)
        return self._previous[case_id]

    def generate_train_batch(self) -> dict[str, Any]:
        """The next transformed batch of numpy arrays: ``{"data", "target", "case_ids"}``."""
        rng = self.batch_rng(self.next_index())
        picks = rng.integers(len(self.case_ids), size=self.batch_size)
        ids = [self.case_ids[i] for i in picks]
        patches = [
            sample_patch(
                self.case(cid),
                self.config,
                force_fg=force,
                rng=rng,
                patch_size=self.patch_size,
                previous=self.previous(cid),
            )
            for cid, force in zip(ids, self.forced, strict=True)
        ]
        batch = {
            "data": np.stack([d for d, _ in patches]),
            "seg": np.stack([s for _, s in patches]),
            "case_ids": ids,
        }
        with seeded_global_rng(rng):
            out: dict[str, Any] = self.transform(**batch)
        if self.previous_stage is not None:
            out = self.previous_stage.move_to_data(out, rng if self.perturb_previous else None)
        if self.keep != slice(0, self.batch_size):
            out = {k: v[self.keep] for k, v in out.items()}
        return out


class BatchLoader:
    """An endless iterator of batches; close it (or use ``with``) to stop its workers.

    Args:
        dataset: the batch source.
        workers: 0 runs in this process; ``n >= 1`` starts ``n`` worker processes now.
    """

    def __init__(self, dataset: PatchDataset, *, workers: int) -> None:
        self.dataset = dataset
        self.workers = workers
        self._closed = False
        dataset.number_of_threads_in_multithreaded = max(1, workers)
        if workers == 0:
            self._augmenter: SingleThreadedAugmenter | MultiThreadedAugmenter = SingleThreadedAugmenter(
                dataset, None
            )
            self._finalizer = None
        else:
            # the workers' global numpy states (batches do not draw from them; see PatchDataset)
            spawned = np.random.SeedSequence(list(dataset.seed)).spawn(workers)
            seeds = [int(s.generate_state(1)[0]) for s in spawned]
            mta = MultiThreadedAugmenter(
                dataset, None, workers, num_cached_per_queue=2, seeds=seeds, pin_memory=False
            )
            self._augmenter = mta
            mta.restart()  # start now, so batches are ready when training starts
            self._finalizer = weakref.finalize(self, _stop_workers, mta)

    def __iter__(self) -> BatchLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self._closed:
            msg = "this loader is closed; make a new one with make_loader()"
            raise RuntimeError(msg)
        return to_tensors(next(self._augmenter))

    def close(self) -> None:
        """Stop and join the worker processes (idempotent)."""
        self._closed = True
        if self._finalizer is not None:
            self._finalizer()

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _stop_workers(mta: MultiThreadedAugmenter) -> None:
    """Stop and join ``mta``'s worker processes.

    batchgenerators' own shutdown drains the workers' queues, and that read blocks for ever on a
    batch a worker was killed half-way through writing: what a SIGTERM or Ctrl-C sent to the whole
    process group does (Slurm's ``scancel``, ``kill -- -PGID``, ``pkill -f``), so the trainer saved
    its checkpoint and then hung. When a worker was killed by a signal, its queues are therefore
    abandoned unread: the other workers are killed too and nothing waits on the pipes.
    """
    workers = list(mta._processes)
    if not any(p.exitcode is not None and p.exitcode < 0 for p in workers):
        mta._finish()
        return
    mta.abort_event.set()
    for p in workers:
        if p.is_alive():
            p.kill()
        p.join(timeout=5)
    for q in mta._queues:
        q.cancel_join_thread()  # its feeder thread may be stuck on a full pipe nobody reads
        q.close()
    mta._queues, mta._processes = [], []
    mta.was_initialized = False


def make_loader(
    store: PreprocessedStore | Path,
    case_ids: Sequence[str],
    config: Configuration,
    *,
    batch_size: int,
    oversample: float = OVERSAMPLE_FOREGROUND,
    workers: int,
    seed: int | Sequence[int],
    augment: bool,
    augmentation: str = "default",
    start: int = 0,
    previous_stage: PreviousStageInput | None = None,
    part: tuple[int, int] = (0, 1),
) -> BatchLoader:
    """Endless batches of patches from ``case_ids`` of a preprocessed store.

    Args:
        store: the store (or its folder) preprocessed for ``config``.
        case_ids: cases to draw from, uniformly with replacement.
        config: the configuration; its ``patch_size`` is the batches' spatial size.
        batch_size: samples per batch (usually ``config.batch_size``).
        oversample: share of each batch (the last samples) forced to contain foreground.
        workers: 0 for in-process loading, else the number of worker processes.
        seed: one number or several: batch ``n`` is drawn from ``SeedSequence([*seed, n])``,
            whatever ``workers`` is.
        augment: True for the training pipeline (``augmentation``), False for validation
            (patches cut at ``patch_size``, no augmentation).
        augmentation: the training pipeline's name in
            :data:`~autoseg.data.augmentation.AUGMENTATIONS` (``"default"``: nnU-Net's, on
            enlarged patches).
        start: the index of the first batch: the loader gives batches ``start``,
            ``start + 1``, … of the sequence ``seed`` defines (a resumed training run passes the
            number of batches it has already used).
        previous_stage: for a cascade stage, where the previous stage's predictions of
            ``case_ids`` are; they become extra data channels
            (:class:`~autoseg.data.previous_stage.PreviousStageInput`).
        part: ``(i, k)``: each batch is drawn whole (``batch_size`` samples, the global batch of
            ``k`` training processes) and this loader gives its ``i``-th of ``k`` equal slices.

    Returns:
        A :class:`BatchLoader`; ``next()`` gives ``{"data": float32 (B, C_in, *patch),
        "target": int64 (B, 1, *patch), "case_ids": list[str]}``, where ``C_in`` is the number of
        channels, times ``in_slices`` for 2.5D, plus ``previous_stage.channels``.

    Raises:
        ValueError: ``batch_size < 1``, ``workers < 0``, ``start < 0``, ``oversample`` outside
            [0, 1], or a ``part`` that does not cut the batch in equal slices.
        DatasetError: no case ids, or cases missing from the store or lacking a segmentation.
    """
    if batch_size < 1 or workers < 0 or start < 0 or not 0 <= oversample <= 1:
        msg = (
            f"need batch_size >= 1, workers >= 0, start >= 0 and 0 <= oversample <= 1; got "
            f"batch_size={batch_size}, workers={workers}, start={start}, oversample={oversample}"
        )
        raise ValueError(msg)
    folder = store.folder if isinstance(store, PreprocessedStore) else Path(store)
    _check_cases(folder, case_ids, previous_stage)
    dataset = PatchDataset(
        folder,
        case_ids,
        config,
        batch_size=batch_size,
        oversample=oversample,
        seed=seed,
        augment=augment,
        augmentation=augmentation,
        start=start,
        previous_stage=previous_stage,
        part=part,
    )
    log.debug(
        "loader: %d cases, batch %d, patch %s cut at %s, %d workers",
        len(case_ids),
        batch_size,
        config.patch_size,
        dataset.patch_size,
        workers,
    )
    return BatchLoader(dataset, workers=workers)


def _check_cases(folder: Path, case_ids: Sequence[str], previous_stage: PreviousStageInput | None) -> None:
    if not case_ids:
        msg = f"{folder}: no cases to train on"
        raise DatasetError(msg)
    store = PreprocessedStore(folder)
    problems = []
    for cid in case_ids:
        if not store.is_done(cid):
            problems.append(f"{folder}: case {cid} is not preprocessed; run preprocessing first")
        elif not (folder / f"{cid}_seg.npy").is_file():
            problems.append(f"{folder}: case {cid} has no segmentation to train on")
        elif previous_stage is not None and not previous_stage.path(cid).is_file():
            problems.append(
                f"{previous_stage.path(cid)}: missing, the previous stage's prediction of case {cid}; "
                "train this fold again"
            )
    if problems:
        raise DatasetError(problems)
