"""Tests of the DICOM series reader on real scanner data.

The shipped fixtures (``data/fixtures``) always run; the five MR series and the CT under the
shared development data (``../shared/data``) run when that folder is present. The reference for
"correct" is SimpleITK's own GDCM pipeline (``GetGDCMSeriesFileNames`` sorts by position too),
plus a label map made by another tool that must overlay the CT we read.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.fileset import FileSet
from pydicom.uid import generate_uid

from autoseg.errors import ImageReadError
from autoseg.io.dicom import list_dicom_series, read_dicom_series
from autoseg.io.image import Geometry, Image, read_image, write_image

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "data" / "fixtures"
MR_FIXTURE = FIXTURES / "dicom_mr" / "13_HCropVolume"
CT_FIXTURE = FIXTURES / "ct_sample" / "example_ct_dicom"
OBLIQUE_FIXTURE = FIXTURES / "dicom_mr" / "11-T1post-18670"
# Every DICOM series of ../shared/data is compared with SimpleITK's reader by
# benchmarks/check_dicom_series.py (the shared data is not part of a user's clone).


def _sitk_reference(folder: Path) -> sitk.Image:
    """The series as SimpleITK reads it on its own (GDCM's sorter chooses the order)."""
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def _assert_same(img: Image, ref: sitk.Image) -> None:
    ref_geometry = Geometry.from_sitk(ref)
    np.testing.assert_array_equal(img.array, sitk.GetArrayFromImage(ref))
    np.testing.assert_allclose(img.geometry.spacing, ref_geometry.spacing, atol=1e-6)
    np.testing.assert_allclose(img.geometry.origin, ref_geometry.origin, atol=1e-4)
    np.testing.assert_allclose(img.geometry.direction, ref_geometry.direction, atol=1e-6)


def _copy(src: Path, dest: Path, *, prefix: str = "") -> Path:
    """Copy the files of ``src`` into ``dest`` (created), names optionally prefixed."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in sorted(src.iterdir()):
        shutil.copyfile(f, dest / f"{prefix}{f.name}")
    return dest


def _edit(path: Path, **tags: object) -> None:
    """Rewrite a DICOM file with some header elements set (None deletes the element)."""
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


@pytest.fixture(scope="module")
def mr() -> Image:
    return read_dicom_series(MR_FIXTURE)


class TestAgreesWithSimpleITK:
    @pytest.mark.parametrize(
        "folder", [MR_FIXTURE, CT_FIXTURE, OBLIQUE_FIXTURE], ids=["mr_fixture", "ct_jpeg2000", "oblique_mr"]
    )
    def test_shipped_fixtures(self, folder: Path) -> None:
        img = read_dicom_series(folder)
        assert img.path == folder
        _assert_same(img, _sitk_reference(folder))

    def test_shapes_and_spacing_are_those_documented(self) -> None:
        ct = read_dicom_series(CT_FIXTURE)
        assert ct.array.shape == (20, 512, 512)
        np.testing.assert_allclose(ct.spacing, (2.0, 0.9765625, 0.9765625))
        assert ct.array.min() < -900  # air in Hounsfield units: the rescale was applied

    def test_oblique_series_has_oblique_direction(self) -> None:
        img = read_dicom_series(OBLIQUE_FIXTURE)
        assert img.array.shape == (22, 320, 280)
        np.testing.assert_allclose(img.spacing, (6.5, 0.6875, 0.6875), atol=1e-5)
        direction = np.reshape(img.geometry.direction, (3, 3))
        np.testing.assert_allclose(direction @ direction.T, np.eye(3), atol=1e-6)
        assert abs(direction[1, 2]) > 0.15  # tilted about x by ~11 degrees


def test_label_map_from_another_tool_overlays_the_ct() -> None:
    """The shipped label map (y axis stored flipped) must land on the body of the CT we read."""
    ct = read_dicom_series(CT_FIXTURE)
    seg = sitk.ReadImage(str(FIXTURES / "ct_sample" / "example_seg_dicom.nii.gz"))
    grid = sitk.GetImageFromArray(ct.array)
    ct.geometry.apply_to(grid)
    on_ct = sitk.GetArrayFromImage(sitk.Resample(seg, grid, sitk.Transform(), sitk.sitkNearestNeighbor, 0))
    np.testing.assert_array_equal(on_ct, sitk.GetArrayFromImage(seg)[:, ::-1, :])
    labelled = on_ct > 0
    assert (labelled & (ct.array > -300)).sum() / labelled.sum() > 0.95


class TestSliceOrder:
    def test_shuffled_file_names_read_identically(self, tmp_path: Path, mr: Image) -> None:
        files = sorted(MR_FIXTURE.glob("*.dcm"))
        names = np.random.default_rng(0).permutation(len(files))
        for f, n in zip(files, names, strict=True):
            shutil.copyfile(f, tmp_path / f"slice_{n:03d}.dcm")
        img = read_dicom_series(tmp_path)
        np.testing.assert_array_equal(img.array, mr.array)
        assert img.geometry == mr.geometry

    def test_order_is_by_position_not_name(self, tmp_path: Path, mr: Image) -> None:
        """Reverse the names against the positions: name order would flip the volume."""
        for f in MR_FIXTURE.glob("*.dcm"):
            shutil.copyfile(f, tmp_path / f"{100 - int(f.stem):03d}.dcm")
        np.testing.assert_array_equal(read_dicom_series(tmp_path).array, mr.array)

    def test_without_positions_falls_back_to_instance_number(
        self, tmp_path: Path, mr: Image, caplog: pytest.LogCaptureFixture
    ) -> None:
        _copy(MR_FIXTURE, tmp_path)
        for f in tmp_path.iterdir():
            _edit(f, ImagePositionPatient=None, ImageOrientationPatient=None)
        with caplog.at_level(logging.WARNING, logger="autoseg.io.dicom"):
            img = read_dicom_series(tmp_path)
        np.testing.assert_array_equal(img.array, mr.array)
        assert "InstanceNumber" in caplog.text

    def test_without_positions_or_instance_numbers_is_refused(self, tmp_path: Path) -> None:
        _copy(MR_FIXTURE, tmp_path)
        _edit(tmp_path / "7.dcm", ImagePositionPatient=None, InstanceNumber=None)
        with pytest.raises(ImageReadError, match=r"1 of 32 files lack ImagePositionPatient"):
            read_dicom_series(tmp_path)

    def test_without_positions_and_repeated_instance_numbers_is_refused(self, tmp_path: Path) -> None:
        _copy(MR_FIXTURE, tmp_path)
        for f in tmp_path.iterdir():
            _edit(f, ImagePositionPatient=None)
        _edit(tmp_path / "7.dcm", InstanceNumber=8)
        with pytest.raises(ImageReadError, match="InstanceNumbers are missing or repeated"):
            read_dicom_series(tmp_path)

    def test_sideways_drift_warns(self, tmp_path: Path, mr: Image, caplog: pytest.LogCaptureFixture) -> None:
        """A gantry-tilted stack (each slice shifted in-plane) is read but flagged."""
        _copy(MR_FIXTURE, tmp_path)
        for f in tmp_path.iterdir():
            _edit(f, ImagePositionPatient=[0.5 * int(f.stem), 0.0, float(f.stem)])
        with caplog.at_level(logging.WARNING, logger="autoseg.io.dicom"):
            img = read_dicom_series(tmp_path)
        np.testing.assert_array_equal(img.array, mr.array)
        assert "gantry tilt" in caplog.text


class TestRefused:
    def test_two_series_in_one_folder_lists_both(self, tmp_path: Path) -> None:
        _copy(MR_FIXTURE, tmp_path, prefix="a_")
        other_uid = generate_uid()
        for f in MR_FIXTURE.iterdir():
            _edit(shutil.copyfile(f, tmp_path / f"b_{f.name}"), SeriesInstanceUID=other_uid)
        first_uid = pydicom.dcmread(MR_FIXTURE / "1.dcm").SeriesInstanceUID
        assert {k: len(v) for k, v in list_dicom_series(tmp_path).items()} == {
            first_uid: 32,
            other_uid: 32,
        }
        with pytest.raises(ImageReadError, match="holds 2 DICOM series") as info:
            read_dicom_series(tmp_path)
        message = str(info.value)
        assert first_uid in message
        assert other_uid in message
        assert "'HippoCrop' (32 files)" in message
        assert "own folder" in message
        assert "\n" not in message

    def test_mr_and_ct_mixed(self, tmp_path: Path) -> None:
        _copy(MR_FIXTURE, tmp_path)
        _copy(CT_FIXTURE, tmp_path)
        with pytest.raises(ImageReadError, match=r"no SeriesInstanceUID\)? 'CT Body 3.0' \(20"):
            read_dicom_series(tmp_path)

    def test_missing_middle_slice_names_the_gap(self, tmp_path: Path) -> None:
        _copy(MR_FIXTURE, tmp_path)
        (tmp_path / "16.dcm").unlink()
        with pytest.raises(ImageReadError, match=r"gap of 2 mm between 15\.dcm and 17\.dcm"):
            read_dicom_series(tmp_path)

    def test_missing_end_slice_is_fine(self, tmp_path: Path, mr: Image) -> None:
        _copy(MR_FIXTURE, tmp_path)
        (tmp_path / "32.dcm").unlink()
        np.testing.assert_array_equal(read_dicom_series(tmp_path).array, mr.array[:-1])

    def test_duplicate_slice(self, tmp_path: Path) -> None:
        _copy(MR_FIXTURE, tmp_path)
        shutil.copyfile(tmp_path / "5.dcm", tmp_path / "5_copy.dcm")
        with pytest.raises(ImageReadError, match=r"duplicate slice positions .*5\.dcm and 5_copy"):
            read_dicom_series(tmp_path)

    def test_differing_orientation(self, tmp_path: Path) -> None:
        _copy(MR_FIXTURE, tmp_path)
        _edit(tmp_path / "9.dcm", ImageOrientationPatient=[0, 1, 0, 0, 0, -1])
        with pytest.raises(ImageReadError, match=r"differ in orientation .*9\.dcm"):
            read_dicom_series(tmp_path)

    def test_differing_size(self, tmp_path: Path) -> None:
        _copy(MR_FIXTURE, tmp_path)
        _edit(tmp_path / "3.dcm", Rows=64)
        with pytest.raises(ImageReadError, match=r"31 files of 51x35, 1 files of 64x35"):
            read_dicom_series(tmp_path)

    def test_multiframe_mixed_with_slices(self, tmp_path: Path) -> None:
        _copy(MR_FIXTURE, tmp_path)
        _edit(tmp_path / "3.dcm", NumberOfFrames=2)
        with pytest.raises(ImageReadError, match="multi-frame"):
            read_dicom_series(tmp_path)

    @pytest.mark.parametrize("junk", [[], ["notes.txt", ".DS_Store"]], ids=["empty", "not_dicom"])
    def test_no_dicom_files_names_the_folder(self, tmp_path: Path, junk: list[str]) -> None:
        folder = tmp_path / "scan_42"
        folder.mkdir()
        for name in junk:
            (folder / name).write_text("not a DICOM file")
        assert list_dicom_series(folder) == {}
        with pytest.raises(ImageReadError, match=r"scan_42: no DICOM image files found"):
            read_dicom_series(folder)

    @pytest.mark.parametrize("keep", [1000, -100], ids=["header_cut", "pixels_cut"])
    def test_truncated_file(self, tmp_path: Path, keep: int) -> None:
        """A cut header still parses in pydicom, and a cut pixel block must not read silently."""
        _copy(MR_FIXTURE, tmp_path)
        data = (tmp_path / "10.dcm").read_bytes()
        (tmp_path / "10.dcm").write_bytes(data[:keep])
        match = (
            r"10\.dcm: MR Image Storage file without Rows"
            if keep > 0
            else r"10\.dcm: this slice's pixel data cannot be read \(truncated\?\); re-copy the series"
        )
        with pytest.raises(ImageReadError, match=match):
            read_dicom_series(tmp_path)

    def test_missing_folder(self, tmp_path: Path) -> None:
        with pytest.raises(ImageReadError, match="folder not found"):
            read_dicom_series(tmp_path / "nope")


class TestDicomdirLayout:
    @pytest.fixture
    def fileset(self, tmp_path: Path) -> Path:
        """A DICOMDIR file set as CDs and PACS exports write it (PT*/ST*/SE*/IM* below it)."""
        fs = FileSet()
        for f in sorted(MR_FIXTURE.glob("*.dcm")):
            ds = pydicom.dcmread(f)
            ds.SeriesNumber = 13  # a DICOMDIR series record requires it; the crops lack it
            fs.add(ds)
        fs.write(tmp_path / "export")
        fs._stage["t"].cleanup()  # pydicom leaves its staging TemporaryDirectory to the GC
        return tmp_path / "export"

    def test_root_points_to_subfolders(self, fileset: Path) -> None:
        with pytest.raises(ImageReadError, match=r"subfolders PT000000 may be"):
            read_dicom_series(fileset)

    def test_dicomdir_and_text_beside_slices_are_ignored(self, fileset: Path, mr: Image) -> None:
        series = next(p for p in fileset.rglob("SE*") if p.is_dir())
        shutil.copyfile(fileset / "DICOMDIR", series / "DICOMDIR")
        (series / "README.txt").write_text("exported by a PACS")
        assert [len(v) for v in list_dicom_series(series).values()] == [32]
        np.testing.assert_array_equal(read_dicom_series(series).array, mr.array)


def test_single_multiframe_file_is_read_whole(tmp_path: Path, mr: Image) -> None:
    files = sorted(MR_FIXTURE.glob("*.dcm"), key=lambda p: int(p.stem))
    slices = [pydicom.dcmread(f) for f in files]
    multi = slices[0]
    multi.NumberOfFrames = len(slices)
    multi.SpacingBetweenSlices = 1.0
    multi.PixelData = b"".join(s.PixelData for s in slices)
    multi.save_as(tmp_path / "multi.dcm")
    img = read_dicom_series(tmp_path)
    np.testing.assert_array_equal(img.array, mr.array)
    assert img.geometry.same_grid(mr.geometry)


@pytest.mark.parametrize(
    "folder",
    [MR_FIXTURE, CT_FIXTURE, OBLIQUE_FIXTURE],
    ids=["mr", "ct", "oblique_mr"],
)
def test_write_then_read_round_trip(tmp_path: Path, folder: Path) -> None:
    img = read_dicom_series(folder)
    back = read_image(write_image(img.array, img.geometry, tmp_path / "x.nii.gz"))
    np.testing.assert_array_equal(back.array, img.array)
    assert back.array.dtype == img.array.dtype
    assert back.geometry.same_grid(img.geometry, rtol=0, atol=1e-5)
    via_read_image = read_image(folder)  # a folder goes through the DICOM reader
    np.testing.assert_array_equal(via_read_image.array, img.array)
