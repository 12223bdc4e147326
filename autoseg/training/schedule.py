"""Optimisers and learning-rate schedules, by name (:data:`OPTIMIZERS`, :data:`SCHEDULES`).

The training settings name one of each (``--optimizer``, ``--schedule``); the built-in ones are
nnU-Net's: SGD with Nesterov momentum 0.99 and weight decay 3e-5, and the polynomial decay
``lr * (1 - epoch / epochs) ** 0.9`` stepped per epoch. ``poly_step`` is the same curve stepped
every iteration: with 1000 epochs the two are the same run, with the 8-32 epochs of a CPU budget
the per-epoch staircase never goes below ``lr * (1 / epochs) ** 0.9`` (0.0015 at 8 epochs), the
per-step curve ends at ~0 (a candidate for small budgets, issue 16; not the default until the
budget curve says so). Register others as :mod:`autoseg._registry` explains.

An optimiser factory is ``(parameters, settings) -> torch.optim.Optimizer`` (``settings`` a
:class:`~autoseg.training.config.TrainConfig`: its ``lr``, ``momentum``, ``weight_decay``); a
schedule is ``(initial_lr, epoch, total_epochs) -> lr``, asked before every optimiser step with
the fractional epoch ``epoch + iteration / iters_per_epoch`` (a schedule that steps per epoch
floors it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch

from autoseg._registry import Registry

if TYPE_CHECKING:
    from autoseg.training.config import TrainConfig

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter], "TrainConfig"], torch.optim.Optimizer]
Schedule = Callable[[float, float, int], float]

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
def poly_lr(initial: float, epoch: float, total_epochs: int, *, exponent: float = 0.9) -> float:
    """Polynomial decay, stepped per epoch: ``initial * (1 - floor(epoch) / total) ** exponent``.

    Examples:
        >>> poly_lr(0.01, 0, 10), round(poly_lr(0.01, 5, 10), 6), poly_lr(0.01, 10, 10)
        (0.01, 0.005359, 0.0)
        >>> poly_lr(0.01, 5.9, 10) == poly_lr(0.01, 5, 10)
        True
    """
    return _poly(initial, math.floor(epoch), total_epochs, exponent)


@SCHEDULES.register("poly_step")
def poly_step_lr(initial: float, epoch: float, total_epochs: int, *, exponent: float = 0.9) -> float:
    """Polynomial decay, stepped every iteration: ``initial * (1 - epoch / total) ** exponent``.

    Examples:
        >>> round(poly_step_lr(0.01, 5.5, 10), 6), round(poly_step_lr(0.01, 9.99, 10), 6)
        (0.004874, 2e-05)
    """
    return _poly(initial, epoch, total_epochs, exponent)


def _poly(initial: float, epoch: float, total_epochs: int, exponent: float) -> float:
    return initial * max(0.0, 1.0 - epoch / total_epochs) ** exponent
