"""The random states of the training process, captured into a checkpoint and restored from it.

A resumed run must draw what the uninterrupted run would have drawn. The batches do not depend on
these states (the loader seeds each batch from the run's seed and the batch's index, see
:mod:`autoseg.data.loader`), but anything else random in the training process does: torch's CPU
generator, the current CUDA device's generator when training on CUDA, and the global ``numpy``
and ``random`` states a registered loss or optimiser might draw from. All of them are stored as
tensors, numbers and lists, so checkpoints still load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_all(seed: int) -> None:
    """Seed torch (CPU and every GPU), numpy's global and ``random``'s global generators.

    Only torch's draws reach the network's initial weights, but the others must start from a
    known state too: a checkpoint stores them all, and an unseeded generator (numpy and
    ``random`` seed themselves from the OS at import) would make even two uninterrupted runs of
    one seed store different states.
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def capture(device: torch.device) -> dict[str, Any]:
    """Every random state of this process that training may draw from.

    Args:
        device: the training device; its CUDA generator is captured when it is a GPU.

    Returns:
        ``{"torch", "cuda", "numpy", "python"}``; ``"cuda"`` is None off CUDA.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    version, internal, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": {"version": int(version), "state": [int(x) for x in internal], "gauss": py_gauss},
    }


def restore(states: dict[str, Any], device: torch.device) -> None:
    """Put back what :func:`capture` returned.

    A CUDA state is restored only when training on CUDA again (a run moved to the CPU has no GPU
    generator to set; one moved to a GPU keeps the generator seeded at start-up).
    """
    torch.set_rng_state(states["torch"].cpu())
    if states.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(states["cuda"].cpu(), device)
    n = states.get("numpy")
    if n is not None:
        keys = n["keys"].cpu().numpy().astype(np.uint32)
        np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = states.get("python")
    if p is not None:
        random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
