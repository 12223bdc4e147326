"""Atomic file writes: a reader (or a killed run) sees the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoseg._fs import ENVIRONMENT_ERRNOS, PATH_ERRNOS, fs_error


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Have ``write`` fill a temporary file beside ``path``, then rename it onto ``path``.

    The temporary is ``.partial-<pid>-<name>`` (same folder, so the rename is atomic; same
    suffix, so writers that go by the extension, such as SimpleITK or matplotlib, choose the right
    format). Parent folders are created. If ``write`` raises, the temporary is removed and
    ``path`` is left as it was.

    Returns:
        ``path``.

    Raises:
        FileSystemError: the file cannot be written for a reason the user can fix (permission
            denied, read-only or full disk, a file where a folder belongs, a folder at ``path``);
            the message names ``path``. Other errors propagate.
    """
    path = Path(path)
    tmp = path.with_name(f".partial-{os.getpid()}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.open("wb").close()  # a writer that is not Python's (SimpleITK) would not say why it failed
        write(tmp)
        tmp.replace(path)
    except OSError as e:
        if e.errno in ENVIRONMENT_ERRNOS or e.errno in PATH_ERRNOS:
            raise fs_error(e, path, doing="write", fix=_WRITE_FIX.get(e.errno or 0)) from e
        raise
    finally:
        _remove_quietly(tmp)
    return path


#: Fixes for the errors of :func:`write_atomic` whose generic fix would not say enough.
_WRITE_FIX = {
    errno.EISDIR: "remove or rename the folder, or choose another output location",
    errno.EEXIST: "remove or rename the file in the way, or choose another output location",
    errno.ENOTDIR: "remove or rename the file in the way, or choose another output location",
    errno.EACCES: "make the folder writable or choose another output location",
    errno.EPERM: "make the folder writable or choose another output location",
}


def _remove_quietly(tmp: Path) -> None:
    """Remove a leftover temporary; an error here (say, a read-only disk) must not hide the
    error that brought us here."""
    if os.path.lexists(tmp):
        with contextlib.suppress(OSError):
            tmp.unlink()


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON through :func:`write_atomic`: never a half-written file."""
    text = json.dumps(obj, indent=2) + "\n"
    return write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
