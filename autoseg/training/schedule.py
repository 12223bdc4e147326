"""Optimisers and learning-rate schedules, by name (:data:`OPTIMIZERS`, :data:`SCHEDULES`).

The training settings name one of each (``--optimizer``, ``--schedule``); the built-in ones are
nnU-Net's: SGD with Nesterov momentum 0.99 and weight decay 3e-5, and the polynomial decay
``lr * (1 - epoch / epochs) ** 0.9`` stepped per epoch. Register others as
:mod:`autoseg._registry` explains.

An optimiser factory is ``(parameters, settings) -> torch.optim.Optimizer`` (``settings`` a
:class:`~autoseg.training.config.TrainConfig`: its ``lr``, ``momentum``, ``weight_decay``); a
schedule is ``(initial_lr, epoch, total_epochs) -> lr`` for that epoch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

from autoseg._registry import Registry

if TYPE_CHECKING:
    from autoseg.training.config import TrainConfig

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter], "TrainConfig"], torch.optim.Optimizer]
Schedule = Callable[[float, int, int], float]

#: Optimisers by name.
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer", flag="--optimizer")
#: Learning-rate schedules by name.
SCHEDULES: Registry[Schedule] = Registry("schedule", flag="--schedule")


@OPTIMIZERS.register("sgd")
def sgd(parameters: Iterable[torch.nn.Parameter], settings: TrainConfig) -> torch.optim.Optimizer:
    """nnU-Net's optimiser: SGD with Nesterov momentum (0.99) and weight decay (3e-5)."""
    return torch.optim.SGD(
        parameters,
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=True,
        weight_decay=settings.weight_decay,
    )


@SCHEDULES.register("poly")
def poly_lr(initial: float, epoch: int, total_epochs: int, *, exponent: float = 0.9) -> float:
    """Polynomial decay, stepped per epoch: ``initial * (1 - epoch / total) ** exponent``.

    Examples:
        >>> poly_lr(0.01, 0, 10), round(poly_lr(0.01, 5, 10), 6), poly_lr(0.01, 10, 10)
        (0.01, 0.005359, 0.0)
    """
    return initial * max(0.0, 1.0 - epoch / total_epochs) ** exponent
