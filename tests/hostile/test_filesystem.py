"""Hostile filesystems (issue 12, class 2): unreadable inputs, read-only or misplaced outputs.

Each case asserts exit code 2, one message line naming the path and the cause (permission
denied, read-only file system, a file where a folder belongs, ...) with a fix, no traceback, and
nothing written: the test folder's tree (inputs, work folder, outputs) is the same before and
after, and an unreadable ``.nii.gz`` is no longer called a corrupt gzip stream.

Unreadable and unwritable paths come from the ``deny`` and ``lock`` fixtures of this folder's
conftest.py (simulated as root).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from autoseg._atomic import write_atomic
from autoseg.cli import main
from autoseg.errors import FileSystemError
from autoseg.io.samples import DATA_DIR, copy_sample_subset, sample_dataset_dir

SAMPLE = sample_dataset_dir()
SCAN = sorted((SAMPLE / "imagesTs").glob("*.nii.gz"))[0]


# --- helpers -------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root``: files with size and mtime, folders as None."""
    out: dict[str, tuple[int, int] | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            out[str(p.relative_to(root))] = None if p.is_dir() else (p.stat().st_size, p.stat().st_mtime_ns)
    return out


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _refused(
    argv: list[str], capsys: pytest.CaptureFixture[str], watch: Path, *needles: str, forbid: str = "\0"
) -> str:
    """Run ``argv``: exit 2, a line holding every needle, no traceback, ``watch`` unchanged."""
    before = _tree(watch)
    code, err = _run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert forbid not in err
    lines = [line for line in err.splitlines() if all(n in line for n in needles)]
    assert lines, f"no line with {needles} in:\n{err}"
    assert _tree(watch) == before
    return lines[0]


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three real hippocampus cases (MSD layout)."""
    return copy_sample_subset(tmp_path / "Hippo", 3)


def _nnunet_dicom(root: Path) -> Path:
    """One case whose channel is a DICOM series folder ``imagesTr/mr_0000/`` (no label needed
    to be listed)."""
    shutil.copytree(DATA_DIR / "fixtures" / "dicom_mr" / "13_HCropVolume", root / "imagesTr" / "mr_0000")
    (root / "labelsTr").mkdir()
    meta = {"channel_names": {"0": "MR"}, "labels": {"background": 0, "a": 1}, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    return root


def _first(ds: Path, sub: str) -> Path:
    return sorted((ds / sub).iterdir())[0]


# --- unreadable dataset inputs -------------------------------------------------------------

UNREADABLE_DATASET = [
    pytest.param(lambda ds: _first(ds, "imagesTr"), ("cannot be read", "permission denied"), id="image-file"),
    pytest.param(lambda ds: _first(ds, "labelsTr"), ("cannot be read", "permission denied"), id="label-file"),
    pytest.param(lambda ds: ds / "dataset.json", ("cannot be read", "permission denied"), id="dataset-json"),
]


@pytest.mark.parametrize(("victim", "needles"), UNREADABLE_DATASET)
@pytest.mark.parametrize("command", ["verify", "plan"])
def test_unreadable_dataset_file(
    tmp_path: Path,
    dataset: Path,
    deny: Callable[[Path], None],
    capsys: pytest.CaptureFixture[str],
    command: str,
    victim: Callable[[Path], Path],
    needles: tuple[str, ...],
) -> None:
    path = victim(dataset)
    deny(path)
    argv = [command, str(dataset), "--preprocess-workers", "1", "--work-dir", str(tmp_path / "work")]
    line = _refused(argv, capsys, tmp_path, str(path), *needles, "check its permissions", forbid="corrupt")
    assert line.count(str(path)) == 1


@pytest.mark.parametrize("sub", ["imagesTr", "labelsTr"])
def test_unreadable_nnunet_folder(
    tmp_path: Path, deny: Callable[[Path], None], capsys: pytest.CaptureFixture[str], sub: str
) -> None:
    ds = _nnunet_dicom(tmp_path / "Dataset001_Mr")
    deny(ds / sub)
    _refused(
        ["verify", str(ds)], capsys, tmp_path, str(ds / sub), "cannot list this folder", "permission denied"
    )


def test_unreadable_dicom_series_folder_in_a_dataset(
    tmp_path: Path, deny: Callable[[Path], None], capsys: pytest.CaptureFixture[str]
) -> None:
    """An unreadable sub-folder of imagesTr/ may be a DICOM series: it is named, not skipped."""
    ds = _nnunet_dicom(tmp_path / "Dataset001_Mr")
    series = ds / "imagesTr" / "mr_0000"
    deny(series)
    _refused(["verify", str(ds)], capsys, tmp_path, str(series), "cannot list this folder", "DICOM")


# --- unreadable evaluate / predict inputs --------------------------------------------------


@pytest.fixture
def scored(tmp_path: Path) -> tuple[Path, Path]:
    """A prediction folder and a reference folder of two real label maps (the same files)."""
    pred, ref = tmp_path / "pred", tmp_path / "ref"
    for folder in (pred, ref):
        folder.mkdir()
        for p in sorted((SAMPLE / "labelsTr").glob("*.nii.gz"))[:2]:
            shutil.copyfile(p, folder / p.name)
    return pred, ref


def _evaluate(pred: Path, ref: Path, out: Path, *extra: str) -> list[str]:
    return [
        "evaluate",
        "--pred",
        str(pred),
        "--ref",
        str(ref),
        "-o",
        str(out),
        "--preprocess-workers",
        "1",
        *extra,
    ]


def test_unreadable_prediction_file(
    tmp_path: Path,
    scored: tuple[Path, Path],
    deny: Callable[[Path], None],
    capsys: pytest.CaptureFixture[str],
) -> None:
    pred, ref = scored
    victim = _first(pred, ".")
    deny(victim)
    _refused(_evaluate(pred, ref, tmp_path / "m.json"), capsys, tmp_path, str(victim), "permission denied")


@pytest.mark.parametrize("which", ["pred", "ref"])
def test_unreadable_evaluate_folder(
    tmp_path: Path,
    scored: tuple[Path, Path],
    deny: Callable[[Path], None],
    capsys: pytest.CaptureFixture[str],
    which: str,
) -> None:
    pred, ref = scored
    victim = pred if which == "pred" else ref
    deny(victim)
    _refused(
        _evaluate(pred, ref, tmp_path / "m.json"),
        capsys,
        tmp_path,
        str(victim),
        "cannot list this folder",
        "permission denied",
    )


def _predict(work: Path, src: Path, out: Path, *extra: str) -> list[str]:
    return [
        "predict", "-i", str(src), "-o", str(out), "--work-dir", str(work), "-d", "hippo",
        "-c", "2d", "--device", "cpu", "--no-tta", *extra,
    ]  # fmt: skip


def test_unreadable_predict_input_folder(
    tmp_path: Path, trained_work: Path, deny: Callable[[Path], None], capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copyfile(SCAN, src / "a.nii.gz")
    deny(src)
    line = _refused(
        _predict(trained_work, src, tmp_path / "out"), capsys, tmp_path, str(src), "cannot list this folder"
    )
    assert "permission denied" in line


def test_unreadable_predict_input_file(
    tmp_path: Path, trained_work: Path, deny: Callable[[Path], None], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every input fails: exit 2, the file named, and no (empty) output folder left behind."""
    src = tmp_path / "a.nii.gz"
    shutil.copyfile(SCAN, src)
    deny(src)
    _refused(
        _predict(trained_work, src, tmp_path / "out"),
        capsys,
        tmp_path,
        str(src),
        "cannot be read (permission denied)",
        forbid="corrupt",
    )
    assert not (tmp_path / "out").exists()


# --- work folders that cannot be written ---------------------------------------------------


def _work_variants(tmp_path: Path, lock: Callable[..., None]) -> dict[str, tuple[Path, tuple[str, ...]]]:
    """Work folders that cannot take ``<work>/Hippo/``, with what the message says."""
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    ro, denied = tmp_path / "ro_work", tmp_path / "denied_work"
    ro.mkdir()
    denied.mkdir()
    lock(ro, read_only=True)
    lock(denied, read_only=False)
    (tmp_path / "dataset_is_file").mkdir()
    (tmp_path / "dataset_is_file" / "Hippo").write_text("in the way")
    return {
        "read-only": (ro, ("read-only file system",)),
        "no-permission": (denied, ("permission denied",)),
        "through-a-file": (blocker / "work", ("a_file is a file, not a folder",)),
        "is-a-file": (blocker, ("a_file is a file, not a folder",)),
        "dataset-folder-is-a-file": (tmp_path / "dataset_is_file", ("Hippo: is a file, not a folder",)),
    }


WORK_VARIANTS = ["read-only", "no-permission", "through-a-file", "is-a-file", "dataset-folder-is-a-file"]


@pytest.mark.parametrize("variant", WORK_VARIANTS)
def test_plan_into_a_work_folder_that_cannot_be_written(
    tmp_path: Path,
    dataset: Path,
    lock: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    variant: str,
) -> None:
    work, needles = _work_variants(tmp_path, lock)[variant]
    argv = ["plan", str(dataset), "--work-dir", str(work), "--preprocess-workers", "1"]
    line = _refused(argv, capsys, tmp_path, str(work), *needles, "--work-dir")
    assert "Hippo" in line


@pytest.fixture
def planned(tmp_path: Path, dataset: Path) -> Path:
    """A work folder where ``Hippo`` is planned (nothing preprocessed or trained)."""
    work = tmp_path / "work"
    assert main(["plan", str(dataset), "--work-dir", str(work), "--preprocess-workers", "1", "-q"]) == 0
    return work


@pytest.mark.parametrize("read_only", [True, False], ids=["read-only", "no-permission"])
@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["preprocess", "Hippo", "--preprocess-workers", "1"], id="preprocess"),
        pytest.param(
            ["train", "Hippo", "2d", "all", "--device", "cpu", "--epochs", "1", "--preprocess-workers", "1"],
            id="train",
        ),
        pytest.param(["find-best", "Hippo", "--preprocess-workers", "1"], id="find-best"),
        pytest.param(["export", "Hippo", "2d"], id="export"),
    ],
)
def test_later_commands_refuse_an_unwritable_work_folder(
    tmp_path: Path,
    planned: Path,
    lock: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    read_only: bool,
) -> None:
    """A planned dataset whose folder became read-only: refused before any work, nothing written."""
    lock(planned / "Hippo", read_only=read_only)
    why = "read-only file system" if read_only else "permission denied"
    _refused([*command, "--work-dir", str(planned)], capsys, tmp_path, str(planned / "Hippo"), why)


def test_export_output_through_a_file(
    tmp_path: Path, planned: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "a_file").write_text("x")
    out = tmp_path / "a_file" / "onnx"
    argv = ["export", "Hippo", "2d", "--work-dir", str(planned), "--output", str(out)]
    _refused(argv, capsys, tmp_path, str(out), "a_file is a file, not a folder", "--output")


# --- predict and evaluate outputs ----------------------------------------------------------


def _predict_out_variants(
    tmp_path: Path, lock: Callable[..., None]
) -> dict[str, tuple[Path, tuple[str, ...]]]:
    (tmp_path / "a_file").write_text("x")
    (tmp_path / "ro").mkdir()
    lock(tmp_path / "ro", read_only=True)
    return {
        "existing-file": (tmp_path / "a_file", ("is a file, not a folder",)),
        "through-a-file": (tmp_path / "a_file" / "out", ("a_file is a file, not a folder",)),
        "read-only": (tmp_path / "ro", ("read-only file system",)),
        "inside-read-only": (tmp_path / "ro" / "out", ("read-only file system",)),
    }


@pytest.mark.parametrize("variant", ["existing-file", "through-a-file", "read-only", "inside-read-only"])
def test_predict_output_that_cannot_be_written(
    tmp_path: Path,
    trained_work: Path,
    lock: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    variant: str,
) -> None:
    out, needles = _predict_out_variants(tmp_path, lock)[variant]
    src = tmp_path / "a.nii.gz"
    shutil.copyfile(SCAN, src)
    _refused(_predict(trained_work, src, out), capsys, tmp_path, str(out), *needles, "-o")


def test_evaluate_output_that_is_a_folder_leaves_no_csv(
    tmp_path: Path, scored: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """``-o`` naming a folder once wrote the CSV beside it, then failed on the JSON."""
    pred, ref = scored
    out = tmp_path / "results"
    out.mkdir()
    _refused(_evaluate(pred, ref, out), capsys, tmp_path, str(out), "is a folder", "summary.json")
    assert not (tmp_path / "results.csv").exists()


def _through_a_file(t: Path, lock: Callable[..., None]) -> Path:
    (t / "a_file").write_text("x")
    return t / "a_file" / "m.json"


def _in_read_only(t: Path, lock: Callable[..., None]) -> Path:
    (t / "ro").mkdir()
    lock(t / "ro", read_only=True)
    return t / "ro" / "m.json"


def _csv_place_is_a_folder(t: Path, lock: Callable[..., None]) -> Path:
    (t / "m.csv").mkdir()
    return t / "m.json"


def _plot_place_is_a_folder(t: Path, lock: Callable[..., None]) -> Path:
    (t / "m_boxplot.png").mkdir()
    return t / "m.json"


@pytest.mark.parametrize(
    ("make", "needles", "extra"),
    [
        pytest.param(_through_a_file, ("a_file is a file, not a folder", "-o"), (), id="through-a-file"),
        pytest.param(_in_read_only, ("ro: cannot write", "read-only file system"), (), id="read-only-folder"),
        pytest.param(_csv_place_is_a_folder, ("m.csv: is a folder",), (), id="csv-place-is-a-folder"),
        pytest.param(_plot_place_is_a_folder, ("m_boxplot.png: is a folder",), ("--plot",), id="plot-place"),
    ],
)
def test_evaluate_output_that_cannot_be_written(
    tmp_path: Path,
    scored: tuple[Path, Path],
    lock: Callable[..., None],
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path, Callable[..., None]], Path],
    needles: tuple[str, ...],
    extra: tuple[str, ...],
) -> None:
    pred, ref = scored
    out = make(tmp_path, lock)
    _refused(_evaluate(pred, ref, out, *extra), capsys, tmp_path, *needles)


def test_evaluate_overlays_place_is_a_file(
    tmp_path: Path, scored: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Checked before scoring: the summary is not written when the overlays cannot be."""
    pred, ref = scored
    (tmp_path / "m_overlays").write_text("in the way")
    argv = _evaluate(pred, ref, tmp_path / "m.json", "--images", str(SAMPLE / "imagesTr"))
    _refused(argv, capsys, tmp_path, "m_overlays: is a file, not a folder")


# --- the layers below the checks -----------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "why"),
    [
        (errno.ENOSPC, "no space left on the device"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_write_atomic_names_the_file_and_leaves_no_temporary(tmp_path: Path, err: int, why: str) -> None:
    """A write that fails after the checks (the disk filled up meanwhile) is one line naming
    the file, the old file is kept, and no temporary is left."""
    dest = tmp_path / "summary.json"
    dest.write_text("old")

    def write(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError(err, os.strerror(err), str(tmp))

    with pytest.raises(FileSystemError, match=why) as info:
        write_atomic(dest, write)
    assert str(info.value).startswith(f"{dest}: cannot write")
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
    assert dest.read_text() == "old"


def test_write_atomic_onto_a_folder(tmp_path: Path) -> None:
    (tmp_path / "out.json").mkdir()
    with pytest.raises(FileSystemError, match="is a folder, not a file"):
        write_atomic(tmp_path / "out.json", lambda tmp: tmp.write_text("{}"))
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_an_environment_oserror_escaping_a_command_is_one_line(
    tmp_path: Path, dataset: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's last layer: a ``PermissionError`` from anywhere (here: reading a case file's
    header) is printed as one line naming the file; an ``OSError`` that is not about the
    machine is a bug and keeps its traceback."""
    import autoseg.pipeline

    victim = str(dataset / "imagesTr" / "x.nii.gz")

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise PermissionError(errno.EACCES, "Permission denied", victim)

    monkeypatch.setattr(autoseg.pipeline, "verify", boom)
    line = _refused(["verify", str(dataset)], capsys, tmp_path, victim, "permission denied")
    assert "check its permissions" in line

    def bug(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(autoseg.pipeline, "verify", bug)
    with pytest.raises(OSError, match="Bad file descriptor"):
        main(["verify", str(dataset)])


def _no_free_space(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every filesystem reports no space left for this user (what a full disk looks like)."""
    real = os.statvfs

    def full(path: Any) -> Any:
        st = real(path)
        return os.statvfs_result((st.f_bsize, st.f_frsize, st.f_blocks, 0, 0, *tuple(st)[5:]))

    monkeypatch.setattr(os, "statvfs", full)


@pytest.mark.parametrize("disk_full", [True, False])
def test_write_atomic_names_a_full_disk_behind_a_foreign_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk_full: bool
) -> None:
    """A writer that is not Python's reports a full disk in its own words (torch given a path:
    "unexpected pos 704 vs 598"). On a disk with no space left that is the one-line full-disk
    error naming the file; on a disk with space, the writer's own error is a bug and propagates."""
    dest = tmp_path / "checkpoint_latest.pt"
    dest.write_bytes(b"old")

    def write(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    if disk_full:
        _no_free_space(monkeypatch)
    expected = (
        (FileSystemError, "no space left on the device") if disk_full else (RuntimeError, "unexpected pos")
    )
    with pytest.raises(expected[0], match=expected[1]) as info:
        write_atomic(dest, write)
    if disk_full:
        assert (
            str(info.value)
            == f"{dest}: cannot write (no space left on the device); free some space or choose another disk"
        )
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]
    assert dest.read_bytes() == b"old"


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_checkpoint_on_a_full_disk_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real torch writer on a full disk (``/dev/full`` answers every write with ENOSPC): the
    checkpoint's error names it, the previous checkpoint is kept, no temporary is left (CI once
    saw torch's "unexpected pos 29409216 vs 29409104" here instead)."""
    import builtins

    import torch

    from autoseg.training import checkpoint

    dest = tmp_path / "checkpoint_latest.pt"
    checkpoint.save_checkpoint(dest, {"w": torch.arange(5.0)})
    real_open = builtins.open
    monkeypatch.setattr(checkpoint, "open", lambda p, mode: real_open("/dev/full", mode), raising=False)
    with pytest.raises(FileSystemError, match=r"cannot write \(no space left on the device\)") as info:
        checkpoint.save_checkpoint(dest, {"w": torch.zeros(100_000)})
    assert str(info.value).startswith(f"{dest}: ")
    assert [p.name for p in tmp_path.iterdir()] == [dest.name]
    assert torch.equal(checkpoint.load_checkpoint(dest)["w"], torch.arange(5.0))
