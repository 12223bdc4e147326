"""The tiny training budget of the tests that run ``autoseg train`` end to end.

These tests check that every stage runs and hands the next one what it needs (training,
checkpoints, fold validation, find-best, prediction, export), not that a network learns: one
epoch of two iterations on the CPU, in the main process, is enough, and keeps them fast.
Accuracy is measured in ``benchmarks/``.

Import it as ``from tests.budget import tiny``: pytest runs with ``--import-mode=importlib``
(setup.cfg), which does not put ``tests/`` on ``sys.path``, and imports this folder as the
package ``tests``.
"""

from __future__ import annotations


def tiny(
    *,
    epochs: int = 1,
    iters: int = 2,
    val_iters: int = 1,
    batch_size: int | None = 2,
    device: str = "cpu",
    augment_workers: int | None = 0,
) -> list[str]:
    """The ``train`` flags of a tiny budget: ``--epochs``, ``--iters-per-epoch``, ``--val-iters``,
    ``--batch-size``, ``--device`` and ``--augment-workers``.

    ``batch_size`` or ``augment_workers`` None leaves that flag out (the plan's batch size, the
    default number of augmentation workers).

    >>> " ".join(tiny(iters=1, val_iters=0))
    '--epochs 1 --iters-per-epoch 1 --val-iters 0 --batch-size 2 --device cpu --augment-workers 0'
    >>> " ".join(tiny(batch_size=None, augment_workers=None))
    '--epochs 1 --iters-per-epoch 2 --val-iters 1 --device cpu'
    """
    flags = ["--epochs", str(epochs), "--iters-per-epoch", str(iters), "--val-iters", str(val_iters)]
    if batch_size is not None:
        flags += ["--batch-size", str(batch_size)]
    flags += ["--device", device]
    if augment_workers is not None:
        flags += ["--augment-workers", str(augment_workers)]
    return flags
