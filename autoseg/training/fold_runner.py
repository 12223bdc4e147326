"""Several folds of one configuration from one command: a child process per fold, one per GPU.

``autoseg train DATASET CONFIG 0 1 2 3 4`` prepares what the folds share once (splits,
preprocessed data: :func:`autoseg.pipeline.prepare_folds`), then runs each fold as its own
``python -m autoseg train DATASET CONFIG FOLD`` with the same options. Why child processes rather
than threads or a loop in this process: a fold is then exactly the single-fold run (its own
seeds, logging, signal handling and CUDA context), and a fold that crashes takes no other down.

Where they run (:func:`assign_folds`): with ``--device cuda`` and several GPUs visible, one lane
per GPU (at most one per fold), each child seeing only its GPU (``CUDA_VISIBLE_DEVICES``); folds
of a lane run one after the other. On one GPU or the CPU there is one lane: the folds run one
after the other (two trainings on one device would only fight for its memory and cores).

Progress: the children are quiet (their console output goes to ``fold_K/console.txt``, the full
log to ``fold_K/log.txt`` as for any run); this process shows one bar per fold, the epochs done as
read from each fold's ``progress.jsonl``. SIGTERM or Ctrl-C is forwarded to the running children,
which save their latest checkpoint (``--continue`` resumes each fold), and no further fold starts.
The children are started in their own sessions, so a terminal's Ctrl-C reaches them only through
this process, once (a second one stops them at once, as for a single run).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from tqdm import tqdm

log = logging.getLogger(__name__)

Fold = int | Literal["all"]
#: The exit code of a run stopped by a signal (as ``autoseg train`` returns it).
INTERRUPTED = 130


@dataclass(frozen=True)
class Lane:
    """Folds trained one after the other on one device.

    Attributes:
        gpu: the index of the GPU among those visible to this process, or None: the children
            see what this process sees (the CPU, or the one GPU).
        folds: the folds, in order.
    """

    gpu: int | None
    folds: tuple[Fold, ...]


def assign_folds(folds: Sequence[Fold], *, device: str, gpu_count: int) -> list[Lane]:
    """Spread folds over the GPUs, round-robin: fold ``i`` goes to GPU ``i % lanes``.

    Examples:
        >>> assign_folds([0, 1, 2, 3, 4], device="cuda", gpu_count=2)
        [Lane(gpu=0, folds=(0, 2, 4)), Lane(gpu=1, folds=(1, 3))]
        >>> assign_folds([0, 1], device="cpu", gpu_count=4)
        [Lane(gpu=None, folds=(0, 1))]
    """
    if device != "cuda" or gpu_count < 2 or len(folds) < 2:
        return [Lane(None, tuple(folds))]
    lanes = min(gpu_count, len(folds))
    return [Lane(g, tuple(folds[g::lanes])) for g in range(lanes)]


def visible_device(gpu: int, inherited: str | None) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` of a child on GPU ``gpu`` of this process's visible ones
    (``inherited``: this process's own setting, whose ``gpu``-th entry it is, if set).

    >>> visible_device(1, None), visible_device(1, "4,6")
    ('1', '6')
    """
    if inherited:
        entries = [e.strip() for e in inherited.split(",") if e.strip()]
        if gpu < len(entries):
            return entries[gpu]
    return str(gpu)


@dataclass
class FoldResult:
    """How one fold's child ended.

    Attributes:
        fold: the fold.
        code: its exit code (None: never started, the run was stopped first).
        console: its console output file.
        seconds: how long it ran.
    """

    fold: Fold
    code: int | None
    console: Path
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether the fold finished."""
        return self.code == 0

    def last_line(self) -> str:
        """The child's last console line (its error, when it failed)."""
        try:
            lines = [
                x
                for x in self.console.read_text(encoding="utf-8", errors="replace").splitlines()
                if x.strip()
            ]
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""


@dataclass
class _Running:
    fold: Fold
    proc: subprocess.Popen[bytes]
    out: IO[bytes]
    started: float


@dataclass
class FoldRunner:
    """Runs the folds' children lane by lane and shows their progress.

    Args:
        lanes: from :func:`assign_folds`.
        command: the child's command line for a fold.
        fold_dir: a fold's folder (its ``progress.jsonl`` and ``console.txt``).
        epochs: the epochs of a fold (the bars' length).
        env: the children's environment (``CUDA_VISIBLE_DEVICES`` is set per lane on top).
        poll_seconds: how often progress and exits are checked.
    """

    lanes: list[Lane]
    command: Callable[[Fold], list[str]]
    fold_dir: Callable[[Fold], Path]
    epochs: int
    env: dict[str, str] = field(default_factory=lambda: dict(os.environ))
    poll_seconds: float = 1.0
    _stop: int | None = field(default=None, init=False)
    _running: dict[int, _Running] = field(default_factory=dict, init=False)

    def run(self) -> list[FoldResult]:
        """Run every fold (or until a signal); the results in the order the folds were given."""
        pending = {i: list(lane.folds) for i, lane in enumerate(self.lanes)}
        order = [f for lane in self.lanes for f in lane.folds]
        results: dict[Fold, FoldResult] = {}
        bars = {
            f: tqdm(total=self.epochs, desc=f"fold {f}", unit="epoch", position=i, leave=True, disable=None)
            for i, f in enumerate(order)
        }
        handlers = {s: signal.signal(s, self._forward) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            while True:
                for i in range(len(self.lanes)):
                    self._reap(i, results)
                    if i not in self._running and pending[i] and self._stop is None:
                        self._start(i, pending[i].pop(0))
                for run in self._running.values():
                    _show(bars[run.fold], self.fold_dir(run.fold) / "progress.jsonl")
                if not self._running and (self._stop is not None or not any(pending.values())):
                    break
                time.sleep(self.poll_seconds)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            for b in bars.values():
                b.close()
        for f in order:
            results.setdefault(f, FoldResult(f, None, self.fold_dir(f) / "console.txt"))
        return [results[f] for f in order]

    def _start(self, lane: int, fold: Fold) -> None:
        env = dict(self.env)
        gpu = self.lanes[lane].gpu
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = visible_device(gpu, self.env.get("CUDA_VISIBLE_DEVICES"))
        folder = self.fold_dir(fold)
        folder.mkdir(parents=True, exist_ok=True)
        out = open(folder / "console.txt", "wb")  # noqa: SIM115  # closed when the child is reaped
        proc = subprocess.Popen(
            self.command(fold), env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._running[lane] = _Running(fold, proc, out, time.monotonic())
        where = f"GPU {env['CUDA_VISIBLE_DEVICES']}" if gpu is not None else "this device"
        log.info("fold %s started on %s (output: %s)", fold, where, folder / "console.txt")

    def _reap(self, lane: int, results: dict[Fold, FoldResult]) -> None:
        run = self._running.get(lane)
        if run is None or run.proc.poll() is None:
            return
        del self._running[lane]
        run.out.close()
        result = FoldResult(run.fold, run.proc.returncode, Path(run.out.name), time.monotonic() - run.started)
        results[run.fold] = result
        if result.ok:
            log.info("fold %s finished in %.0f s", run.fold, result.seconds)
        elif result.code == INTERRUPTED:
            log.warning("fold %s stopped; its latest checkpoint is saved (resume with --continue)", run.fold)
        else:
            log.error("fold %s failed (exit %s): %s", run.fold, result.code, result.last_line())

    def _forward(self, signum: int, _frame: Any) -> None:
        """Pass SIGTERM/Ctrl-C on to the running children; start no further fold."""
        again = self._stop is not None
        self._stop = signum
        log.warning(
            "signal %d: %s the running folds (%s)%s",
            signum,
            "stopping at once" if again else "stopping",
            ", ".join(str(r.fold) for r in self._running.values()) or "none",
            "" if again else "; each saves its latest checkpoint",
        )
        for run in self._running.values():
            if run.proc.poll() is None:
                run.proc.send_signal(signum)


def _show(bar: tqdm, records: Path) -> None:  # type: ignore[type-arg]
    """Set a fold's bar to the epochs its ``progress.jsonl`` holds (complete lines only: a line
    being written is counted once its newline is)."""
    try:
        done = records.read_bytes().count(b"\n") if records.is_file() else 0
    except OSError:
        return
    if done != bar.n:
        bar.n = min(done, bar.total or done)
        bar.refresh()


def exit_code(results: Sequence[FoldResult]) -> int:
    """0 when every fold finished; 130 when a signal stopped them; 2 when every failed fold failed
    on bad input (exit 2); else 1.

    >>> exit_code([FoldResult(0, 0, Path("a")), FoldResult(1, 2, Path("b"))])
    2
    """
    failed = [r for r in results if not r.ok]
    if not failed:
        return 0
    if any(r.code in (INTERRUPTED, None) for r in failed):
        return INTERRUPTED
    return 2 if all(r.code == 2 for r in failed) else 1
