"""Training settings: one dataclass built from the plan plus command-line overrides, saved beside
the checkpoints so that a run can be repeated and ``--continue`` can check it resumes the same run."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal


@dataclass
class TrainConfig:
    """Everything the training loop needs besides the plan.

    Attributes:
        configuration: plan configuration name.
        fold: 0-4, or "all".
        epochs: number of epochs.
        iters_per_epoch: optimiser steps per epoch.
        val_iters: validation batches per epoch (pseudo-Dice for the best checkpoint).
        lr: initial learning rate (SGD, Nesterov, momentum 0.99, poly schedule exponent 0.9).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        grad_clip: gradient-norm clipping.
        loss: "dice_ce", or "dice_focal" for strong class imbalance.
        device: "cuda" or "cpu".
        precision: "auto" (fp16 autocast on CUDA, bf16 on CPUs with native bf16, else fp32),
            "fp32", "bf16", "fp16".
        accumulate: gradient accumulation steps per optimiser step.
        workers: augmentation worker processes (0: in the training process).
        seed: seed of every random draw.
        checkpoint_every: epochs between ``checkpoint_latest.pt`` writes.
        val_probabilities: keep softmax probabilities of the final validation (for ensembling).
        batch_size: overrides the plan's batch size (None: the plan's).
    """

    configuration: str
    fold: int | Literal["all"]
    epochs: int = 1000
    iters_per_epoch: int = 250
    val_iters: int = 50
    lr: float = 1e-2
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    loss: Literal["dice_ce", "dice_focal"] = "dice_ce"
    device: str = "cpu"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    accumulate: int = 1
    workers: int = 2
    seed: int = 12345
    checkpoint_every: int = 5
    val_probabilities: bool = True
    batch_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @property
    def fold_name(self) -> str:
        """``fold_0`` … ``fold_4`` or ``fold_all``."""
        return f"fold_{self.fold}"
