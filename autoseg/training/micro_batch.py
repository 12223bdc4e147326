"""Training steps that survive running out of GPU memory by splitting batches into micro-batches.

Why split the drawn batch rather than draw smaller batches: the loader keeps drawing batches of
the configured size, so batch ``n`` of the run (cases, patches, augmentation) stays the same
whatever the memory does (resuming stays exact, see :mod:`autoseg.data.loader`), and nothing has
to be rebuilt or restarted. Each drawn batch is cut into micro-batches whose losses are weighted by
their share of the batch and back-propagated one after the other: the gradient accumulated is the
batch's (the effective batch, batch x accumulate x processes, is unchanged). It is exact for losses
that are means over samples (cross-entropy, per-sample Dice) with per-sample normalisation
(instance norm, as the planned networks use); a batch Dice (``batch_dice``, summed over the batch)
is then computed per micro-batch, as gradient accumulation already does per drawn batch.

On ``torch.OutOfMemoryError`` in a forward or backward pass the step is abandoned before the
optimiser moves: gradients are zeroed, the step's tensors are dropped (they are locals of the
abandoned call), the CUDA cache is emptied, the micro-batch halves, and the whole step is redone on
the same drawn batches. Below one sample there is nothing left to split:
:class:`~autoseg.errors.TrainingOutOfMemoryError` says so in one line.

Several processes must decide alike (one rank redoing a step while the others all-reduce its
gradients would hang them): after the backward passes every rank says whether it ran out of memory
(one all-reduced flag, ``agree``), and all of them halve and redo the step if any did. That is why
the gradients are all-reduced after the step, not during the backward pass (see
:meth:`autoseg.training.trainer.Trainer._step`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from autoseg.errors import TrainingOutOfMemoryError

log = logging.getLogger(__name__)

#: ``compute(micro_batch, weight)``: forward and backward of one micro-batch with its loss scaled
#: by ``weight``; returns the weighted loss.
Compute = Callable[[Mapping[str, Any], float], float]


def batch_length(batch: Mapping[str, Any]) -> int:
    """Samples in a loader batch (the first dimension of its ``data``)."""
    return int(batch["data"].shape[0])


def split_batch(batch: Mapping[str, Any], size: int) -> list[dict[str, Any]]:
    """``batch`` cut along the sample dimension into pieces of ``size`` samples (the last may be
    smaller); tensors, arrays and lists are cut alike, anything else is shared.

    Raises:
        ValueError: ``size`` below 1.

    Examples:
        >>> b = {"data": torch.zeros(5, 1, 2), "target": torch.zeros(5, 1, 2), "case_ids": list("abcde")}
        >>> [(len(p["data"]), p["case_ids"]) for p in split_batch(b, 2)]
        [(2, ['a', 'b']), (2, ['c', 'd']), (1, ['e'])]
    """
    if size < 1:
        msg = f"micro-batch size must be >= 1, got {size}"
        raise ValueError(msg)
    n = batch_length(batch)
    if size >= n:
        return [dict(batch)]
    pieces = []
    for start in range(0, n, size):
        end = min(start + size, n)
        pieces.append(
            {k: v[start:end] if _per_sample(v, n) else v for k, v in batch.items()},
        )
    return pieces


def _per_sample(value: Any, n: int) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray, list, tuple)) and len(value) == n


def free_memory(device: torch.device) -> None:
    """Give the CUDA caching allocator's free blocks back after an out-of-memory error, so that
    the next attempt starts from a defragmented pool (nothing to do on a CPU)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def halved(micro: int) -> int:
    """The next micro-batch size: half, rounded up (5 -> 3 -> 2 -> 1).

    >>> [halved(m) for m in (8, 5, 3, 2)]
    [4, 3, 2, 1]
    """
    return max(1, math.ceil(micro / 2))


def backward_in_pieces(drawn: Sequence[Mapping[str, Any]], micro: int, compute: Compute) -> float | None:
    """Forward and backward every drawn batch in micro-batches of ``micro`` samples.

    Each piece's loss is weighted by its share of its batch and by ``1 / len(drawn)``, so the
    accumulated gradient is that of ``len(drawn)`` whole batches accumulated as before.

    Returns:
        The summed weighted loss, or None when the memory ran out (the caller zeroes the
        gradients; this call's tensors are gone when it returns).
    """
    total = 0.0
    try:
        for batch in drawn:
            n = batch_length(batch)
            for piece in split_batch(batch, micro):
                share = batch_length(piece) / n
                total += compute(piece, share / len(drawn))
    except torch.OutOfMemoryError:
        return None
    return total


class MicroBatcher:
    """Remembers the micro-batch that fits and redoes steps that ran out of memory.

    Args:
        batch_size: samples per drawn batch (this process's share of the batch).
        accumulate: drawn batches per optimiser step.
        world_size: training processes.
        device: where the network runs (its cache is emptied after an out-of-memory error).
        patch_size: the patch, for the error message.

    Attributes:
        micro: the current micro-batch size (starts at ``batch_size``: no splitting).
    """

    def __init__(
        self,
        batch_size: int,
        accumulate: int,
        world_size: int,
        device: torch.device,
        patch_size: Sequence[int],
    ) -> None:
        self.batch_size, self.accumulate, self.world_size = batch_size, accumulate, world_size
        self.device = device
        self.patch_size = tuple(patch_size)
        self.micro = batch_size

    def run(
        self,
        drawn: Sequence[Mapping[str, Any]],
        compute: Compute,
        *,
        agree: Callable[[bool], bool],
        reset: Callable[[], None],
    ) -> float:
        """Accumulate the gradients of ``drawn``, halving the micro-batch while memory runs out.

        Args:
            drawn: the step's batches, as the loader gave them.
            compute: forward and backward of one micro-batch (see :data:`Compute`).
            agree: whether any process ran out of memory, given whether this one did (the same
                answer on every rank; identity in a single process).
            reset: zero the gradients of an abandoned attempt.

        Returns:
            The step's loss (the sum of the weighted micro-batch losses).

        Raises:
            TrainingOutOfMemoryError: out of memory at micro-batch 1 (on any process).
        """
        start = self.micro
        while True:
            total = backward_in_pieces(drawn, self.micro, compute)
            if not agree(total is None):
                break
            reset()
            free_memory(self.device)
            if self.micro == 1:
                raise TrainingOutOfMemoryError(self._give_up_message())
            self.micro = halved(self.micro)
        if self.micro != start:
            self._warn(start)
        assert total is not None  # every rank had memory enough
        return total

    def _warn(self, start: int) -> None:
        pieces = math.ceil(self.batch_size / self.micro)
        log.warning(
            "out of GPU memory in a training step at micro-batch %d: now micro-batch %d, %d x %d "
            "accumulation steps per optimiser step; the effective batch (%d x %d x %d processes) "
            "is unchanged and the step was redone from its start",
            start,
            self.micro,
            pieces,
            self.accumulate,
            self.batch_size,
            self.accumulate,
            self.world_size,
        )

    def _give_up_message(self) -> str:
        patch = "x".join(str(p) for p in self.patch_size)
        return (
            f"out of GPU memory in a training step even with one sample of patch {patch} per "
            "forward pass (micro-batch 1), so a smaller --batch-size cannot help: re-plan with a "
            "smaller --gpu-memory (a smaller patch), train with --precision auto (fp16) if it was "
            "fp32, or free the GPU of other processes"
        )
