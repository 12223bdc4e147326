"""Run a function over cases in worker processes, with a progress bar, results in input order."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Worker processes to use by default: the CPUs this process may run on, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def _init_worker() -> None:
    # One thread per worker: the pool already uses every core.
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


def _context() -> mp.context.BaseContext:
    """How to start workers: ``fork`` (cheapest) unless this process has loaded torch.

    A process that has run torch holds an OpenMP thread pool, and a child forked from it hangs at
    its first parallel torch operation (GNU OpenMP is not fork-safe): evaluating after training
    in one Python process did. ``forkserver`` children start from a clean server process instead
    (costing an import of the worker's module each).
    """
    if not sys.platform.startswith("linux"):
        return mp.get_context("spawn")
    return mp.get_context("forkserver" if "torch" in sys.modules else "fork")


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T] | Iterable[T], *, workers: int, desc: str, unit: str = "case"
) -> list[R]:
    """``[fn(x) for x in items]`` over ``workers`` processes, with a progress bar on stderr.

    With one worker (or one item) it runs in this process, which keeps tracebacks simple and
    avoids the start-up cost. ``fn`` must be a module-level function and should return errors
    as values rather than raise, so that one bad case does not hide the others.
    """
    items = list(items)
    bar = tqdm(total=len(items), desc=desc, unit=unit, disable=None, file=sys.stderr, dynamic_ncols=True)
    try:
        if workers <= 1 or len(items) <= 1:
            out = []
            for x in items:
                out.append(fn(x))
                bar.update()
            return out
        with ProcessPoolExecutor(
            min(workers, len(items)), mp_context=_context(), initializer=_init_worker
        ) as pool:
            chunk = max(1, len(items) // (workers * 8))
            out = []
            for r in pool.map(fn, items, chunksize=chunk):
                out.append(r)
                bar.update()
            return out
    finally:
        bar.close()
