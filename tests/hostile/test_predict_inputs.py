"""Predict never drops an input or keeps a bad output without a word (issue 12, class 6).

- Inputs that would give one case the same channel (two file formats, a plain name and its
  ``_0000`` twin, a file and a DICOM series folder) refuse the whole input, every clash listed,
  before anything is written: predicting one of them would silently drop the other.
- An existing output that is empty, cut short, not a compressed stream at all, or unreadable is
  not "done": it is predicted again (with a warning), while a whole one is skipped.
- A run in which every input fails leaves no output folder behind.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.io.samples import DATA_DIR, sample_dataset_dir

SAMPLE = sample_dataset_dir()
SCANS = sorted((SAMPLE / "imagesTs").glob("*.nii.gz"))[:3]
DICOM = DATA_DIR / "fixtures" / "dicom_mr" / "13_HCropVolume"


def _predict(work: Path, src: Path, out: Path, *extra: str) -> list[str]:
    return [
        "predict", "-i", str(src), "-o", str(out), "--work-dir", str(work), "-d", "hippo",
        "-c", "2d", "--device", "cpu", "--no-tta", *extra,
    ]  # fmt: skip


def _as(scan: Path, dest: Path) -> Path:
    """``scan`` stored under ``dest`` (its ending decides the format)."""
    if dest.name.endswith(".nii.gz"):
        shutil.copyfile(scan, dest)
    else:  # pixels and geometry only: NIfTI's own header fields make ITK warn in MHA/NRRD
        img = sitk.ReadImage(str(scan))
        plain = sitk.GetImageFromArray(sitk.GetArrayFromImage(img))
        plain.CopyInformation(img)
        sitk.WriteImage(plain, str(dest))
    return dest


# --- ambiguous inputs -----------------------------------------------------------------------

# (files to create in the input folder, substrings every clash line must hold); 'good' is a
# case of its own that must not be predicted either: the input is refused as a whole.
AMBIGUOUS = {
    "two-formats": (["caseA.nii.gz", "caseA.mha"], [("caseA.nii.gz", "caseA.mha", "case 'caseA'")]),
    "plain-and-channel-0": (
        ["caseB.nii.gz", "caseB_0000.nii.gz"],
        [("caseB.nii.gz", "caseB_0000.nii.gz", "case 'caseB'")],
    ),
    "channel-0-in-two-formats": (
        ["caseC_0000.nrrd", "caseC_0000.nii.gz"],
        [("caseC_0000.nrrd", "caseC_0000.nii.gz", "case 'caseC'")],
    ),
    "file-and-dicom-folder": (["caseD.nii.gz", "caseD/"], [("DICOM series folder caseD/", "case 'caseD'")]),
    "three-at-once": (
        ["caseA.nii.gz", "caseA.mha", "caseB.nii.gz", "caseB_0000.nii.gz", "caseE.nrrd", "caseE.mha"],
        [("case 'caseA'",), ("case 'caseB'",), ("case 'caseE'",)],
    ),
}


def _fill(folder: Path, names: list[str]) -> None:
    folder.mkdir()
    _as(SCANS[0], folder / "good.nii.gz")
    for i, name in enumerate(names):
        if name.endswith("/"):
            shutil.copytree(DICOM, folder / name.rstrip("/"))
        else:
            _as(SCANS[1 + i % 2], folder / name)


@pytest.mark.parametrize("variant", list(AMBIGUOUS))
def test_ambiguous_inputs_refuse_the_input_before_anything_is_written(
    tmp_path: Path, trained_work: Path, capsys: pytest.CaptureFixture[str], variant: str
) -> None:
    names, clashes = AMBIGUOUS[variant]
    src, out = tmp_path / "in", tmp_path / "out"
    _fill(src, names)
    assert main(_predict(trained_work, src, out)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for needles in clashes:
        lines = [line for line in err.splitlines() if all(n in line for n in needles)]
        assert len(lines) == 1, (needles, err)
        assert "rename or move one of them" in lines[0]
    assert not out.exists()


def test_ambiguous_single_file_input_names_its_sibling(
    tmp_path: Path, trained_work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-i caseF_0000.nii.gz`` picks up the other channels of its case from its folder; a
    second channel 0 there (``caseF_0000.mha``) is not one of them and is no clash."""
    src = tmp_path / "in"
    src.mkdir()
    _as(SCANS[0], src / "caseF_0000.nii.gz")
    _as(SCANS[1], src / "caseF_0000.mha")
    out = tmp_path / "out"
    assert main(_predict(trained_work, src / "caseF_0000.nii.gz", out)) == 0
    assert [p.name for p in out.iterdir()] == ["caseF.nii.gz"]


def test_outputs_that_would_replace_inputs_are_refused(
    tmp_path: Path, trained_work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``-o`` the input folder: plain-named scans would be overwritten (or skipped as done)."""
    src = tmp_path / "in"
    src.mkdir()
    for scan in SCANS[:2]:
        _as(scan, src / scan.name)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    assert main(_predict(trained_work, src, src)) == 2
    err = capsys.readouterr().err
    for scan in SCANS[:2]:
        assert f"would replace the input scan {src / scan.name}" in err
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_a_folder_in_an_outputs_place_is_refused_first(
    tmp_path: Path, trained_work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found before the first case is predicted, not after the others were written."""
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name in ("a.nii.gz", "z.nii.gz"):
        _as(SCANS[0], src / name)
    (out / "z.nii.gz").mkdir(parents=True)
    assert main(_predict(trained_work, src, out)) == 2
    assert f"{out / 'z.nii.gz'}: is a folder where an output goes" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["z.nii.gz"]


def test_dangling_link_among_inputs_is_named_and_the_rest_predicted(
    tmp_path: Path, trained_work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    _as(SCANS[0], src / "a.nii.gz")
    (src / "gone.nii.gz").symlink_to(tmp_path / "nowhere.nii.gz")
    assert main(_predict(trained_work, src, out)) == 2
    err = capsys.readouterr().err
    assert str(src / "gone.nii.gz") in err
    assert "dangling" in err
    assert [p.name for p in out.iterdir()] == ["a.nii.gz"]


# --- existing outputs -----------------------------------------------------------------------


def _empty(p: Path, deny: Callable[[Path], None]) -> None:
    p.write_bytes(b"")


def _cut_short(p: Path, deny: Callable[[Path], None]) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])


def _not_compressed(p: Path, deny: Callable[[Path], None]) -> None:
    p.write_bytes(b"this is not a compressed file at all")


def _bad_checksum(p: Path, deny: Callable[[Path], None]) -> None:
    """A flipped byte: in a gzip stream's CRC (its last 8 bytes are CRC and length, so the data
    decompresses and the check fails), in a zip the middle of its largest member's data."""
    data = bytearray(p.read_bytes())
    data[-8 if p.suffix == ".gz" else len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def _unreadable(p: Path, deny: Callable[[Path], None]) -> None:
    deny(p)


DAMAGES = {
    "empty": (_empty, "is empty"),
    "cut-short": (_cut_short, "is damaged"),
    "not-compressed": (_not_compressed, "is damaged"),
    "bad-checksum": (_bad_checksum, "is damaged"),
    "unreadable": (_unreadable, "cannot be read (permission denied)"),
}


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory, trained_work: Path) -> tuple[Path, Path]:
    """An input folder of two cases, both predicted (with probabilities) into ``out``."""
    root = tmp_path_factory.mktemp("predicted")
    src, out = root / "in", root / "out"
    src.mkdir()
    for name, scan in (("a.nii.gz", SCANS[0]), ("b.nii.gz", SCANS[1])):
        _as(scan, src / name)
    assert main(_predict(trained_work, src, out, "--save-probabilities")) == 0
    return src, out


@pytest.fixture
def done(tmp_path: Path, predicted: tuple[Path, Path]) -> tuple[Path, Path]:
    """A private copy of :func:`predicted` (file times kept)."""
    src, out = (shutil.copytree(p, tmp_path / p.name) for p in predicted)
    return src, out


@pytest.mark.parametrize("output", ["a.nii.gz", "a.npz"])
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_existing_output_is_predicted_again(
    trained_work: Path,
    done: tuple[Path, Path],
    deny: Callable[[Path], None],
    logged: list[str],
    damage: str,
    output: str,
) -> None:
    src, out = done
    whole = {p.name: p.read_bytes() for p in out.iterdir()}
    b_mtime = (out / "b.nii.gz").stat().st_mtime_ns
    make, said = DAMAGES[damage]
    make(out / output, deny)
    logged.clear()
    assert main(_predict(trained_work, src, out, "--save-probabilities")) == 0
    assert any(m.startswith(f"{out / output}: existing output {said}") for m in logged), logged
    if damage == "unreadable":
        return  # still simulated unreadable: what was written cannot be compared here
    assert {p.name: p.read_bytes() for p in out.iterdir()} == whole  # redone: the same bytes
    assert (out / "b.nii.gz").stat().st_mtime_ns == b_mtime  # the whole case was skipped


def test_whole_outputs_are_skipped_and_overwrite_redoes_them(
    trained_work: Path, done: tuple[Path, Path], logged: list[str]
) -> None:
    src, out = done
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    logged.clear()
    assert main(_predict(trained_work, src, out, "--save-probabilities")) == 0
    assert not [m for m in logged if "existing output" in m], logged
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert main(_predict(trained_work, src, out, "--save-probabilities", "--overwrite")) == 0
    assert all(p.stat().st_mtime_ns != stamps[p.name] for p in out.iterdir())


def test_a_whole_label_map_without_its_probabilities_is_redone(
    trained_work: Path, done: tuple[Path, Path]
) -> None:
    src, out = done
    (out / "a.npz").unlink()
    assert main(_predict(trained_work, src, out, "--save-probabilities")) == 0
    with np.load(out / "a.npz") as z:
        assert z["probabilities"].shape[0] == 3


# --- nothing left behind --------------------------------------------------------------------


def _broken(src: Path) -> None:
    (src / "broken.nii.gz").write_bytes(SCANS[0].read_bytes()[:400])


def _not_gzip(src: Path) -> None:
    (src / "junk.nii.gz").write_bytes(b"hello")


def _missing_channel(src: Path) -> None:
    _as(SCANS[0], src / "two_0001.nii.gz")


def _wrong_dimension(src: Path) -> None:
    sitk.WriteImage(sitk.Image(8, 8, sitk.sitkFloat32), str(src / "flat.nii.gz"))


def _nan(src: Path) -> None:
    img = sitk.ReadImage(str(SCANS[0]))
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    arr[:] = np.nan
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    sitk.WriteImage(bad, str(src / "nan.nii.gz"))


@pytest.mark.parametrize(
    "make",
    [[_broken], [_not_gzip], [_missing_channel], [_wrong_dimension], [_nan], [_broken, _not_gzip, _nan]],
    ids=["truncated", "not-gzip", "missing-channel", "2d-image", "all-nan", "three-bad"],
)
def test_a_run_where_every_input_fails_leaves_no_output_folder(
    tmp_path: Path,
    trained_work: Path,
    capsys: pytest.CaptureFixture[str],
    make: list[Callable[[Path], None]],
) -> None:
    src, out = tmp_path / "in", tmp_path / "deep" / "out"
    src.mkdir()
    for m in make:
        m(src)
    assert main(_predict(trained_work, src, out, "--save-probabilities")) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for f in src.iterdir():
        assert f.name in err
    assert not (tmp_path / "deep").exists()


def test_gzip_check_reads_a_large_output_quickly(tmp_path: Path) -> None:
    """The skip check decompresses the whole file: a compressed label map decompresses at
    hundreds of MB/s, so even the 70-megavoxel CT's output is checked in well under a second
    (not timed here; the check itself must accept a multi-chunk stream)."""
    from autoseg.inference.cohort import _damage

    f = tmp_path / "big.nii.gz"
    with gzip.open(f, "wb") as z:
        z.write(np.zeros(10 << 20, np.uint8).tobytes())
    assert _damage(f) is None
    f.write_bytes(f.read_bytes()[:-3])
    assert _damage(f) is not None
