"""Image files, dataset layouts, the work folder and ``autoseg plan`` on the shipped data.

Everything is written under ``tmp_path``; ``data/`` and ``plans/`` are only read.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.errors import DatasetError, ImageReadError
from autoseg.fingerprint import extract_fingerprint
from autoseg.io.dataset import load_dataset
from autoseg.io.image import Geometry, check_gzip_stream, read_image, write_image
from autoseg.io.samples import sample_dataset_dir
from autoseg.planning import Plan
from autoseg.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DIR = sample_dataset_dir()
SAMPLE_IMAGE = SAMPLE_DIR / "imagesTr" / "hippocampus_004.nii.gz"
SAMPLE_LABEL = SAMPLE_DIR / "labelsTr" / "hippocampus_004.nii.gz"
GOLDEN = ROOT / "plans" / "hippocampus_sample"
ENDINGS = [".nii.gz", ".nrrd", ".mha"]


def _rotation(deg_z: float, deg_x: float) -> tuple[float, ...]:
    """Row-major direction cosines of a rotation about z then x (orthonormal, det +1)."""
    cz, sz = math.cos(math.radians(deg_z)), math.sin(math.radians(deg_z))
    cx, sx = math.cos(math.radians(deg_x)), math.sin(math.radians(deg_x))
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return tuple(float(v) for v in (rz @ rx).ravel())


OBLIQUE = Geometry(spacing=(2.5, 0.9, 0.8), origin=(10.5, -20.25, 3.0), direction=_rotation(30.0, 20.0))


def _assert_same_geometry(a: Geometry, b: Geometry, atol: float) -> None:
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


class TestRoundTrip:
    @pytest.mark.parametrize("ending", ENDINGS, ids=ENDINGS)
    def test_sample_keeps_array_and_geometry(self, tmp_path, ending):
        img = read_image(SAMPLE_IMAGE)
        out = write_image(img.array, img.geometry, tmp_path / f"copy{ending}")
        back = read_image(out)
        assert back.path == out
        assert back.array.dtype == img.array.dtype == np.float32
        np.testing.assert_array_equal(back.array, img.array)
        # the sample's own geometry: 1 mm, origin (-1, -1, 1), x and y flipped
        assert back.geometry.spacing == (1.0, 1.0, 1.0)
        _assert_same_geometry(back.geometry, img.geometry, atol=1e-6)

    @pytest.mark.parametrize("ending", ENDINGS, ids=ENDINGS)
    def test_oblique_geometry(self, tmp_path, ending):
        label = read_image(SAMPLE_LABEL).array
        out = write_image(label, OBLIQUE, tmp_path / f"oblique{ending}")
        back = read_image(out)
        assert back.array.dtype == np.uint8
        np.testing.assert_array_equal(back.array, label)
        # NIfTI keeps geometry in float32 (and the rotation as a quaternion): 1e-5 mm is enough
        _assert_same_geometry(back.geometry, OBLIQUE, atol=1e-5)
        assert back.geometry.same_grid(OBLIQUE)

    def test_axis_order(self, tmp_path):
        # array (Z, Y, X) = (4, 5, 6) with spacing (z, y, x) = (3, 2, 1): SimpleITK sees size
        # (6, 5, 4) and spacing (1, 2, 3) in its (x, y, z) order
        arr = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
        geom = Geometry((3.0, 2.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
        out = write_image(arr, geom, tmp_path / "axes.mha")
        raw = sitk.ReadImage(str(out))
        assert raw.GetSize() == (6, 5, 4)
        assert raw.GetSpacing() == (1.0, 2.0, 3.0)
        back = read_image(out)
        assert back.spacing == (3.0, 2.0, 1.0)
        np.testing.assert_array_equal(back.array, arr)

    def test_bool_is_written_as_uint8(self, tmp_path):
        mask = np.zeros((3, 4, 5), dtype=bool)
        mask[1, 2, 3] = True
        back = read_image(write_image(mask, OBLIQUE, tmp_path / "mask.nii.gz"))
        assert back.array.dtype == np.uint8
        assert back.array.sum() == 1
        assert back.array[1, 2, 3] == 1


class TestAtomicWrite:
    def test_parent_created_and_nothing_partial_left(self, tmp_path):
        img = read_image(SAMPLE_LABEL)
        dest = tmp_path / "a" / "b" / "seg.nii.gz"
        assert write_image(img.array, img.geometry, dest) == dest
        assert [p.name for p in dest.parent.iterdir()] == ["seg.nii.gz"]

    @staticmethod
    def _failing_write(img, path, *args, **kwargs):
        Path(path).write_bytes(b"half an image")  # a writer that dies halfway
        raise RuntimeError("disk full")

    def test_failed_write_leaves_no_file(self, tmp_path, monkeypatch):
        img = read_image(SAMPLE_LABEL)
        monkeypatch.setattr(sitk, "WriteImage", self._failing_write)
        dest = tmp_path / "seg.nii.gz"
        with pytest.raises(RuntimeError, match="disk full"):
            write_image(img.array, img.geometry, dest)
        assert not dest.exists()
        assert list(tmp_path.iterdir()) == []

    def test_failed_write_keeps_the_previous_file(self, tmp_path, monkeypatch):
        img = read_image(SAMPLE_LABEL)
        dest = write_image(img.array, img.geometry, tmp_path / "seg.nii.gz")
        before = dest.read_bytes()
        monkeypatch.setattr(sitk, "WriteImage", self._failing_write)
        with pytest.raises(RuntimeError, match="disk full"):
            write_image(np.zeros_like(img.array), img.geometry, dest)
        assert dest.read_bytes() == before
        assert [p.name for p in tmp_path.iterdir()] == ["seg.nii.gz"]


class TestGzipCheck:
    def test_intact_file_passes(self):
        assert check_gzip_stream(SAMPLE_IMAGE) is None

    @pytest.mark.parametrize("keep", [0.5, 0.99], ids=["half", "all-but-1%"])
    def test_truncated_copy_is_refused(self, tmp_path, keep):
        data = SAMPLE_IMAGE.read_bytes()
        cut = tmp_path / "cut.nii.gz"
        cut.write_bytes(data[: int(len(data) * keep)])
        with pytest.raises(ImageReadError, match=rf"^{re.escape(str(cut))}: .*truncated"):
            check_gzip_stream(cut)
        with pytest.raises(ImageReadError, match=rf"^{re.escape(str(cut))}: .*truncated"):
            read_image(cut)

    def test_corrupt_copy_is_refused(self, tmp_path):
        data = bytearray(SAMPLE_IMAGE.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(64)  # zero 64 bytes of the deflate stream
        bad = tmp_path / "bad.nii.gz"
        bad.write_bytes(bytes(data))
        with pytest.raises(ImageReadError, match=rf"^{re.escape(str(bad))}: .*corrupt"):
            check_gzip_stream(bad)


class TestReadErrors:
    def test_missing_file(self, tmp_path):
        path = tmp_path / "nope.nii.gz"
        with pytest.raises(ImageReadError, match=rf"^{re.escape(str(path))}: file not found"):
            read_image(path)

    def test_garbage_nrrd(self, tmp_path):
        path = tmp_path / "garbage.nrrd"
        path.write_bytes(b"this is not an image\n" * 10)
        with pytest.raises(ImageReadError, match=rf"^{re.escape(str(path))}: cannot be read as an image"):
            read_image(path)

    def test_garbage_gz(self, tmp_path):
        path = tmp_path / "garbage.nii.gz"
        path.write_bytes(b"this is not gzip" * 10)
        with pytest.raises(ImageReadError, match=rf"^{re.escape(str(path))}: .*corrupt"):
            read_image(path)

    def test_vector_image_is_refused(self, tmp_path):
        path = tmp_path / "vector.mha"
        vec = sitk.GetImageFromArray(np.zeros((3, 4, 5, 2), dtype=np.float32), isVector=True)
        sitk.WriteImage(vec, str(path))
        with pytest.raises(
            ImageReadError,
            match=rf"^{re.escape(str(path))}: has 2 components "
            r"per voxel; store each channel as its own file",
        ):
            read_image(path)


LABELS = {"background": 0, "Anterior": 1, "Posterior": 2}


@pytest.fixture(scope="module")
def nnunet_copy(tmp_path_factory) -> Path:
    """The MSD sample's 32 training cases in nnU-Net v2 raw layout."""
    root = tmp_path_factory.mktemp("layouts") / "hippocampus_nnunet"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for img in sorted((SAMPLE_DIR / "imagesTr").glob("*.nii.gz")):
        cid = img.name[: -len(".nii.gz")]
        shutil.copy(img, root / "imagesTr" / f"{cid}_0000.nii.gz")
        shutil.copy(SAMPLE_DIR / "labelsTr" / img.name, root / "labelsTr" / img.name)
    meta = {"channel_names": {"0": "MRI"}, "labels": LABELS, "numTraining": 32, "file_ending": ".nii.gz"}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


class TestLoadDataset:
    def test_msd_sample(self):
        ds = load_dataset(SAMPLE_DIR)
        assert (ds.layout, ds.name, ds.file_ending) == ("msd", "hippocampus_sample", ".nii.gz")
        assert ds.channel_names == ("MRI",)
        assert ds.labels == LABELS
        assert list(ds.labels) == ["background", "Anterior", "Posterior"]  # by value
        assert ds.label_values == (0, 1, 2)
        assert len(ds.cases) == 32
        listed = json.loads((SAMPLE_DIR / "dataset.json").read_text())["training"]
        assert [c.case_id for c in ds.cases] == sorted(Path(e["image"]).name[:-7] for e in listed)
        for case in ds.cases:
            assert case.images == ((SAMPLE_DIR / "imagesTr" / f"{case.case_id}.nii.gz").resolve(),)
            assert case.label == (SAMPLE_DIR / "labelsTr" / f"{case.case_id}.nii.gz").resolve()

    def test_nnunet_copy_reads_the_same(self, nnunet_copy):
        msd, nn = load_dataset(SAMPLE_DIR), load_dataset(nnunet_copy)
        assert nn.layout == "nnunet"
        assert nn.name == "hippocampus_nnunet"
        assert [c.case_id for c in nn.cases] == [c.case_id for c in msd.cases]
        assert (nn.channel_names, nn.labels) == (msd.channel_names, msd.labels)
        case = nn.cases[0]
        assert case.images == (nnunet_copy / "imagesTr" / f"{case.case_id}_0000.nii.gz",)

    def test_both_layouts_give_the_same_fingerprint(self, nnunet_copy):
        msd = extract_fingerprint(load_dataset(SAMPLE_DIR), workers=1)
        nn = extract_fingerprint(load_dataset(nnunet_copy), workers=1)
        assert nn.cases == msd.cases
        assert nn.foreground_intensity == msd.foreground_intensity
        assert nn.dataset_name != msd.dataset_name


@pytest.fixture
def restore_logging():
    """``autoseg.cli.main`` reconfigures the root logger; put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    for h in root.handlers:
        if h not in handlers:
            h.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def _plan(*args: str) -> int:
    return main(["plan", *args, "--workers", "1", "--gpu-memory", "8", "-q"])


@pytest.mark.usefixtures("restore_logging")
class TestWorkspaceAndCli:
    def test_resolve_a_path(self, tmp_path):
        ws = Workspace(tmp_path / "work")
        assert ws.resolve(str(SAMPLE_DIR)) == ("hippocampus_sample", SAMPLE_DIR)

    def test_resolve_an_unknown_name(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        ws = Workspace(tmp_path / "work")
        with pytest.raises(
            DatasetError,
            match=r"^hippocampus_sample: neither a dataset folder nor "
            r"a dataset planned in .*work; run `autoseg plan",
        ):
            ws.resolve("hippocampus_sample")

    def test_resolve_a_folder_without_dataset_json(self, tmp_path):
        (tmp_path / "empty").mkdir()
        with pytest.raises(DatasetError, match=r"empty: no dataset\.json in this folder"):
            Workspace(tmp_path / "work").resolve(str(tmp_path / "empty"))

    def test_plan_writes_the_work_folder_and_the_name_resolves(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        work = tmp_path / "work"
        assert _plan(str(SAMPLE_DIR), "--work-dir", str(work)) == 0
        out = work / "hippocampus_sample"
        assert sorted(p.name for p in out.iterdir()) == ["fingerprint.json", "plans.json", "source.json"]
        # 8 GB, as the golden plan
        plans = json.loads((out / "plans.json").read_text())
        assert plans == json.loads((GOLDEN / "plans.json").read_text())
        assert Plan.load(out / "plans.json").dataset_name == "hippocampus_sample"
        assert json.loads((out / "fingerprint.json").read_text()) == json.loads(
            (GOLDEN / "fingerprint.json").read_text()
        )
        # now the plain name works, from anywhere
        name, folder = Workspace(work).resolve("hippocampus_sample")
        assert name == "hippocampus_sample"
        assert folder == SAMPLE_DIR.resolve()
        (out / "plans.json").unlink()
        assert _plan("hippocampus_sample", "--work-dir", str(work)) == 0
        assert (out / "plans.json").is_file()

    def test_autoseg_work_is_honoured(self, tmp_path, monkeypatch):
        monkeypatch.setenv("AUTOSEG_WORK", str(tmp_path / "env_work"))
        monkeypatch.chdir(tmp_path)
        assert _plan(str(SAMPLE_DIR)) == 0
        assert (tmp_path / "env_work" / "hippocampus_sample" / "plans.json").is_file()
        assert (tmp_path / "env_work" / "hippocampus_sample" / "fingerprint.json").is_file()
        assert not (tmp_path / "autoseg_work").exists()

    def test_work_dir_beats_autoseg_work(self, tmp_path, monkeypatch):
        monkeypatch.setenv("AUTOSEG_WORK", str(tmp_path / "env_work"))
        monkeypatch.chdir(tmp_path)
        assert _plan(str(SAMPLE_DIR), "--work-dir", str(tmp_path / "flag_work")) == 0
        assert (tmp_path / "flag_work" / "hippocampus_sample" / "plans.json").is_file()
        assert not (tmp_path / "env_work").exists()

    def test_autoseg_work_fallback(self, tmp_path, monkeypatch):
        monkeypatch.delenv("AUTOSEG_WORK", raising=False)
        monkeypatch.chdir(tmp_path)
        assert _plan(str(SAMPLE_DIR)) == 0
        assert (tmp_path / "autoseg_work" / "hippocampus_sample" / "plans.json").is_file()

    def test_unknown_dataset_exits_2_and_writes_nothing(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        assert _plan("no_such_dataset", "--work-dir", str(tmp_path / "work")) == 2
        assert not (tmp_path / "work").exists()
