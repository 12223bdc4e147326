"""Training settings: one dataclass built from the plan plus command-line overrides, saved beside
the checkpoints so that a run can be repeated and ``--continue`` can check it resumes the same run.

The fields that are command-line options carry their help, range and flag (see
:mod:`autoseg.options`): ``autoseg train``'s parser is built from them, so the defaults below are
the command's defaults. The JSON saved as ``train_config.json`` keeps the field names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from autoseg.options import Device, Precision, option, parse_duration
from autoseg.training.time_budget import BudgetDecision

#: Settings added after checkpoints with metadata were first written, with the value that an
#: older stored ``train_config`` (which lacks them) meant: such a run continues unchanged.
ADDED_SETTINGS: dict[str, Any] = {
    "optimizer": "sgd",
    "schedule": "poly",
    "augmentation": "default",
    "ddp_batches": "own",
    "time_limit": None,
    "budget": None,
    "weight_ema": 0.0,
}


@dataclass
class TrainConfig:
    """Everything the training loop needs besides the plan.

    Attributes:
        configuration: plan configuration name.
        fold: 0-4, or "all".
        epochs: number of epochs (with ``time_limit``: the provisional total of the first epoch's
            learning rate until the budget decides it; the command line refuses both flags).
        iters_per_epoch: optimiser steps per epoch.
        val_iters: validation batches per epoch (pseudo-Dice for the best checkpoint).
        lr: initial learning rate (SGD, Nesterov, momentum 0.99, poly schedule exponent 0.9).
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        grad_clip: gradient-norm clipping.
        weight_ema: decay of an exponential moving average of the weights, updated after every
            optimiser step; the average is what is validated, saved for prediction and exported
            (0: off, the weights themselves, nnU-Net's). A recipe candidate for short budgets
            (issue 16): the average of the last ~1 / (1 - decay) steps is less noisy than the
            last step's weights when training stops before the learning rate has decayed far.
        loss: the loss by name (:data:`autoseg.training.losses.LOSSES`): "dice_ce", "dice_focal"
            for strong class imbalance, or a registered one.
        optimizer: the optimiser by name (:data:`autoseg.training.schedule.OPTIMIZERS`).
        schedule: the learning-rate schedule by name (:data:`autoseg.training.schedule.SCHEDULES`).
        augmentation: the augmentation pipeline by name
            (:data:`autoseg.data.augmentation.AUGMENTATIONS`): "default" or "none".
        device: "cuda" or "cpu".
        precision: "auto" (fp16 autocast on CUDA, bf16 on CPUs with native bf16, else fp32),
            "fp32", "bf16", "fp16".
        accumulate: gradient accumulation steps per optimiser step.
        workers: augmentation worker processes (0: in the training process); the flag is
            ``--augment-workers`` (``--workers`` is its deprecated alias).
        seed: seed of every random draw (numpy seeds must be non-negative).
        checkpoint_every: epochs between ``checkpoint_latest.pt`` writes.
        val_probabilities: keep softmax probabilities of the final validation (for ensembling).
        batch_size: overrides the plan's batch size (None: the plan's).
        ddp_batches: with several processes (torchrun), "own": each draws its own batches
            (seeded by its rank), augmenting only what it trains on; "global": each draws the
            global batch one process would and keeps its slice, so the run learns what one
            process of that batch learns (reproducible whatever the number of processes), at the
            price of every process augmenting the whole global batch.
        time_limit: train for at most this long (``--time``, e.g. "2h", "1h30m"; per fold): the
            epochs are decided after the first (:mod:`autoseg.training.time_budget`).
        budget: that decision, once made (not an option: a record, kept so that ``--continue``
            finishes the decided epochs).
    """

    configuration: str
    fold: int | Literal["all"]
    epochs: int = option(1000, "epochs", minimum=1)
    iters_per_epoch: int = option(250, "optimiser steps per epoch", metavar="N", minimum=1)
    val_iters: int = option(
        50, "validation batches per epoch for the pseudo-Dice, 0 for none", metavar="N", minimum=0
    )
    lr: float = option(1e-2, "initial learning rate", minimum=0, above_minimum=True)
    momentum: float = 0.99
    weight_decay: float = 3e-5
    grad_clip: float = 12.0
    weight_ema: float = option(
        0.0,
        "decay of a moving average of the weights that is validated and saved for prediction "
        "instead of the last step's (e.g. 0.99 averages ~100 steps); 0: off",
        metavar="DECAY",
        minimum=0,
        maximum=0.9999,
    )
    loss: str = option(
        "dice_ce", "loss: dice_ce (nnU-Net's), dice_focal (strong class imbalance), or a registered one"
    )
    optimizer: str = option("sgd", "optimiser: sgd (nnU-Net's, Nesterov momentum), or a registered one")
    schedule: str = option(
        "poly",
        "learning-rate schedule: poly (nnU-Net's, per epoch), poly_step (per iteration), or a registered one",
    )
    augmentation: str = option(
        "default", "augmentation: default (nnU-Net's), none, or a registered one", metavar="NAME"
    )
    device: Device = option("cpu", "where the network trains", run_time_default="cuda when available")
    precision: Precision = option(
        "auto", "auto: fp16 autocast on CUDA, bf16 on CPUs with native bf16, else fp32"
    )
    accumulate: int = option(1, "gradient accumulation steps", metavar="N", minimum=1)
    workers: int = option(
        2,
        "augmentation worker processes, 0 to augment in the training process",
        flags=("--augment-workers",),
        metavar="N",
        minimum=0,
    )
    seed: int = option(12345, "seed of every random draw", minimum=0, maximum=2**32 - 1)
    checkpoint_every: int = option(
        5, "epochs between checkpoint_latest.pt writes", metavar="EPOCHS", minimum=1
    )
    val_probabilities: bool = option(True, "do not keep validation probabilities (needed for ensembles)")
    batch_size: int | None = option(
        None, "override the plan's batch size", metavar="N", minimum=1, run_time_default="the plan's"
    )
    ddp_batches: Literal["own", "global"] = option(
        "own",
        "with several processes: own batches each (cheapest), or slices of one global batch stream "
        "(learns what one process would; each process augments the whole batch)",
    )
    time_limit: str | None = option(
        None,
        "train for at most this long, e.g. 2h, 30m, 90s, 1h30m, final validation included: the "
        "epochs that fit are decided after the first (instead of --epochs; per fold: with "
        "several folds, each fold gets this time)",
        flags=("--time",),
        metavar="DURATION",
        parse=parse_duration,
    )
    budget: BudgetDecision | None = None

    def check_components(self) -> None:
        """Refuse unknown component names before anything runs (the registries say which exist).

        Raises:
            AutosegError: a loss, optimiser, schedule or augmentation name nothing registered.
        """
        from autoseg.data.augmentation import AUGMENTATIONS
        from autoseg.training.losses import LOSSES
        from autoseg.training.schedule import OPTIMIZERS, SCHEDULES

        for registry, name in (
            (LOSSES, self.loss),
            (OPTIMIZERS, self.optimizer),
            (SCHEDULES, self.schedule),
            (AUGMENTATIONS, self.augmentation),
        ):
            registry.get(name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)

    @property
    def fold_name(self) -> str:
        """``fold_0`` … ``fold_4`` or ``fold_all``."""
        return f"fold_{self.fold}"
