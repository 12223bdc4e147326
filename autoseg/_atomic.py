"""Atomic file writes: a reader (or a killed run) sees the old file or the new one, never half."""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

from autoseg._fs import ENVIRONMENT_ERRNOS, PATH_ERRNOS, fs_error

log = logging.getLogger(__name__)


def write_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Have ``write`` fill a temporary file beside ``path``, then rename it onto ``path``.

    The temporary is ``.partial-<pid>-<host>-<name>`` (same folder, so the rename is atomic; same
    suffix, so writers that go by the extension, such as SimpleITK or matplotlib, choose the right
    format; ``<host>`` a short hash of the machine's name, so that :func:`sweep_partials` never
    takes another machine's file on a shared disk). Parent folders are created. If ``write``
    raises, the temporary is removed and ``path`` is left as it was; a process killed with
    ``kill -9`` leaves its temporary, which the next run in that folder sweeps.

    A writer that is not Python's (torch's own zip writer given a path, SimpleITK) reports a
    full disk as an error of its own ("unexpected pos 704 vs 598"); when its error leaves the
    disk under ``path`` without free space, it is reported as the full disk it is.

    Returns:
        ``path``.

    Raises:
        FileSystemError: the file cannot be written for a reason the user can fix (permission
            denied, read-only or full disk, a file where a folder belongs, a folder at ``path``);
            the message names ``path``. Other errors propagate.
    """
    path = Path(path)
    tmp = path.with_name(f".partial-{os.getpid()}-{_host_tag()}-{path.name}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.open("wb").close()  # a writer that is not Python's (SimpleITK) would not say why it failed
        write(tmp)
        tmp.replace(path)
    except OSError as e:
        if e.errno in ENVIRONMENT_ERRNOS or e.errno in PATH_ERRNOS:
            raise fs_error(e, path, doing="write", fix=_WRITE_FIX.get(e.errno or 0)) from e
        raise
    except Exception as e:
        if _disk_full(tmp.parent):
            full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
            raise fs_error(full, path, doing="write") from e
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


_PARTIAL = re.compile(r"^\.partial-(?P<pid>\d+)-(?P<host>[0-9a-f]{8})-.")


@functools.cache
def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def sweep_partials(folder: str | os.PathLike[str]) -> int:
    """Remove the temporaries of :func:`write_atomic` that a killed process left in ``folder``.

    Only those written on this machine by a process that no longer runs are removed: a
    temporary of a live writer (another job predicting into the same folder) or of another
    machine sharing the disk is left alone. A folder that cannot be listed is left as it is.

    Returns:
        How many were removed.
    """
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    removed = 0
    for entry in entries:
        m = _PARTIAL.match(entry.name)
        if m is None or m["host"] != _host_tag() or _alive(int(m["pid"])):
            continue
        with contextlib.suppress(OSError):
            os.unlink(entry.path)
            removed += 1
    if removed:
        log.info("%s: removed %d temporary file(s) left by a run that was killed", folder, removed)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


#: Below this much free space, a writer's unexplained failure is taken for a full disk: far less
#: than any file autoseg writes, far more than the few blocks a filesystem keeps back.
_FULL_BELOW = 1 << 20


def _disk_full(folder: Path) -> bool:
    """Whether the filesystem holding ``folder`` has (almost) no space left for this user."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # gone, or no statvfs (Windows)
        return False
    return st.f_bavail * st.f_frsize < _FULL_BELOW


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
