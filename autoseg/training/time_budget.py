"""Training for a wall-clock budget (``autoseg train ... --time 2h``): how many epochs fit.

Why decide after the first epoch: how long a step takes depends on the machine, its load, the
network, the patch and the data loading, and none of these is known well enough before a step
has run. So the first epoch runs, timed, and then :func:`epochs_for_budget` fixes the total; the
run keeps the number of steps per epoch it was given (the default 250), so the epochs are the
only thing the budget changes.

The learning-rate schedule spans the chosen total from epoch 0 on. The first epoch runs before
the total is known, at the learning rate the schedule gives epoch 0 of the provisional total
(``--epochs``' default); the built-in poly schedule gives epoch 0 the initial rate whatever the
total (``lr * (1 - 0 / total) ** 0.9``), so for it the run is exactly a run of the chosen number
of epochs. A schedule whose rate within epoch 0 depends on the total differs during that one
epoch only: ``poly_step`` decays towards the provisional total's rate (at most ~11 % above the
chosen total's at the end of epoch 0 when 8 epochs are chosen), and follows the chosen total
from epoch 1 on.

The plan keeps room at the end (:func:`final_validation_s`): the final checkpoint and the fold's
full sliding-window validation with mirroring, from the time the prediction of the smallest
validation case takes after the first epoch and the number of windows all validation cases need;
and :data:`SAFETY` of the limit for epochs slower than the first (a shared machine). The first
epoch includes start-up costs (worker processes, the first batches), so the steady step time is
measured on its last nine tenths (:func:`steady_seconds_per_step`).

The decision (:class:`BudgetDecision`) is stored in the training settings (``budget``), so it is
in ``train_config.json`` and in every checkpoint's metadata: ``--continue`` with the same
``--time`` finishes the decided epochs instead of deciding again (:func:`continued`).

This module imports no torch at import time: the settings dataclass refers to it.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from autoseg.options import duration_seconds

if TYPE_CHECKING:
    from autoseg.training.config import TrainConfig

#: Fraction of the limit left unplanned, for epochs slower than the first (other jobs on the
#: machine, a slower disk) and for what is not measured (process exit, the last log lines).
SAFETY = 0.05
#: The final validation's network time is multiplied by this: resampling the outputs to the
#: source grid, writing label maps and probabilities and scoring them come on top.
FINAL_FACTOR = 1.5
#: Seconds per validation case on top (reading the reference, writing files).
PER_CASE_S = 1.0
#: Seconds kept for the final checkpoint, the summary and the progress curves.
FINAL_FIXED_S = 5.0


@dataclass(frozen=True)
class BudgetDecision:
    """What a time-budgeted run decided after its first epoch, and from what.

    Attributes:
        limit_s: the budget (``--time``) in seconds.
        epochs: the total number of epochs chosen.
        decided_after: epochs completed when it was decided (1, or more in a continued run
            that had not decided yet).
        seconds_per_iter: measured seconds per training step (steady, see
            :func:`steady_seconds_per_step`).
        val_s: measured seconds of the validation batches of one epoch.
        epoch_s: planned seconds per further epoch: steps, validation batches, records and
            checkpoints.
        elapsed_s: seconds since the command started, when it decided.
        final_s: seconds kept for the end: final checkpoint and full validation.
        safety_s: seconds of the limit left unplanned (:data:`SAFETY`).
    """

    limit_s: float
    epochs: int
    decided_after: int
    seconds_per_iter: float
    val_s: float
    epoch_s: float
    elapsed_s: float
    final_s: float
    safety_s: float

    @property
    def expected_s(self) -> float:
        """Seconds from the start to the planned end."""
        return self.elapsed_s + (self.epochs - self.decided_after) * self.epoch_s + self.final_s


def epochs_for_budget(
    limit_s: float,
    elapsed_s: float,
    epoch_s: float,
    final_s: float,
    *,
    done: int = 1,
    safety: float = SAFETY,
) -> int:
    """The total number of epochs that ends within ``limit_s``.

    Every further epoch takes ``epoch_s``; the run has used ``elapsed_s`` for ``done`` epochs
    (and its start-up); ``final_s`` is kept for the end and ``safety * limit_s`` is left free.
    Never fewer than ``done``: the epochs run are not undone, and a budget too small for one more
    epoch ends the run after them (the caller warns).

    Raises:
        ValueError: ``epoch_s`` is not positive, or ``safety`` not in [0, 1).

    Examples:
        >>> epochs_for_budget(3600, elapsed_s=70, epoch_s=60, final_s=60, safety=0.05)
        55
        >>> epochs_for_budget(100, elapsed_s=90, epoch_s=60, final_s=20)
        1
    """
    if not epoch_s > 0:
        msg = f"an epoch must take some time, got {epoch_s} s"
        raise ValueError(msg)
    if not 0 <= safety < 1:
        msg = f"safety must be in [0, 1), got {safety}"
        raise ValueError(msg)
    spare = limit_s * (1 - safety) - elapsed_s - final_s
    return done + max(0, math.floor(spare / epoch_s))


def steady_seconds_per_step(step_ends: Sequence[float], start: float) -> float:
    """Seconds per training step once the run is going: the mean over the last nine tenths of
    the steps (all of them when fewer than 10), so that the first steps' start-up (worker
    processes, first batches, cuDNN's search on a GPU) does not count as every step's cost.

    Args:
        step_ends: ``time.perf_counter()`` at the end of each step, in order.
        start: the same clock when the first of them began.

    Raises:
        ValueError: no step was timed.

    Examples:
        >>> steady_seconds_per_step([5.0, 6.0, 7.0], start=0.0)
        2.3333333333333335
        >>> steady_seconds_per_step([10.0 + i for i in range(20)], start=0.0)
        1.0
    """
    if not step_ends:
        msg = "no training step was timed"
        raise ValueError(msg)
    skip = len(step_ends) // 10
    if skip == 0:
        return (step_ends[-1] - start) / len(step_ends)
    return (step_ends[-1] - step_ends[skip - 1]) / (len(step_ends) - skip)


def sliding_windows(shape: Sequence[int], patch_size: Sequence[int], kind: str, *, tta: bool = True) -> int:
    """Network passes the final validation needs for a preprocessed case of ``shape`` (Z, Y, X):
    windows at half-patch steps (as :func:`autoseg.inference.sliding_window.predict_logits`
    places them), times the mirrored copies with ``tta``."""
    from autoseg.inference.sliding_window import window_starts
    from autoseg.planning.kinds import kind_of

    k = kind_of(kind)
    window, steps = k.window(patch_size), k.window_steps(0.5)
    n = math.prod(len(window_starts(s, w, st)) for s, w, st in zip(shape, window, steps, strict=True))
    return n * (2 ** len(k.mirror_axes) if tta else 1)


def final_validation_s(windows: int, seconds_per_window: float, n_cases: int) -> float:
    """Seconds kept for the end of the run: the full validation's network passes (``windows`` in
    all, at the measured ``seconds_per_window``) times :data:`FINAL_FACTOR`, plus
    :data:`PER_CASE_S` per case and :data:`FINAL_FIXED_S`.

    Examples:
        >>> final_validation_s(windows=1000, seconds_per_window=0.01, n_cases=4)
        24.0
    """
    return FINAL_FACTOR * windows * seconds_per_window + PER_CASE_S * n_cases + FINAL_FIXED_S


def continued(old: TrainConfig, new: TrainConfig) -> TrainConfig:
    """The settings a ``--continue`` run goes on with, as far as the time budget goes.

    With the ``--time`` the run began with (compared in seconds), the decision it made is kept:
    its epochs and its record; the limit then held for the uninterrupted run, and the continued
    one finishes those epochs (a run stopped before it decided decides in the continued run).
    Without ``--time``, ``new`` is returned as is: its ``--epochs`` replace the budget, a change
    the caller warns about.

    Raises:
        ValueError: another ``--time`` than the run began with, or ``--time`` for a run that
            began with a number of epochs; the message says how to continue it.
    """
    if new.time_limit is None:
        return new
    if old.time_limit is None:
        msg = (
            f"it was trained for {old.epochs} epochs, not for a time (--time); continue it with "
            f"--epochs {old.epochs} (or more), or train this fold from scratch"
        )
        raise ValueError(msg)
    if duration_seconds(old.time_limit) != duration_seconds(new.time_limit):
        decided = f", which decided {old.budget.epochs} epochs" if old.budget else ""
        msg = (
            f"it began with --time {old.time_limit}{decided}, not --time {new.time_limit}; continue "
            f"it with --time {old.time_limit}, or with --epochs N instead of --time"
        )
        raise ValueError(msg)
    if old.budget is None:
        return dataclasses.replace(new, time_limit=old.time_limit)
    return dataclasses.replace(new, time_limit=old.time_limit, epochs=old.epochs, budget=old.budget)


def decision_line(
    d: BudgetDecision, *, time_limit: str, iters_per_epoch: int, val_cases: int, started: datetime.datetime
) -> str:
    """The log line that says what a budgeted run decided and why."""
    val_share = d.val_s / d.epoch_s if d.epoch_s > 0 else 0.0
    end = started + datetime.timedelta(seconds=d.expected_s)
    limit = started + datetime.timedelta(seconds=d.limit_s)
    return (
        f"time budget {time_limit} ({d.limit_s:.0f} s): measured {d.seconds_per_iter:.3g} s/it, an "
        f"epoch {d.epoch_s:.1f} s of which validation {d.val_s:.1f} s ({val_share:.0%}); "
        f"{d.elapsed_s:.0f} s used by start-up and {d.decided_after} epoch(s); keeping {d.final_s:.0f} s "
        f"for the final checkpoint and validation of {val_cases} case(s) and {d.safety_s:.0f} s "
        f"({SAFETY:.0%}) spare: {d.epochs} epochs x {iters_per_epoch} iterations, expected end "
        f"{end:%Y-%m-%d %H:%M:%S} (limit {limit:%H:%M:%S})"
    )
