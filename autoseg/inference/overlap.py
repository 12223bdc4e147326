"""Overlap the three stages of predicting a cohort: while the network runs on case ``i``, threads
read and preprocess case ``i+1`` and take case ``i-1`` back to its grid and write it.

Threads, not processes: the heavy parts of reading and writing release the GIL (SimpleITK's
readers and writers, zlib, numpy, torch's resampling; measured here, a pure-Python thread kept
97-100 % of its speed while another ran ``sitk.ReadImage``/``WriteImage``), so threads overlap
them with the network without pickling volumes between processes, and every array stays in one
address space. Memory stays bounded by the depths: at most ``read_ahead`` prepared cases wait
for the network, and at most ``write_behind`` computed cases wait for (or are in) the writers.

With both depths 0 every stage runs in the calling thread, case after case: the sequential
loop, kept for debugging and as the baseline the benchmark compares with.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

__all__ = ["default_depth", "overlapped"]

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")
Computed = TypeVar("Computed")
Result = TypeVar("Result")


def default_depth(device_type: str) -> int:
    """How many cases to read ahead of, and write behind, the network when not told.

    1 where the network runs on an accelerator: the CPU cores are then free for reading and
    writing, and those are most of a small case's time. 0 (in turn) on the CPU, where torch's
    threads already use every core and the reader and writer threads only compete with them:
    on 2 idle cores, 40 hippocampus cases with TTA off took 6.16-6.29 s overlapped vs 5.82 s
    in turn; 4 large CTs (73 M voxels) 80.0 s vs 86.1 s, a gain that costs 11 % more peak
    memory (medians of 3 runs, 2026-12-03, ``benchmarks/bench_cohort.py``).

    Examples:
        >>> default_depth("cuda"), default_depth("cpu")
        (1, 0)
    """
    return 0 if device_type == "cpu" else 1


def overlapped(
    items: Sequence[Item],
    prepare: Callable[[Item], Prepared],
    compute: Callable[[Item, Prepared], Computed],
    finish: Callable[[Item, Computed], Result],
    *,
    read_ahead: int = 1,
    write_behind: int = 1,
    weight: Callable[[Item], float] | None = None,
    budget: float = math.inf,
) -> Iterator[tuple[Item, Result]]:
    """``finish(item, compute(item, prepare(item)))`` for every item, in order, with the stages
    of neighbouring items overlapped.

    ``prepare`` runs on ``read_ahead`` threads, up to that many items ahead of ``compute``;
    ``compute`` runs in the calling thread (the network: one at a time, on the device);
    ``finish`` runs on ``write_behind`` threads, up to that many items behind. Results come out
    in the order of ``items``, each as soon as it and every earlier one are finished.

    ``weight`` and ``budget`` bound what is in flight besides the depths: an item counts its
    weight from the start of its ``prepare`` until its result comes out, and an item starts only
    while the weights in flight plus its own stay within ``budget``, or when nothing else is in
    flight (an item heavier than the budget runs alone). Weighing cases by their voxels keeps
    the memory of large volumes at that of one case at a time while small ones overlap freely.

    An exception raised by a stage is raised here when its item's turn comes, after the results
    of the items before it (as in turn); the stages of later items already started are then
    waited for (a stage is never abandoned half-way) and those not yet started are dropped.
    A stage that can fail for one item alone (a corrupt scan) should return the failure as its
    result instead.

    Examples:
        >>> out = overlapped([1, 2, 3], lambda x: x * 10, lambda x, p: p + x, lambda x, c: -c)
        >>> list(out)
        [(1, -11), (2, -22), (3, -33)]
        >>> list(overlapped([1, 2], str, lambda x, p: p * 2, lambda x, c: c, read_ahead=0, write_behind=0))
        [(1, '11'), (2, '22')]
    """
    if read_ahead < 0 or write_behind < 0:
        msg = f"depths must be >= 0, got read_ahead={read_ahead}, write_behind={write_behind}"
        raise ValueError(msg)
    readers = ThreadPoolExecutor(read_ahead, thread_name_prefix="autoseg-read") if read_ahead else None
    writers = ThreadPoolExecutor(write_behind, thread_name_prefix="autoseg-write") if write_behind else None
    reads: deque[Future[Prepared]] = deque()
    writes: deque[tuple[int, Future[Result]]] = deque()
    weighed: dict[int, float] = {}
    in_flight = 0.0  # the weights of the items started and not yet given out
    started = 0  # items whose prepare has started (or, in turn, is about to)

    def weights(j: int) -> float:
        """Item ``j``'s weight, asked for only when something may overlap (in turn, never)."""
        if weight is None or (readers is None and writers is None):
            return 0.0
        if j not in weighed:
            weighed[j] = weight(items[j])
        return weighed[j]

    def fits(j: int) -> bool:
        return in_flight == 0 or in_flight + weights(j) <= budget

    def start(j: int) -> None:
        nonlocal in_flight, started
        in_flight += weights(j)
        started += 1
        if readers is not None:
            reads.append(readers.submit(prepare, items[j]))

    def give_out() -> Iterator[tuple[Item, Result]]:
        """The oldest write's result (its weight leaves the budget)."""
        nonlocal in_flight
        j, future = writes.popleft()
        result = future.result()
        in_flight -= weights(j)
        yield items[j], result

    try:
        for i, item in enumerate(items):
            try:
                if started == i:  # this item waits for room: results of earlier ones go out first
                    while not fits(i) and writes:
                        yield from give_out()
                    start(i)
                while readers is not None and started < len(items) and started <= i + read_ahead:
                    if not fits(started):
                        break
                    start(started)
                prepared = prepare(item) if readers is None else reads.popleft().result()
                computed = compute(item, prepared)
                del prepared  # the network's input is no longer needed: memory for the next one
            except BaseException:
                while writes:  # the earlier items' results come out first, as in turn
                    yield from give_out()
                raise
            if writers is None:
                result = finish(item, computed)
                del computed  # not kept while the caller handles the result
                in_flight -= weights(i)
                yield item, result
                continue
            while len(writes) >= write_behind:
                yield from give_out()
            writes.append((i, writers.submit(finish, item, computed)))
            del computed
        while writes:
            yield from give_out()
    finally:
        for pool in (readers, writers):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
