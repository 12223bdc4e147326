"""autoseg._memory: freed large blocks are reused, not paged in again."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest

from autoseg import _memory

#: In a fresh interpreter: page faults of filling a 256 MiB array, freeing it, and filling a
#: second one (with or without keep_freed_memory first).
_FAULTS = """
import resource, sys
import numpy as np
from autoseg._memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
def faults_of_one_array():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.ones(2**26, dtype=np.float32)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
first, second = faults_of_one_array(), faults_of_one_array()
print(applied, first, second)
"""

linux_glibc = pytest.mark.skipif(
    not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
    reason="the settings are glibc's; elsewhere keep_freed_memory does nothing",
)


def _faults(mode: str) -> tuple[str, int, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
    applied, first, second = out.stdout.split()
    return applied, int(first), int(second)


@linux_glibc
def test_a_freed_large_array_is_reused_instead_of_paged_in_again() -> None:
    applied, first, second = _faults("keep")
    assert applied == "True"
    assert first > 100  # the first array is paged in (in 4 KiB or, madvised by numpy, 2 MiB pages)
    assert second < first // 10  # the second reuses the first one's memory
    _, plain_first, plain_second = _faults("plain")
    assert plain_second > plain_first // 2  # without the settings, every array is paged in again


def test_does_nothing_off_linux(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert _memory.keep_freed_memory() is False


def test_predict_command_keeps_freed_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from autoseg.cli import main
    from autoseg.cli import predict as cli_predict

    calls: list[bool] = []

    def spy() -> bool:
        calls.append(True)
        return True

    monkeypatch.setattr(cli_predict, "keep_freed_memory", spy)
    missing = tmp_path / "no_such_folder"
    code = main(["predict", "-i", str(missing), "-o", str(tmp_path / "out"), "--work-dir", str(tmp_path)])
    assert code == 2  # a one-line error: the input folder does not exist
    assert calls == [True]
