"""Fixtures shared by the hostile-input tests: unreadable paths and unwritable folders.

The tests may run as root, whom ``chmod 000`` and ``chmod 555`` do not stop, and no read-only
disk can be mounted. As root, unreadable paths are therefore simulated: the calls that read them
(``open``, ``io.open``; for a folder also ``os.listdir``/``os.scandir`` of it and ``os.stat`` of
what is inside) raise ``PermissionError`` as the kernel would, and a read-only or forbidden output
folder is simulated through ``os.access`` (and ``os.statvfs``'s read-only flag). As any other
user, the real ``chmod`` is used. The code under test handles a real ``OSError`` either way.
"""

from __future__ import annotations

import builtins
import errno
import io
import logging
import os
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

IS_ROOT = os.geteuid() == 0


def _under(p: Any, victim: str, *, strictly: bool) -> bool:
    if isinstance(p, int):  # a file descriptor
        return False
    try:
        s = os.path.abspath(os.fspath(p))
    except TypeError:
        return False
    inside = s.startswith(victim + os.sep)
    return inside if strictly else inside or s == victim


def _denied(p: Any) -> PermissionError:
    return PermissionError(errno.EACCES, "Permission denied", os.fspath(p))


@pytest.fixture
def deny(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """``deny(path)`` makes a file or folder unreadable: ``chmod 000``, or as root a simulation
    (see the module docstring)."""
    restore: list[tuple[Path, int]] = []

    def make_unreadable(victim: Path) -> None:
        if not IS_ROOT:
            restore.append((victim, victim.stat().st_mode))
            victim.chmod(0)
            return
        name = os.path.abspath(victim)
        real_open = builtins.open

        def fake_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            if _under(file, name, strictly=False):
                raise _denied(file)
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", fake_open)
        monkeypatch.setattr(io, "open", fake_open)
        if not victim.is_dir():
            return
        for fn in ("listdir", "scandir"):
            real = getattr(os, fn)

            def fake_list(path: Any = ".", _real: Any = real) -> Any:
                if _under(path, name, strictly=False):
                    raise _denied(path)
                return _real(path)

            monkeypatch.setattr(os, fn, fake_list)
        for fn in ("stat", "lstat"):
            real = getattr(os, fn)

            def fake_stat(path: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
                if _under(path, name, strictly=True):  # no search permission in the folder
                    raise _denied(path)
                return _real(path, *args, **kwargs)

            monkeypatch.setattr(os, fn, fake_stat)

    yield make_unreadable
    for path, mode in restore:
        path.chmod(mode)


@pytest.fixture
def lock(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """``lock(folder, read_only=...)`` makes files impossible to create in ``folder``: simulated
    through ``os.access`` (and ``os.statvfs``) for every user, since root ignores ``chmod 555``
    and no read-only disk can be mounted here."""

    def make_unwritable(folder: Path, *, read_only: bool) -> None:
        name = os.path.abspath(folder)
        real_access, real_statvfs = os.access, os.statvfs

        def fake_access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
            if mode & os.W_OK and os.path.abspath(path) == name:
                return False
            return real_access(path, mode, *args, **kwargs)

        def fake_statvfs(path: Any) -> Any:
            if os.path.abspath(path) == name:
                return types.SimpleNamespace(f_flag=os.ST_RDONLY if read_only else 0)
            return real_statvfs(path)

        monkeypatch.setattr(os, "access", fake_access)
        monkeypatch.setattr(os, "statvfs", fake_statvfs)

    return make_unwritable


@pytest.fixture
def logged() -> Iterator[list[str]]:
    """Messages of the autoseg loggers (the CLI replaces the root handlers, caplog's included)."""
    seen: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("autoseg").addHandler(handler)
    yield seen
    logging.getLogger("autoseg").removeHandler(handler)
