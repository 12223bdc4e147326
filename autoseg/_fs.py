"""Filesystem problems a user can fix, as one line naming the path, the cause and the fix.

Reading inputs and writing outputs meet permissions, read-only disks, files where folders belong
(and the reverse), full disks and broken symbolic links. Python raises these as ``OSError``
tracebacks that say little to a user, or worse, as something else (an unreadable ``.nii.gz`` looked
like a corrupt gzip stream). The helpers here name the cause, and check output locations before
any work starts, so that a run which could not write its results fails at once with nothing
half-written.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from autoseg.errors import FileSystemError

#: errno values that describe the user's machine, never a bug in autoseg: the CLI prints an
#: ``OSError`` carrying one of them (and a file name) as one line instead of a traceback.
ENVIRONMENT_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT})

#: errno values that, while writing below a location the user chose, mean the location is wrong
#: (a file where a folder belongs, a folder where a file belongs, a link loop, a name too long).
PATH_ERRNOS = frozenset({errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.ELOOP, errno.ENAMETOOLONG})

_CAUSES = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "it is a folder, not a file",
    errno.EEXIST: "a file is in the way of a folder",
    errno.ELOOP: "symbolic link loop",
    errno.ENAMETOOLONG: "name too long",
    errno.ENOENT: "not found",
}

_FIXES = {
    errno.EACCES: "check its permissions",
    errno.EPERM: "check its permissions",
    errno.EROFS: "choose a location on a writable disk",
    errno.ENOSPC: "free some space or choose another disk",
    errno.EDQUOT: "free some space or choose another disk",
    errno.ELOOP: "point the link at a file or folder",
    errno.ENAMETOOLONG: "choose a shorter path",
}


def cause(e: OSError) -> str:
    """A short lower-case description of an ``OSError`` ("permission denied", ...)."""
    if e.errno in _CAUSES:
        return _CAUSES[e.errno]
    return (e.strerror or str(e)).lower()


def default_fix(e: OSError) -> str:
    """What to do about an ``OSError`` when the caller knows no better."""
    return _FIXES.get(e.errno or 0, "check the path")


def is_environment_error(e: BaseException) -> bool:
    """Whether ``e`` is an ``OSError`` about the user's machine (permissions, read-only or full
    disk) that names its file: never a bug, so it is reported without a traceback."""
    return isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS and e.filename is not None


def shown(path: Path | str) -> str:
    """``path`` for a one-line message: as it is, or quoted with escapes when it holds a control
    character (a newline in a file name would otherwise split the message)."""
    text = str(path)
    return repr(text) if any(ord(ch) < 32 or ord(ch) == 127 for ch in text) else text


def fs_error(e: OSError, path: Path | str, *, doing: str, fix: str | None = None) -> FileSystemError:
    """One line for an ``OSError`` met while ``doing`` something to ``path``.

    Example: ``out/a.nii.gz: cannot write (read-only file system); choose a location on a
    writable disk``.
    """
    msg = f"{path}: cannot {doing} ({cause(e)}); {fix or default_fix(e)}"
    return FileSystemError(msg)


def list_dir(folder: Path, *, fix: str = "check its permissions") -> list[Path]:
    """The entries of ``folder``, sorted; a folder that cannot be listed is a
    :class:`FileSystemError` naming it (not a ``PermissionError`` traceback).

    Raises:
        FileSystemError: the folder cannot be listed (permission denied, not a folder, ...).
    """
    try:
        return sorted(folder.iterdir())
    except OSError as e:
        raise fs_error(e, folder, doing="list this folder", fix=fix) from e


def access_problem(path: Path) -> str | None:
    """Why ``path`` cannot be reached, for a dangling symbolic link, a link loop or a folder on
    the way that may not be entered; None when it can be reached or simply does not exist
    (callers say what is missing in their own words).

    A symbolic link is judged by where it is, not where it points: a link to a file elsewhere is
    fine, one that leads nowhere is named here.
    """
    try:
        os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return (
                f"{path}: symbolic link to {target}, which does not exist; "
                "point the link at the file or put the file in its place"
            )
        return None
    except NotADirectoryError:
        return None  # a file on the way: the path does not exist, callers say so
    except OSError as e:
        if e.errno == errno.ELOOP:
            return f"{path}: symbolic link loop; point the link at a file, or put the file in its place"
        return f"{path}: cannot be accessed ({cause(e)}); {default_fix(e)}"
    return None


def read_problem(path: Path) -> str | None:
    """Why the file ``path`` cannot be opened for reading (see :func:`access_problem`; also
    permission denied on the file itself), or None. A reader that is not Python's (SimpleITK)
    would report it as an unknown format."""
    if (problem := access_problem(path)) is not None:
        return problem
    try:
        with open(path, "rb"):
            pass
    except FileNotFoundError:
        return None
    except OSError as e:
        return f"{path}: cannot be read ({cause(e)}); {default_fix(e)}"
    return None


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (as a link, at least)."""
    existing = path
    while not os.path.lexists(existing) and existing.parent != existing:
        existing = existing.parent
    return existing


def _not_writable(folder: Path) -> str | None:
    """Why files cannot be created in an existing folder, or None."""
    if os.access(folder, os.W_OK | os.X_OK):
        return None
    try:
        read_only = bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only file system" if read_only else "permission denied"


def output_dir_problem(path: Path, *, fix: str) -> str | None:
    """Why the folder ``path`` could not be created or written into, or None; creates nothing.

    Checked before work starts, so that a run whose results cannot be written fails at once
    instead of after hours, and leaves nothing half-written.

    Args:
        path: the folder a command will write into (it may not exist yet).
        fix: what the user should do (e.g. "choose another folder with -o").
    """
    path = Path(path)
    existing = _nearest_existing(path)
    try:
        st = os.stat(existing)
    except OSError as e:  # a dangling link or a loop on the way
        what = "symbolic link loop" if e.errno == errno.ELOOP else cause(e)
        if isinstance(e, FileNotFoundError) and os.path.islink(existing):
            what = "dangling symbolic link"
        return f"{path}: cannot create this folder ({existing}: {what}); {fix}"
    if not stat.S_ISDIR(st.st_mode):
        if existing == path:
            return f"{path}: is a file, not a folder; {fix}"
        return f"{path}: cannot create this folder ({existing} is a file, not a folder); {fix}"
    why = _not_writable(existing)
    if why is not None:
        where = "" if existing == path else f"in {existing} "
        return f"{path}: cannot write {where}({why}); {fix}"
    return None


def output_file_problem(path: Path, *, fix: str) -> str | None:
    """Why the file ``path`` could not be written, or None; creates nothing (see
    :func:`output_dir_problem`)."""
    path = Path(path)
    if path.is_dir():
        return f"{path}: is a folder, not a file; {fix}"
    existing = _nearest_existing(path.parent)
    if existing.is_file():
        return f"{path}: cannot create it ({existing} is a file, not a folder); {fix}"
    return output_dir_problem(path.parent, fix=fix)


def check_output_dir(path: Path, *, fix: str) -> None:
    """Raise :class:`FileSystemError` when :func:`output_dir_problem` finds a problem.

    Raises:
        FileSystemError: the folder cannot be created or written into.
    """
    problem = output_dir_problem(path, fix=fix)
    if problem is not None:
        raise FileSystemError(problem)
