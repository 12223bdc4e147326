"""Atomic file writes: a reader (or a killed run) sees the old file or the new one, never half."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Have ``write`` fill a temporary file beside ``path``, then rename it onto ``path``.

    The temporary is ``.partial-<pid>-<name>`` (same folder, so the rename is atomic; same
    suffix, so writers that go by the extension, such as SimpleITK or matplotlib, choose the right
    format). Parent folders are created. If ``write`` raises, the temporary is removed and
    ``path`` is left as it was.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON through :func:`write_atomic`: never a half-written file."""
    text = json.dumps(obj, indent=2) + "\n"
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
