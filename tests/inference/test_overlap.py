"""The stage overlap of cohort prediction: order kept, depths bounding what is in flight, every
stage's error raised at its item's turn with nothing abandoned half-way, and the in-turn mode."""

from __future__ import annotations

import random
import threading
import time

import pytest

from autoseg.inference.overlap import default_depth, overlapped


class _Tracker:
    """Counts items between stages, to check the bounds the depths promise."""

    def __init__(self, seed: int = 0) -> None:
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.prepared_waiting = 0  # prepared, not yet taken by compute
        self.max_prepared_waiting = 0
        self.computed_unfinished = 0  # computed, finish not yet returned
        self.max_computed_unfinished = 0
        self.threads: dict[str, set[str]] = {"prepare": set(), "compute": set(), "finish": set()}
        self.finished: list[int] = []

    def _nap(self) -> None:
        with self.lock:
            t = self.rng.uniform(0, 0.004)
        time.sleep(t)

    def prepare(self, x: int) -> int:
        self.threads["prepare"].add(threading.current_thread().name)
        self._nap()
        with self.lock:
            self.prepared_waiting += 1
            self.max_prepared_waiting = max(self.max_prepared_waiting, self.prepared_waiting)
        return x * 10

    def compute(self, x: int, p: int) -> int:
        self.threads["compute"].add(threading.current_thread().name)
        with self.lock:
            self.prepared_waiting -= 1
            self.computed_unfinished += 1
            self.max_computed_unfinished = max(self.max_computed_unfinished, self.computed_unfinished)
        self._nap()
        return p + x

    def finish(self, x: int, c: int) -> int:
        self.threads["finish"].add(threading.current_thread().name)
        self._nap()
        with self.lock:
            self.computed_unfinished -= 1
            self.finished.append(x)
        return -c


@pytest.mark.parametrize(("read_ahead", "write_behind"), [(0, 0), (1, 1), (2, 1), (1, 3), (0, 2), (3, 0)])
def test_results_in_order_and_in_flight_bounded(read_ahead: int, write_behind: int) -> None:
    t = _Tracker(seed=read_ahead * 10 + write_behind)
    items = list(range(25))
    got = list(
        overlapped(items, t.prepare, t.compute, t.finish, read_ahead=read_ahead, write_behind=write_behind)
    )
    assert got == [(x, -(x * 11)) for x in items]
    assert sorted(t.finished) == items
    # read_ahead cases beyond the one the network takes next (which is read too)
    assert t.max_prepared_waiting <= read_ahead + 1
    # the case being computed plus write_behind behind it
    assert t.max_computed_unfinished <= write_behind + 1
    main = threading.current_thread().name
    assert t.threads["compute"] == {main}  # the network stays in the calling thread
    assert (t.threads["prepare"] == {main}) == (read_ahead == 0)
    assert (t.threads["finish"] == {main}) == (write_behind == 0)


def test_reading_really_overlaps_the_network() -> None:
    """With read-ahead, case i+1 is read while case i is computed: the total is about the longer
    stage times the cases, not the sum of both."""
    delay = 0.03

    def slow_prepare(x: int) -> int:
        time.sleep(delay)
        return x

    def slow_compute(x: int, p: int) -> int:
        time.sleep(delay)
        return p

    t0 = time.perf_counter()
    list(overlapped(range(8), slow_prepare, slow_compute, lambda x, c: c, read_ahead=0, write_behind=0))
    in_turn = time.perf_counter() - t0
    t0 = time.perf_counter()
    list(overlapped(range(8), slow_prepare, slow_compute, lambda x, c: c, read_ahead=1, write_behind=0))
    ahead = time.perf_counter() - t0
    assert in_turn >= 16 * delay
    assert ahead < in_turn * 0.8  # sleeps overlap even on a loaded machine


@pytest.mark.parametrize("stage", ["prepare", "compute", "finish"])
def test_an_error_is_raised_at_its_turn_and_started_work_is_not_abandoned(stage: str) -> None:
    finished: list[int] = []
    started_finish: list[int] = []

    def prepare(x: int) -> int:
        if stage == "prepare" and x == 3:
            raise OSError("disk gone")
        return x

    def compute(x: int, p: int) -> int:
        if stage == "compute" and x == 3:
            raise OSError("disk gone")
        return p

    def finish(x: int, c: int) -> int:
        started_finish.append(x)
        if stage == "finish" and x == 3:
            raise OSError("disk gone")
        time.sleep(0.01)
        finished.append(x)
        return c

    seen = []

    def consume() -> None:
        for x, _ in overlapped(range(10), prepare, compute, finish, read_ahead=2, write_behind=2):
            seen.append(x)

    with pytest.raises(OSError, match="disk gone"):
        consume()
    assert seen == [0, 1, 2]  # results before the failing item all came out
    # every finish that started also ended (no thread left writing after the error)
    assert sorted(finished) == sorted(x for x in started_finish if not (stage == "finish" and x == 3))
    assert max(started_finish) <= 3 + 2  # bounded: no item far beyond the failure was written


def test_negative_depths_are_refused() -> None:
    with pytest.raises(ValueError, match="depths"):
        list(overlapped([1], str, lambda x, p: p, lambda x, c: c, read_ahead=-1))


@pytest.mark.parametrize(("read_ahead", "write_behind"), [(1, 1), (2, 2), (3, 1), (0, 2)])
def test_the_weight_budget_bounds_what_is_in_flight(read_ahead: int, write_behind: int) -> None:
    """Light items overlap up to the depths; a heavy one runs alone; the weights in flight never
    exceed the budget except for one item heavier than it."""
    weights = {0: 1, 1: 1, 2: 1, 3: 8, 4: 1, 5: 5, 6: 5, 7: 1, 8: 12, 9: 1}
    lock = threading.Lock()
    alive: set[int] = set()
    worst: list[tuple[int, ...]] = []

    def prepare(x: int) -> int:
        with lock:
            alive.add(x)
            worst.append(tuple(sorted(alive)))
        time.sleep(0.002)
        return x

    def finish(x: int, c: int) -> int:
        time.sleep(0.003)
        with lock:
            alive.discard(x)
        return c

    got = list(
        overlapped(
            list(weights),
            prepare,
            lambda x, p: p,
            finish,
            read_ahead=read_ahead,
            write_behind=write_behind,
            weight=weights.__getitem__,
            budget=10,
        )
    )
    assert [x for x, _ in got] == list(weights)
    for group in worst:
        load = sum(weights[x] for x in group)
        assert load <= 10 or len(group) == 1, group
    assert any(len(g) > 1 for g in worst) == (read_ahead + write_behind > 0)  # light ones overlap
    assert (8,) in worst  # the item over the budget ran alone


@pytest.mark.parametrize(("device_type", "depth"), [("cpu", 0), ("cuda", 1), ("mps", 1), ("xpu", 1)])
def test_stages_overlap_by_default_only_off_the_cpu(device_type: str, depth: int) -> None:
    assert default_depth(device_type) == depth
