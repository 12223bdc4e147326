"""Run a function over cases in worker processes, with a progress bar, results in input order.

:func:`map_cases` is what every stage that reads many cases uses (fingerprint, preprocessing,
evaluation, find-best, post-processing): the function raises an
:class:`~autoseg.errors.AutosegError` for a bad case, which is kept as that case's
:class:`Outcome` so that the other cases still run, and every problem is reported together
(:func:`values_or_raise`). The exception itself comes back from the worker (pickled), so its type
is kept, never rebuilt from a name.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Generic, TypeVar

from tqdm import tqdm

from autoseg.errors import AutosegError, DatasetError

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """Worker processes to use by default: the CPUs this process may run on, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def exit_when_orphaned(main_pid: int | None = None, interval: float = 1.0) -> None:
    """End this worker process soon after the process it works for is gone.

    Worker processes (batchgenerators' augmentation workers, the preprocessing pool) work until
    that process tells them to stop; one killed with SIGKILL never does, and they would run on
    for ever, writing into folders a rerun is using (benchmarks/soak_kill.py found them). A
    daemon thread polls and exits without cleanup, as the killed process did.

    Args:
        main_pid: the process to outlive by at most ``interval``; None: this process's parent
            (with ``forkserver`` the parent is the fork server, which can outlive the main
            process: give its pid).
        interval: seconds between checks.
    """
    parent = os.getppid()

    def gone() -> bool:
        if main_pid is None:
            return os.getppid() != parent
        try:
            os.kill(main_pid, 0)
            with open(f"/proc/{main_pid}/stat", "rb") as f:  # killed but not yet reaped
                return f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except ProcessLookupError:
            return True
        except OSError:
            return False

    def watch() -> None:
        while not gone():
            time.sleep(interval)
        os._exit(0)

    threading.Thread(target=watch, name="exit-when-orphaned", daemon=True).start()


def _init_worker(main_pid: int) -> None:
    exit_when_orphaned(main_pid)
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
            min(workers, len(items)), mp_context=_context(), initializer=_init_worker, initargs=(os.getpid(),)
        ) as pool:
            chunk = max(1, len(items) // (workers * 8))
            out = []
            for r in pool.map(fn, items, chunksize=chunk):
                out.append(r)
                bar.update()
            return out
    finally:
        bar.close()


@dataclass(frozen=True)
class Outcome(Generic[R]):
    """One case's result: its value, or the user-fixable error it raised (exactly one is set)."""

    value: R | None = None
    error: AutosegError | None = None


def _capture(fn: Callable[[T], R], item: T) -> Outcome[R]:
    try:
        return Outcome(value=fn(item))
    except AutosegError as e:
        return Outcome(error=e)


def map_cases(
    fn: Callable[[T], R], items: Sequence[T] | Iterable[T], *, workers: int, desc: str, unit: str = "case"
) -> list[Outcome[R]]:
    """:func:`parallel_map` of ``fn``, each :class:`~autoseg.errors.AutosegError` kept as its
    case's outcome (other exceptions are bugs and propagate). ``fn`` must be module-level."""
    return parallel_map(partial(_capture, fn), items, workers=workers, desc=desc, unit=unit)


def problems_of(error: AutosegError) -> list[str]:
    """The one-line problems an error reports (a :class:`DatasetError` may hold several)."""
    return list(error.problems) if isinstance(error, DatasetError) else [str(error)]


def values_or_raise(outcomes: Sequence[Outcome[R]]) -> list[R]:
    """The values, or every case's problems raised together.

    One failed case re-raises its own error. Several: a :class:`DatasetError` listing every
    problem, unless they are all of one other type, which is then raised with the list.

    Raises:
        AutosegError: the collected errors (see above).
    """
    errors = [o.error for o in outcomes if o.error is not None]
    if not errors:
        return [o.value for o in outcomes]  # type: ignore[misc]
    if len(errors) == 1:
        raise errors[0]
    problems = [p for e in errors for p in problems_of(e)]
    kinds = {type(e) for e in errors}
    if len(kinds) == 1 and not issubclass(kind := kinds.pop(), DatasetError):
        msg = f"{len(errors)} cases failed:\n  " + "\n  ".join(problems)
        raise kind(msg)
    raise DatasetError(problems)
