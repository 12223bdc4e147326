"""The one atomic-write mechanism every file autoseg writes goes through."""

from __future__ import annotations

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
