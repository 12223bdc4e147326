"""``autoseg predict --output-format dicom-seg|both`` on the shipped DICOM series.

Two tiny models (three iterations' worth, 8 mm voxels so that a 512x512 CT predicts in a second)
give noisy but non-empty label maps: one with plain labels, one with overlapping regions. Each
DICOM-SEG is read back two ways and compared voxel by voxel with the NIfTI written beside it:

* highdicom: per source instance (``get_pixels_by_source_instance``), each source file placed on
  the NIfTI's grid by its own ImagePositionPatient (not by autoseg's slice order), and each
  frame's position, orientation and spacing against its source's header;
* dcmqi's ``segimage2itkimage`` (another implementation, C++): one image per segment, its
  origin, spacing and direction against the NIfTI's (1e-4), its voxels placed on the NIfTI grid.

The CT fixture is JPEG2000-compressed and anonymised with its Study/Series/SOP UIDs emptied: as
shipped it is refused (nothing to reference); with Study and Series UIDs put back (SOP UIDs come
from the files' meta headers) it is the compressed-source case.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import generate_uid

from autoseg import __version__
from autoseg.cli import main
from autoseg.errors import DatasetError
from autoseg.inference.cohort import _seg_damage
from autoseg.io.dicom_seg import seg_sources
from autoseg.io.image import Geometry, Image, read_image, write_image
from autoseg.labels import LabelScheme
from autoseg.planning.plan import Plan
from tests.budget import tiny

ROOT = Path(__file__).resolve().parents[2]
CT = ROOT / "data" / "fixtures" / "ct_sample" / "example_ct_dicom"
OBLIQUE_MR = ROOT / "data" / "fixtures" / "dicom_mr" / "11-T1post-18670"
CROPPED_MR = ROOT / "data" / "fixtures" / "dicom_mr" / "13_HCropVolume"
#: dcmqi's SEG reader (the ``dcmqi`` wheel of the test extra), beside this Python.
SEGIMAGE2ITKIMAGE = Path(sys.executable).parent / "segimage2itkimage"
LABELS = {"background": 0, "left part": 1, "right part": 2}
REGIONS = {"background": 0, "whole lesion": [1, 2], "lesion core": 2}
TISSUE = ("85756007", "SCT", "Tissue")


def _dataset(root: Path, labels: dict[str, object], order: list[int] | None = None) -> Path:
    """4 cases of 12x16x16 voxels of 8 mm: noise, plus two blocks (values 1 and 2)."""
    rng = np.random.default_rng(0)
    geometry = Geometry((8.0, 8.0, 8.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for i in range(4):
        lab = np.zeros((12, 16, 16), np.uint8)
        lab[3:9, 3:9, 2:7] = 1
        lab[4:8, 6:12, 8:14] = 2
        write_image(
            rng.normal(0, 1, lab.shape).astype(np.float32) + 2 * lab,
            geometry,
            root / "imagesTr" / f"c{i}_0000.nii.gz",
        )
        write_image(lab, geometry, root / "labelsTr" / f"c{i}.nii.gz")
    meta: dict[str, object] = {
        "channel_names": {"0": "MR"},
        "labels": labels,
        "numTraining": 4,
        "file_ending": ".nii.gz",
    }
    if order is not None:
        meta["regions_class_order"] = order
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Work folder with ``parts`` (labels) and ``lesion`` (regions), 3d_fullres fold all."""
    root = tmp_path_factory.mktemp("seg_models")
    common = ["--work-dir", str(root / "work"), "-q"]
    for name, labels, order in (("parts", LABELS, None), ("lesion", REGIONS, [1, 2])):
        ds = _dataset(root / name, labels, order)
        assert main(["plan", str(ds), "--preprocess-workers", "1", *common]) == 0
        assert main(["train", name, "3d_fullres", "all", *tiny(), *common]) == 0
    return root / "work"


def _predict(work: Path, dataset: str, src: Path, out: Path, *extra: str) -> int:
    args = ["predict", "-i", str(src), "-o", str(out), "-d", dataset, "-c", "3d_fullres"]
    return main([*args, "--work-dir", str(work), "--device", "cpu", "-q", *extra])


def _scheme(work: Path, dataset: str) -> LabelScheme:
    return Plan.load(work / dataset / "plans.json").label_scheme


def _ct_with_uids(dest: Path) -> Path:
    """The CT fixture with its Study and Series UIDs put back (pixel data kept compressed)."""
    dest.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    for f in sorted(CT.iterdir()):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.save_as(dest / f.name)
    return dest


def _sources(folder: Path) -> dict[str, pydicom.Dataset]:
    """SOPInstanceUID (else the meta header's) -> header, for every file of ``folder``."""
    out = {}
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out[str(ds.SOPInstanceUID or ds.file_meta.MediaStorageSOPInstanceUID)] = ds
    return out


def _index_of(point: np.ndarray, image: Image) -> np.ndarray:
    """Continuous ``(z, y, x)`` index of a physical point on ``image``'s grid."""
    g = image.geometry
    d = np.asarray(g.direction).reshape(3, 3) * np.asarray(g.spacing[::-1])
    return np.linalg.solve(d, point - np.asarray(g.origin))[::-1]


def _check_references(seg: hd.seg.Segmentation, sources: dict[str, pydicom.Dataset]) -> None:
    first = next(iter(sources.values()))
    assert seg.StudyInstanceUID == first.StudyInstanceUID
    assert seg.FrameOfReferenceUID == first.FrameOfReferenceUID
    (series,) = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == first.SeriesInstanceUID
    referenced = {str(i.ReferencedSOPInstanceUID) for i in series.ReferencedInstanceSequence}
    per_frame = {
        str(src.ReferencedSOPInstanceUID)
        for frame in seg.PerFrameFunctionalGroupsSequence
        for derivation in frame.DerivationImageSequence
        for src in derivation.SourceImageSequence
    }
    assert per_frame
    assert per_frame <= referenced <= set(sources)
    assert seg.SeriesInstanceUID != first.SeriesInstanceUID


def _check_frames_geometry(seg: hd.seg.Segmentation, sources: dict[str, pydicom.Dataset]) -> None:
    """Each frame lies where its source image does: position, orientation, pixel spacing."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    for frame in seg.PerFrameFunctionalGroupsSequence:
        src = sources[str(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose(
            np.asarray(position, float), np.asarray(src.ImagePositionPatient, float), atol=1e-4
        )
        orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
        np.testing.assert_allclose(
            np.asarray(orientation, float), np.asarray(src.ImageOrientationPatient, float), atol=1e-4
        )
        spacing = shared.PixelMeasuresSequence[0].PixelSpacing
        np.testing.assert_allclose(np.asarray(spacing, float), np.asarray(src.PixelSpacing, float), atol=1e-6)


def _check_with_highdicom(
    seg: hd.seg.Segmentation, sources: dict[str, pydicom.Dataset], masks: np.ndarray, nifti: Image
) -> None:
    """Per source instance, the SEG's pixels are the NIfTI's masks of the slice the source lies on."""
    n_segments = masks.shape[0]
    seen = set()
    for uid, src in sources.items():
        k = _index_of(np.asarray(src.ImagePositionPatient, float), nifti)
        np.testing.assert_allclose(k, np.round(k), atol=1e-3)  # on the grid
        z = round(k[0])
        assert round(k[1]) == 0
        assert round(k[2]) == 0
        seen.add(z)
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[uid],
            segment_numbers=list(range(1, n_segments + 1)),
            combine_segments=False,
            assert_missing_frames_are_empty=True,
        )
        np.testing.assert_array_equal(np.moveaxis(pixels[0], -1, 0), masks[:, z])
    assert seen == set(range(nifti.array.shape[0]))  # every slice has its source


def _check_with_dcmqi(seg_path: Path, names: list[str], masks: np.ndarray, nifti: Image, tmp: Path) -> None:
    """dcmqi's reading of the SEG, on the NIfTI's grid, equals the NIfTI's masks, segment by segment."""
    out = tmp / "dcmqi"
    out.mkdir()
    run = subprocess.run(
        [
            str(SEGIMAGE2ITKIMAGE),
            "--inputDICOM",
            str(seg_path),
            "--outputDirectory",
            str(out),
            "--outputType",
            "nifti",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    meta = json.loads((out / "meta.json").read_text())
    found = np.zeros_like(masks)
    labels_seen = []
    g = nifti.geometry
    for i, group in enumerate(meta["segmentAttributes"], start=1):
        img = sitk.ReadImage(str(out / f"{i}.nii.gz"))
        np.testing.assert_allclose(img.GetDirection(), g.direction, atol=1e-4)
        np.testing.assert_allclose(img.GetSpacing()[:2], g.spacing[::-1][:2], atol=1e-4)
        if nifti.array.shape[0] > 1:  # one slice has no slice spacing to compare
            np.testing.assert_allclose(img.GetSpacing()[2], g.spacing[0], atol=1e-4)
        k = _index_of(np.asarray(img.GetOrigin()), nifti)
        np.testing.assert_allclose(k, np.round(k), atol=1e-4 / min(g.spacing))  # origin within ~1e-4 mm
        z0, y0, x0 = (round(v) for v in k)
        arr = sitk.GetArrayFromImage(img)
        assert (y0, x0) == (0, 0)
        assert arr.shape[1:] == nifti.array.shape[1:]
        for attrs in group:
            s = names.index(attrs["SegmentLabel"])
            labels_seen.append(attrs["SegmentLabel"])
            found[s, z0 : z0 + arr.shape[0]] |= arr == attrs["labelID"]
    assert sorted(labels_seen) == sorted(names)  # an empty segment too
    np.testing.assert_array_equal(found, masks)


def _check_seg(
    seg_path: Path,
    nifti_path: Path,
    series: Path,
    scheme: LabelScheme,
    tmp: Path,
    *,
    every_segment: bool = True,
) -> hd.seg.Segmentation:
    """Everything a DICOM-SEG of ``series`` must be, against the NIfTI predicted with it
    (``every_segment``: each label or region is predicted somewhere, so each is compared)."""
    nifti = read_image(nifti_path)
    masks = np.stack(scheme.masks(nifti.array))  # (segments, Z, Y, X)
    present = masks.any(axis=(1, 2, 3))
    assert present.all() if every_segment else present.any(), "the tiny model left segments empty"
    seg = hd.seg.segread(seg_path)
    names = [e.name for e in scheme.entries]
    assert [d.SegmentLabel for d in seg.SegmentSequence] == names
    assert [int(d.SegmentNumber) for d in seg.SegmentSequence] == list(range(1, len(names) + 1))
    for d in seg.SegmentSequence:
        algorithm = d.SegmentationAlgorithmIdentificationSequence[0]
        assert (d.SegmentAlgorithmType, d.SegmentAlgorithmName) == ("AUTOMATIC", "autoseg")
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("autoseg", __version__)
    assert seg.SegmentationType == "BINARY"
    sources = _sources(series)
    _check_references(seg, sources)
    _check_frames_geometry(seg, sources)
    empty = sum(1 for s in range(masks.shape[0]) for z in range(masks.shape[1]) if not masks[s, z].any())
    assert int(seg.NumberOfFrames) == masks.shape[0] * masks.shape[1] - empty  # empty frames left out
    _check_with_highdicom(seg, sources, masks, nifti)
    _check_with_dcmqi(seg_path, names, masks, nifti, tmp)
    return seg


@pytest.mark.slow
class TestSegOfShippedSeries:
    @pytest.mark.parametrize(
        ("which", "every_segment"),
        [("ct_jpeg2000", True), ("oblique_mr", True), ("cropped_mr", False)],
        ids=["ct_jpeg2000", "oblique_mr", "cropped_mr"],
    )
    def test_labels_both_formats(self, work: Path, tmp_path: Path, which: str, every_segment: bool) -> None:
        """(The cropped MR is 4x6x4 voxels for the model: it may predict one label only.)"""
        series = {"oblique_mr": OBLIQUE_MR, "cropped_mr": CROPPED_MR}.get(which) or _ct_with_uids(
            tmp_path / "ct"
        )
        out = tmp_path / "out"
        assert _predict(work, "parts", series, out, "--output-format", "both") == 0
        assert sorted(p.name for p in out.iterdir()) == [f"{series.name}.dcm", f"{series.name}.nii.gz"]
        seg = _check_seg(
            out / f"{series.name}.dcm",
            out / f"{series.name}.nii.gz",
            series,
            _scheme(work, "parts"),
            tmp_path,
            every_segment=every_segment,
        )
        for d in seg.SegmentSequence:
            for key in ("SegmentedPropertyCategoryCodeSequence", "SegmentedPropertyTypeCodeSequence"):
                code = d[key].value[0]
                assert (code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning) == TISSUE

    def test_regions_overlap(self, work: Path, tmp_path: Path) -> None:
        out = tmp_path / "out"
        assert _predict(work, "lesion", OBLIQUE_MR, out, "--output-format", "both") == 0
        name = OBLIQUE_MR.name
        seg = _check_seg(
            out / f"{name}.dcm", out / f"{name}.nii.gz", OBLIQUE_MR, _scheme(work, "lesion"), tmp_path
        )
        volume = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=list(_sources(OBLIQUE_MR)),
            segment_numbers=[1, 2],
            combine_segments=False,
            assert_missing_frames_are_empty=True,
        )
        assert (volume[..., 0] & volume[..., 1]).any()  # a voxel in both regions: overlapping segments

    def test_single_slice_series(self, work: Path, tmp_path: Path) -> None:
        """One slice of the oblique series, alone in its folder."""
        series = tmp_path / "one_slice"
        series.mkdir()
        shutil.copy(OBLIQUE_MR / "000010.dcm", series / "000010.dcm")
        out = tmp_path / "out"
        assert _predict(work, "parts", series, out, "--output-format", "both") == 0
        nifti = read_image(out / "one_slice.nii.gz")
        assert nifti.array.shape[0] == 1
        scheme = _scheme(work, "parts")
        _check_seg(
            out / "one_slice.dcm", out / "one_slice.nii.gz", series, scheme, tmp_path, every_segment=False
        )

    def test_multiframe_source(self, work: Path, tmp_path: Path) -> None:
        """One legacy-converted enhanced MR file (frames stored in descending order): frame k of
        the SEG comes from frame k of the source."""
        series = tmp_path / "multiframe"
        series.mkdir()
        frames = [pydicom.dcmread(f) for f in sorted(OBLIQUE_MR.iterdir())]
        image = hd.legacy.LegacyConvertedEnhancedMRImage(
            frames,
            series_instance_uid=generate_uid(),
            series_number=7,
            sop_instance_uid=generate_uid(),
            instance_number=1,
        )
        image.save_as(series / "enhanced.dcm")
        out = tmp_path / "out"
        assert _predict(work, "parts", series, out, "--output-format", "both") == 0
        nifti = read_image(out / "multiframe.nii.gz")
        masks = np.stack(_scheme(work, "parts").masks(nifti.array))
        seg = hd.seg.segread(out / "multiframe.dcm")
        positions = [
            f.PlanePositionSequence[0].ImagePositionPatient for f in image.PerFrameFunctionalGroupsSequence
        ]
        pixels = seg.get_pixels_by_source_frame(
            source_sop_instance_uid=image.SOPInstanceUID,
            source_frame_numbers=list(range(1, len(positions) + 1)),
            segment_numbers=[1, 2],
            combine_segments=False,
            assert_missing_frames_are_empty=True,
        )
        for number, position in enumerate(positions):
            k = _index_of(np.asarray(position, float), nifti)
            np.testing.assert_allclose(k, np.round(k), atol=1e-3)
            np.testing.assert_array_equal(np.moveaxis(pixels[number], -1, 0), masks[:, round(k[0])])
        assert masks.any()

    def test_seg_only_and_custom_codes(self, work: Path, tmp_path: Path) -> None:
        codes = tmp_path / "codes.json"
        category, kind = ["123037004", "SCT", "Anatomical Structure"], ["10200004", "SCT", "Liver"]
        codes.write_text(json.dumps({"right part": {"category": category, "type": kind}}))
        out = tmp_path / "out"
        assert (
            _predict(
                work, "parts", CROPPED_MR, out, "--output-format", "dicom-seg", "--seg-codes", str(codes)
            )
            == 0
        )
        assert [p.name for p in out.iterdir()] == [f"{CROPPED_MR.name}.dcm"]  # no .nii.gz
        seg = hd.seg.segread(out / f"{CROPPED_MR.name}.dcm")
        got = {
            d.SegmentLabel: [
                [c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning]
                for c in (d.SegmentedPropertyCategoryCodeSequence[0], d.SegmentedPropertyTypeCodeSequence[0])
            ]
            for d in seg.SegmentSequence
        }
        assert got == {"left part": [list(TISSUE), list(TISSUE)], "right part": [category, kind]}
        # a second run finds the SEG whole and skips the case; a cut one is predicted again
        before = (out / f"{CROPPED_MR.name}.dcm").stat().st_mtime_ns
        assert _predict(work, "parts", CROPPED_MR, out, "--output-format", "dicom-seg") == 0
        assert (out / f"{CROPPED_MR.name}.dcm").stat().st_mtime_ns == before
        data = (out / f"{CROPPED_MR.name}.dcm").read_bytes()
        (out / f"{CROPPED_MR.name}.dcm").write_bytes(data[: len(data) - 200])
        assert _seg_damage(out / f"{CROPPED_MR.name}.dcm") is not None
        assert _predict(work, "parts", CROPPED_MR, out, "--output-format", "dicom-seg") == 0
        assert (out / f"{CROPPED_MR.name}.dcm").read_bytes() != data[: len(data) - 200]
        assert _seg_damage(out / f"{CROPPED_MR.name}.dcm") is None


@pytest.mark.slow
class TestRefused:
    def _one_line(self, capsys: pytest.CaptureFixture[str]) -> str:
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        return err[0]

    def test_nifti_input(self, work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        scan = tmp_path / "scan.nii.gz"
        write_image(
            np.zeros((4, 5, 6), np.float32),
            Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1)),
            scan,
        )
        for fmt in ("dicom-seg", "both"):
            out = tmp_path / f"out_{fmt}"
            assert _predict(work, "parts", scan, out, "--output-format", fmt) == 2
            line = self._one_line(capsys)
            assert str(scan) in line
            assert "DICOM-SEG" in line
            assert "--output-format nifti" in line
            assert not out.exists()

    def test_series_without_uids(
        self, work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The CT as shipped has empty Study/Series UIDs: refused, nothing written for it."""
        out = tmp_path / "out"
        assert _predict(work, "parts", CT, out, "--output-format", "both") == 2
        err = capsys.readouterr().err
        assert "StudyInstanceUID/SeriesInstanceUID" in err
        assert str(CT) in err
        assert not out.exists() or not any(out.iterdir())

    def test_bad_codes_file(self, work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        codes = tmp_path / "codes.json"
        codes.write_text(json.dumps({"liver": {"category": list(TISSUE), "type": list(TISSUE)}}))
        out = tmp_path / "out"
        assert (
            _predict(
                work, "parts", CROPPED_MR, out, "--output-format", "dicom-seg", "--seg-codes", str(codes)
            )
            == 2
        )
        line = self._one_line(capsys)
        assert str(codes) in line
        assert "'liver'" in line
        assert "left part, right part" in line
        codes.write_text(json.dumps({"left part": {"category": ["1", "SCT"], "type": list(TISSUE)}}))
        assert (
            _predict(
                work, "parts", CROPPED_MR, out, "--output-format", "dicom-seg", "--seg-codes", str(codes)
            )
            == 2
        )
        assert "[value, scheme, meaning]" in self._one_line(capsys)
        assert not out.exists()

    def test_output_inside_the_series_folder(
        self, work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        series = tmp_path / "series"
        shutil.copytree(CROPPED_MR, series)
        assert _predict(work, "parts", series, series, "--output-format", "dicom-seg") == 2
        assert "into the input DICOM series folder" in self._one_line(capsys)
        assert sorted(p.name for p in series.iterdir()) == sorted(p.name for p in CROPPED_MR.iterdir())

    def test_failed_write_leaves_no_file(
        self, work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def half_then_full_disk(
            self: hd.seg.Segmentation, path: Path, *args: object, **kwargs: object
        ) -> None:
            Path(path).write_bytes(b"DICM" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(hd.seg.Segmentation, "save_as", half_then_full_disk)
        out = tmp_path / "out"
        assert _predict(work, "parts", CROPPED_MR, out, "--output-format", "dicom-seg") == 2
        assert list(out.iterdir()) == []  # neither the SEG nor its temporary


class TestSegSources:
    """The headers a SEG references, checked before anything is predicted."""

    def test_in_the_volume_order_copied(self) -> None:
        image = read_image(OBLIQUE_MR)
        sources = seg_sources(image.sources, image.geometry, OBLIQUE_MR)
        assert [s.SOPInstanceUID for s in sources] == [s.SOPInstanceUID for s in image.sources]
        assert all(a is not b for a, b in zip(sources, image.sources, strict=True))

    @pytest.mark.parametrize("order", ["reversed", "swapped"])
    def test_out_of_order_refused(self, order: str) -> None:
        image = read_image(OBLIQUE_MR)
        wrong = list(image.sources[::-1]) if order == "reversed" else list(image.sources)
        if order == "swapped":
            wrong[3], wrong[4] = wrong[4], wrong[3]
        with pytest.raises(DatasetError, match=r"out of the volume's slice order .* wrong images"):
            seg_sources(wrong, image.geometry, OBLIQUE_MR)

    def test_meta_header_uids_and_missing_type2(self, tmp_path: Path) -> None:
        ct = _ct_with_uids(tmp_path / "ct")
        image = read_image(ct)
        assert all(not s.SOPInstanceUID for s in image.sources)
        sources = seg_sources(image.sources, image.geometry, ct)
        assert [s.SOPInstanceUID for s in sources] == [
            s.file_meta.MediaStorageSOPInstanceUID for s in image.sources
        ]
        assert all(not s.SOPInstanceUID for s in image.sources)  # the read headers are left alone
        mr = read_image(CROPPED_MR)
        assert "PatientBirthDate" not in mr.sources[0]
        assert seg_sources(mr.sources, mr.geometry, CROPPED_MR)[0].PatientBirthDate in (None, "")

    def test_without_uids_refused(self) -> None:
        image = read_image(CT)
        with pytest.raises(
            DatasetError, match=r"example_ct_dicom/CT\.\S+: has no StudyInstanceUID/SeriesInstanceUID"
        ):
            seg_sources(image.sources, image.geometry, CT)

    def test_not_dicom_refused(self, tmp_path: Path) -> None:
        geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        with pytest.raises(DatasetError, match="not a DICOM series"):
            seg_sources((), geometry, tmp_path / "scan.nii.gz")
