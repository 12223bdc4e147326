"""The one atomic-write mechanism every file autoseg writes goes through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from autoseg._atomic import write_atomic


def test_writes_through_a_temporary_with_the_same_suffix(tmp_path: Path) -> None:
    seen = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("new")

    dest = tmp_path / "sub" / "case.nii.gz"
    assert write_atomic(dest, write) == dest
    assert dest.read_text() == "new"
    assert seen[0].parent == dest.parent
    assert seen[0].name.startswith(".partial-")
    assert seen[0].name.endswith(".nii.gz")
    assert sorted(p.name for p in dest.parent.iterdir()) == ["case.nii.gz"]


def test_a_failing_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    dest = tmp_path / "summary.json"
    dest.write_text("old")

    def write(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(dest, write)
    assert dest.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_sweep_removes_only_dead_local_writers_temporaries(tmp_path: Path) -> None:
    """A ``kill -9`` leaves ``.partial-<pid>-<host>-NAME``; the next run removes it, but never
    the temporary of a live writer, of another machine, or a file that only looks alike."""
    import subprocess
    import sys

    from autoseg._atomic import _host_tag, sweep_partials

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead_pid = int(dead.stdout)
    here = _host_tag()
    names = {
        f".partial-{dead_pid}-{here}-case.nii.gz": False,  # removed
        f".partial-{dead_pid}-{here}-checkpoint_latest.pt": False,  # removed
        f".partial-{os.getpid()}-{here}-case.nii.gz": True,  # a live writer: this process
        f".partial-{dead_pid}-{'0' * 8 if here != '0' * 8 else '1' * 8}-case.nii.gz": True,  # elsewhere
        f".partial-{dead_pid}-case.nii.gz": True,  # no host tag: not ours to judge
        "case.nii.gz": True,
        f"partial-{dead_pid}-{here}-x.nii.gz": True,
    }
    for name in names:
        (tmp_path / name).write_text("x")
    assert sweep_partials(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, kept in names.items() if kept)
    assert sweep_partials(tmp_path / "missing") == 0


def test_a_killed_writer_leaves_a_temporary_that_the_next_run_sweeps(tmp_path: Path) -> None:
    """A real ``kill -9`` in the middle of :func:`write_atomic`."""
    import signal
    import subprocess
    import sys

    from autoseg._atomic import sweep_partials

    code = (
        "import sys, time; from pathlib import Path; from autoseg._atomic import write_atomic\n"
        "def slow(tmp):\n    tmp.write_text('half'); print('writing', flush=True); time.sleep(60)\n"
        f"write_atomic(Path({str(tmp_path / 'out.json')!r}), slow)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "writing\n"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1
    assert left[0].startswith(f".partial-{proc.pid}-")
    assert sweep_partials(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []
