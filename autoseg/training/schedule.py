"""Learning-rate schedule."""

from __future__ import annotations


def poly_lr(initial: float, epoch: int, total_epochs: int, *, exponent: float = 0.9) -> float:
    """Polynomial decay, stepped per epoch: ``initial * (1 - epoch / total) ** exponent``.

    Examples:
        >>> poly_lr(0.01, 0, 10), round(poly_lr(0.01, 5, 10), 6), poly_lr(0.01, 10, 10)
        (0.01, 0.005359, 0.0)
    """
    return initial * max(0.0, 1.0 - epoch / total_epochs) ** exponent
