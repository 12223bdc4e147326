"""Checkpoints: written to a temporary file then renamed; read with ``weights_only=True``.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so loading it never runs
code from the file (untrusted checkpoints are safe to open).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from autoseg._atomic import write_atomic
from autoseg.errors import CheckpointError


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a killed process leaves the previous checkpoint intact.

    torch writes through a Python file object here, not a path: a full disk is then the
    ``OSError`` it is (one line from :func:`write_atomic`), not torch's "unexpected pos".
    """

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save(state, f)

    write_atomic(path, write)


def load_checkpoint(path: Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint safely.

    Raises:
        CheckpointError: the file is missing or cannot be read as a weights-only checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: checkpoint not found; train this fold first"
        raise CheckpointError(msg)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        msg = f"{path}: cannot be read as a checkpoint ({type(e).__name__}: {e}); delete it and retrain"
        raise CheckpointError(msg) from e
